(function () {
"use strict";
const D = JSON.parse(document.getElementById('report-data').textContent);
const TEMPLATE = D.template;

function bytes(b64) { const s = atob(b64), u = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return u; }
function strided(shape) { const st = new Array(shape.length); let n = 1; for (let i = shape.length - 1; i >= 0; i--) { st[i] = n; n *= shape[i]; } return st; }
function f32(o) {                      // {shape, b64} -> {d: Float32Array, shape, at(...idx) -> subarray}
  const d = new Float32Array(bytes(o.b64).buffer), shape = o.shape, st = strided(shape);
  return {d, shape, at(...idx) {
    let off = 0; for (let i = 0; i < idx.length; i++) off += idx[i] * st[i];
    return d.subarray(off, off + (idx.length ? st[idx.length - 1] : d.length));
  }};
}
function q8(o) {                       // {shape, u8, scale}: maps as bytes, each map (the last axis) with its own scale
  const q = bytes(o.u8), scale = new Float32Array(bytes(o.scale).buffer), shape = o.shape, st = strided(shape), n = shape[shape.length - 1];
  return {shape, at(...idx) {          // the maps under `idx`, decoded: Float32Array
    let off = 0; for (let i = 0; i < idx.length; i++) off += idx[i] * st[i];
    const len = idx.length ? st[idx.length - 1] : q.length, out = new Float32Array(len);
    for (let j = 0; j < len; j++) out[j] = q[off + j] * scale[(off + j) / n | 0];
    return out;
  }};
}
function sinkScale(arr) {              // figures.sink_scale: the largest share over the epochs kept (at least 0.001)
  if (arr.top === undefined) { let t = 1e-3; for (const v of arr.d) if (v > t) t = v; arr.top = t; }
  return arr.top;
}
function median(a) { const s = Float32Array.from(a).sort(), m = s.length >> 1; return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]); }
function range(maps) { let lo = Infinity, hi = -Infinity; for (const m of maps) for (const v of m) if (v === v) { if (v < lo) lo = v; if (v > hi) hi = v; } return [lo, hi]; }
function fmt(x) { return Number.isFinite(x) ? Number(x).toPrecision(3) : 'none'; }
function meanOf(list) { const out = new Float32Array(list[0].length); for (const a of list) for (let i = 0; i < a.length; i++) out[i] += a[i] / list.length; return out; }
const LUTS = Object.fromEntries(Object.entries(D.luts).map(([k, v]) => [k, bytes(v)]));

// ---- maps on a canvas: one ImageData per map, scaled up without smoothing; far cheaper to redraw than a heatmap trace ----
function mapPanel(id, {n, cols, h, w, cell, labels, lut, bar}) {
  const root = document.getElementById(id), rows = Math.ceil(n / cols), lab = 15, gap = 6;
  root.classList.add('map-panel');
  root.innerHTML = '<div class="map-title"></div><div class="map-body"><canvas class="map"></canvas>' +
    '<div class="map-bar"><span class="hi"></span><canvas width="10" height="100"></canvas><span class="lo"></span><span class="unit"></span></div></div>' +
    '<div class="map-readout">&nbsp;</div>';
  const cv = root.querySelector('canvas.map'), ctx = cv.getContext('2d'), tw = w * cell, th = h * cell;
  cv.width = cols * tw + (cols - 1) * gap; cv.height = rows * (th + lab);
  const small = document.createElement('canvas'); small.width = w; small.height = h;
  const sctx = small.getContext('2d'), img = sctx.createImageData(w, h), L = LUTS[lut];
  const barCv = root.querySelector('.map-bar canvas'), bctx = barCv.getContext('2d');
  barCv.height = Math.min(th, 140);
  for (let y = 0; y < barCv.height; y++) { const i = Math.round(255 * (1 - y / (barCv.height - 1))) * 3;
    bctx.fillStyle = `rgb(${L[i]},${L[i + 1]},${L[i + 2]})`; bctx.fillRect(0, y, 10, 1); }
  root.querySelector('.unit').textContent = bar || '';
  const at = t => [(t % cols) * (tw + gap), Math.floor(t / cols) * (th + lab) + lab];
  let shown = [], lo = 0, hi = 1;
  cv.addEventListener('mousemove', ev => {
    const r = cv.getBoundingClientRect(), x = (ev.clientX - r.left) * cv.width / r.width, y = (ev.clientY - r.top) * cv.height / r.height;
    for (let t = 0; t < n; t++) {
      const [x0, y0] = at(t), i = Math.floor((y - y0) / cell), j = Math.floor((x - x0) / cell);
      if (i >= 0 && i < h && j >= 0 && j < w && shown[t]) {
        root.querySelector('.map-readout').textContent = `${labels[t]}, patch row ${i}, col ${j}: ${fmt(shown[t][i * w + j])}`; return;
      }
    }
  });
  return {root, title(text) { root.querySelector('.map-title').textContent = text; },
    draw(maps, opt = {}) {             // maps: Float32Array [h*w] per tile (null: opt.image there); opt: zmin, zmax, outline, image
      [lo, hi] = opt.zmin !== undefined ? [opt.zmin, opt.zmax] : range(maps.filter(m => m));
      if (!(hi > lo)) hi = lo + 1e-6;
      ctx.clearRect(0, 0, cv.width, cv.height); ctx.imageSmoothingEnabled = false;
      ctx.font = '11px sans-serif'; ctx.fillStyle = '#333'; ctx.textBaseline = 'bottom';
      let sum = 0;
      maps.forEach((m, t) => {
        const [x0, y0] = at(t);
        ctx.fillText(labels[t], x0, y0 - 2);
        if (!m) { if (opt.image && opt.image.complete) { ctx.imageSmoothingEnabled = true; ctx.drawImage(opt.image, x0, y0, tw, th); ctx.imageSmoothingEnabled = false; } return; }
        const px = img.data;
        for (let i = 0; i < m.length; i++) {
          const v = m[i], o = 4 * i;
          if (v !== v) { px[o] = px[o + 1] = px[o + 2] = 235; px[o + 3] = 255; continue; }   // NaN: the token is absent here
          const k = Math.max(0, Math.min(255, Math.round(255 * (v - lo) / (hi - lo)))) * 3;
          px[o] = L[k]; px[o + 1] = L[k + 1]; px[o + 2] = L[k + 2]; px[o + 3] = 255; sum += v;
        }
        sctx.putImageData(img, 0, 0); ctx.drawImage(small, x0, y0, tw, th);
      });
      ctx.lineWidth = 2; ctx.strokeStyle = '#ff2020';           // the outliers outlined, on every tile (image and map align)
      for (const t of (opt.frame || [])) { const [x0, y0] = at(t); ctx.strokeRect(x0 + 1, y0 + 1, tw - 2, th - 2); }   // a chosen tile
      for (const [t, idx] of (opt.outline || [])) { const [x0, y0] = at(t); for (const i of idx) ctx.strokeRect(x0 + (i % w) * cell + 1, y0 + Math.floor(i / w) * cell + 1, cell - 2, cell - 2); }
      root.querySelector('.hi').textContent = fmt(hi); root.querySelector('.lo').textContent = fmt(lo);
      shown = maps;
      root.dataset.drawn = `${sum.toPrecision(8)} ${lo.toPrecision(6)} ${hi.toPrecision(6)} ${(opt.outline || []).map(o => o[1].length).join(',')}`;
      root.dataset.range = `${lo} ${hi}`;
    }};
}

// ---- the runs' outlier-ratio curves at the top: a canvas line chart (a plotly redraw costs 30-40 ms here, this 1-2) ----
const COLORS = ['#636efa', '#EF553B', '#00cc96', '#ab63fa', '#FFA15A', '#19d3f3', '#FF6692', '#B6E880', '#FF97FF', '#FECB52'];
function lineChart(id, names) {
  const root = document.getElementById(id), W = 760, H = 300, m = {l: 56, r: 10, t: 30, b: 40};
  root.classList.add('map-panel', 'line-chart');
  root.innerHTML = '<canvas></canvas><div class="legend"></div>';
  const cv = root.querySelector('canvas'), ctx = cv.getContext('2d'), dpr = window.devicePixelRatio || 1;
  cv.width = W * dpr; cv.height = H * dpr; cv.style.width = W + 'px'; cv.style.height = H + 'px'; ctx.scale(dpr, dpr);
  root.querySelector('.legend').innerHTML = names.map((n, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${n}</span>`).join('');
  const ticks = (lo, hi, n) => { const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1))), f = [1, 2, 5, 10].find(f => (hi - lo) / (f * step) <= n) * step;
    const out = []; for (let v = Math.ceil(lo / f) * f; v <= hi + 1e-12; v += f) out.push(+v.toPrecision(12)); return out; };
  return {draw(title, xs, ys, top, mark) {
    const x0 = Math.min(...xs.map(x => x[0])), x1 = Math.max(...xs.map(x => x[x.length - 1]), x0 + 1);
    const X = v => m.l + (v - x0) / (x1 - x0) * (W - m.l - m.r), Y = v => H - m.b - v / top * (H - m.t - m.b);
    ctx.clearRect(0, 0, W, H); ctx.fillStyle = '#e5ecf6'; ctx.fillRect(m.l, m.t, W - m.l - m.r, H - m.t - m.b);
    ctx.font = '11px sans-serif'; ctx.strokeStyle = '#fff'; ctx.fillStyle = '#444'; ctx.lineWidth = 1;
    ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    for (const v of ticks(x0, x1, 8).filter(Number.isInteger)) { ctx.beginPath(); ctx.moveTo(X(v), m.t); ctx.lineTo(X(v), H - m.b); ctx.stroke(); ctx.fillText(v, X(v), H - m.b + 4); }
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (const v of ticks(0, top, 5)) { ctx.beginPath(); ctx.moveTo(m.l, Y(v)); ctx.lineTo(W - m.r, Y(v)); ctx.stroke(); ctx.fillText(v, m.l - 4, Y(v)); }
    ctx.textAlign = 'center'; ctx.textBaseline = 'bottom'; ctx.fillText('epoch', (m.l + W - m.r) / 2, H - 2);
    ctx.save(); ctx.translate(12, (m.t + H - m.b) / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = 'top'; ctx.fillText('outlier ratio', 0, 0); ctx.restore();
    ctx.textAlign = 'left'; ctx.font = '14px sans-serif'; ctx.fillStyle = '#2a3f5f'; ctx.fillText(title, m.l, m.t - 8);
    ys.forEach((y, i) => {
      ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length]; ctx.lineWidth = 2; ctx.beginPath();
      y.forEach((v, j) => { const px = X(xs[i][j]), py = Y(v); j ? ctx.lineTo(px, py) : ctx.moveTo(px, py); }); ctx.stroke();
      y.forEach((v, j) => { ctx.beginPath(); ctx.arc(X(xs[i][j]), Y(v), 2.5, 0, 2 * Math.PI); ctx.fill(); });
    });
    ctx.strokeStyle = '#111'; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(X(mark), m.t); ctx.lineTo(X(mark), H - m.b); ctx.stroke();
    root.dataset.drawn = `${title} ${ys.map(y => y.reduce((a, b) => a + b, 0).toPrecision(6)).join(',')} ${mark}`;
  }};
}

// ---- plotly figures (line charts): a figure out of sight only gets its new data; it is drawn when it scrolls into view ----
const onScreen = new WeakMap(), stale = new Set();
const watcher = new IntersectionObserver(entries => entries.forEach(en => {
  onScreen.set(en.target, en.isIntersecting);
  if (en.isIntersecting && stale.delete(en.target)) Plotly.react(en.target, en.target.data, en.target.layout).then(() => mark(en.target));
}), {rootMargin: '0px'});   // a chart just below the fold is drawn as it scrolls in (one react, ~15 ms)
function set(el, traces, layout, key) {   // change trace and layout properties in place, then one Plotly.react if in sight
  if (key !== undefined && el.key === key) return;   // what it shows has not changed (an image or head move, say)
  el.key = key;
  for (const [i, props] of Object.entries(traces)) Object.assign(el.data[+i], props);
  for (const [path, v] of Object.entries(layout || {})) {
    const keys = path.split('.'); let o = el.layout;
    for (const key of keys.slice(0, -1)) o = (o[key] = o[key] || {});
    o[keys[keys.length - 1]] = v;
  }
  el.layout.datarevision = (el.layout.datarevision || 0) + 1;
  if (onScreen.get(el) === false || el.offsetParent === null) { stale.add(el); return; }   // out of sight, or hidden
  stale.delete(el);
  Plotly.react(el, el.data, el.layout).then(() => mark(el));
}
// The epoch marker of a line chart is a thin line laid over it, not a trace: an epoch move then redraws no chart.
function mark(el, epoch) {
  if (epoch !== undefined) el.dataset.mark = String(epoch);
  const L = el._fullLayout, e = Number(el.dataset.mark);
  if (!L || el.dataset.mark === undefined) return;
  el.style.position = 'relative';
  Object.keys(L).filter(k => /^xaxis\d*$/.test(k)).forEach((k, i) => {
    const ax = L[k], ay = L[ax.anchor === 'free' ? 'yaxis' : 'y' + ax.anchor.slice(1) + 'axis'] || L['yaxis'];
    let line = el.querySelector(`.epoch-mark[data-axis="${k}"]`);
    if (!line) { line = document.createElement('div'); line.className = 'epoch-mark'; line.dataset.axis = k; el.appendChild(line); }
    const x = ax._offset + ax.l2p(e), inside = e >= Math.min(...ax.range) && e <= Math.max(...ax.range);
    Object.assign(line.style, {left: `${x}px`, top: `${ay._offset}px`, height: `${ay._length}px`, display: inside ? '' : 'none'});
  });
}
function replace(el, fig) {            // a whole other figure (a weight view of another epoch)
  fig.layout.template = TEMPLATE; el.data = fig.data; el.layout = fig.layout;
  if (onScreen.get(el) === false || el.offsetParent === null) { stale.add(el); return; }
  stale.delete(el); Plotly.react(el, el.data, el.layout);
}
function plot(id, fig, marked) {          // marked: the chart's epoch-marker traces are left empty (see `mark`)
  const el = document.getElementById(id);
  fig.layout.template = TEMPLATE;
  if (marked) fig.data.forEach((t, i) => { if (marked(t, i, fig.data.length)) { t.x = []; t.y = []; } });
  Plotly.newPlot(el, fig.data, fig.layout, {displaylogo: false, responsive: false});
  watcher.observe(el);
  return el;
}

// ---- decode every run's arrays once ----
const images = D.images.map(src => { const im = new Image(); im.src = src; im.onload = schedule; return im; });
const runs = D.runs.map(r => {
  const a = {};
  for (const [k, v] of Object.entries(r.arrays)) a[k] = v.u8 ? q8(v) : f32(v);
  for (const grp of ['thresholds', 'ratios', 'sinks']) { a[grp] = {}; for (const [k, v] of Object.entries(r[grp])) a[grp][k] = f32(v); }
  return Object.assign({}, r, {a});
});
const allEpochs = D.epochs;             // the union of the runs' report epochs: the slider's stops

const ui = {epoch: document.getElementById('epoch'), layer: document.getElementById('layer'), image: document.getElementById('image'),
            head: document.getElementById('head'), sink: document.getElementById('sink'), detector: document.getElementById('detector'),
            run: document.getElementById('run'), same: document.getElementById('same')};
function state() {
  return {epoch: allEpochs[+ui.epoch.value], layer: +ui.layer.value, image: +ui.image.value, head: ui.head.value === 'mean' ? null : +ui.head.value,
          sink: ui.sink.value, detector: ui.detector.value, run: +ui.run.value, same: ui.same.checked};
}
function epochIndex(epochs, epoch) { let i = 0; while (i + 1 < epochs.length && epochs[i + 1] <= epoch) i++; return i; }
function layerName(r, l) { return l >= r.depth ? 'final norm' : 'block ' + l; }

// ---- the panels ----
const panels = runs.map((r, ri) => {
  const [h, w] = r.grid, cell = Math.max(4, Math.round(150 / Math.max(h, w))), p = {};
  p.overlay = mapPanel(`overlay-${ri}`, {n: 2, cols: 2, h, w, cell, labels: ['image', 'patch-token norm'], lut: 'norm', bar: 'norm'});
  if (r.has_cls) p.cls = mapPanel(`cls-${ri}`, {n: 1, cols: 1, h, w, cell, labels: ['CLS'], lut: 'attn', bar: 'attn'});
  if (r.n_registers) p.registers = mapPanel(`registers-${ri}`, {n: r.n_registers, cols: Math.min(r.n_registers, 4), h, w,
    cell: Math.max(3, Math.round(cell * 0.6)), labels: [...Array(r.n_registers).keys()].map(i => 'reg' + i), lut: 'attn', bar: 'attn'});
  const small = Math.max(3, Math.round(90 / Math.max(h, w)));
  p.layers = mapPanel(`layers-${ri}`, {n: r.depth + 1, cols: Math.min(r.depth + 1, 7), h, w, cell: small,
    labels: [...Array(r.depth + 1).keys()].map(l => layerName(r, l)), lut: 'norm', bar: 'norm / median'});
  if (r.has_cls) p.heads = mapPanel(`heads-${ri}`, {n: r.n_heads, cols: Math.min(r.n_heads, 6), h, w, cell: small,
    labels: [...Array(r.n_heads).keys()].map(i => 'head ' + i), lut: 'attn', bar: 'attn'});
  p.sinks = mapPanel(`sinks-${ri}`, {n: 1, cols: 1, h: r.depth, w: r.n_heads, cell: Math.max(8, Math.round(160 / Math.max(r.depth, r.n_heads))),
    labels: [''], lut: 'sink', bar: 'share'});
  const marker = {ratio: (t, i, n) => i === n - 1, curves: t => t.name === 'epoch', hist: () => false};
  for (const [name, fig] of Object.entries(r.figures)) p[name] = plot(`${name}-${ri}`, fig, marker[name]);
  p.weights = {};                      // weight views: one figure per epoch with weights, the one at or before the slider shown
  for (const [name, figs] of Object.entries(r.weight_figures)) { p.weights[name] = plot(`${name}-${ri}`, figs[figs.length - 1]); p.weights[name].shown = figs.length - 1; }
  return p;
});
const ratioAll = lineChart('ratio-all', runs.map(r => `${r.name} (${r.variant})`));
for (const [id, fig] of Object.entries(D.static_figures)) plot(id, fig);

function headLabel(hd) { return hd === null ? 'mean of heads' : 'head ' + hd; }
function clsMap(r, ei, al, k, hd) {     // the CLS token's attention to the patches: one head, or the mean of heads
  if (hd !== null && hd < r.n_heads) return r.a.cls.at(ei, al, k, hd);
  const maps = []; for (let i = 0; i < r.n_heads; i++) maps.push(r.a.cls.at(ei, al, k, i));
  return meanOf(maps);
}

function topMaps(s) {                  // the maps of the runs side by side, before drawing (one colour scale needs them all)
  return runs.map(r => {
    const ei = epochIndex(r.epochs, s.epoch), l = Math.min(s.layer, r.depth), al = Math.min(l, r.depth - 1), k = s.image;
    const det = r.a.thresholds[s.detector] ? s.detector : Object.keys(r.a.thresholds)[0];
    const nm = r.a.norms.at(ei, l, k), thr = r.a.thresholds[det].at(ei)[l], out = [];
    nm.forEach((v, i) => { if (v > thr) out.push(i); });
    const cls = r.has_cls ? clsMap(r, ei, al, k, s.head) : null;
    const regs = []; for (let i = 0; i < r.n_registers; i++) regs.push(r.a.registers.at(ei, al, k, i));   // mean of heads
    return {ei, l, al, k, det, nm, out, cls, regs};
  });
}

function updateRun(ri, s, m, scales, details) {
  const r = runs[ri], p = panels[ri], a = r.a, e = r.epochs[m.ei];
  p.overlay.title(`image ${m.k}: norms, ep ${e}, ${layerName(r, m.l)} (${m.out.length} ${m.det} outliers outlined)`);
  p.overlay.draw([null, m.nm], Object.assign({image: images[m.k], outline: [[0, m.out], [1, m.out]]}, scales.norm || {}));
  if (p.cls) { p.cls.title(`CLS attention, block ${m.al}, ${headLabel(s.head)}`); p.cls.draw([m.cls], scales.attn || {}); }
  if (p.registers) { p.registers.title(`register attention, block ${m.al}, mean of heads`); p.registers.draw(m.regs, scales.attn || {}); }
  if (!details) return;
  const l = m.l, al = m.al, k = m.k;
  // histogram with each detector's threshold
  const counts = Array.from(a.hist.at(m.ei, l)), edges = Array.from(a.bin_edges.at(l));
  const y = counts.concat([counts[counts.length - 1]]).map(c => c > 0 ? c : 0.5), top = Math.max(1, ...counts) * 1.5;
  const ht = {0: {x: edges, y: y}};
  r.detectors.forEach((d, i) => {
    const t = a.thresholds[d].at(m.ei)[l], ok = Number.isFinite(t);
    const off = ok && !(edges[0] <= t && t <= edges[edges.length - 1]);   // outside the axis: the legend says so
    ht[i + 1] = {x: ok ? [t, t] : [], y: ok ? [0.7, top] : [], name: ok ? `${d} ${fmt(t)}${off ? ' (off scale)' : ''}` : `${d}: none`};
  });
  set(p.hist, ht, {'yaxis.range': [Math.log10(0.7), Math.log10(top)], 'xaxis.range': [Math.log10(edges[0]), Math.log10(edges[edges.length - 1])],
                   'title.text': `patch-token norms, epoch ${e}, ${layerName(r, l)}`}, `${m.ei} ${l}`);
  // outlier ratio over all probe epochs at this layer, the epoch marked
  let rtop = 0.01; const ry = r.detectors.map(d => { const v = []; for (let i = 0; i < r.epochs_all.length; i++) v.push(a.ratios[d].at(i)[l]); rtop = Math.max(rtop, 1.1 * Math.max(...v)); return v; });
  const rt = {}; ry.forEach((v, i) => { rt[i] = {y: v}; });
  set(p.ratio, rt, {'yaxis.range': [0, rtop], 'title.text': `outlier ratio, ${layerName(r, l)}`}, String(l));
  mark(p.ratio, e);
  // sink share per block and head, the chosen block (and head) outlined
  const sk = a.sinks[s.sink] ? s.sink : r.default_sink, hd = s.head !== null && s.head < r.n_heads ? s.head : null;
  p.sinks.title(`attention share of ${sk}, epoch ${e} (rows: blocks 0-${r.depth - 1}, columns: heads 0-${r.n_heads - 1})`);
  p.sinks.draw([a.sinks[sk].at(m.ei)], {zmin: 0, zmax: sinkScale(a.sinks[sk]),
    outline: [[0, hd === null ? [...Array(r.n_heads).keys()].map(i => al * r.n_heads + i) : [al * r.n_heads + hd]]]});
  // training curves: move the epoch markers
  if (p.curves) mark(p.curves, e);
  // every layer's norms over the median
  const rel = []; for (let li = 0; li <= r.depth; li++) { const v = a.norms.at(m.ei, li, k), md = median(v) || 1; rel.push(v.map(x => x / md)); }
  p.layers.title(`norm / median norm of image ${k} at every layer, epoch ${e}`); p.layers.draw(rel);
  // every head's CLS attention at the chosen block
  if (p.heads) {
    const hm = []; for (let i = 0; i < r.n_heads; i++) hm.push(a.cls.at(m.ei, al, k, i));
    p.heads.title(`CLS attention of every head, block ${al}, epoch ${e}`);
    p.heads.draw(hm, {frame: hd === null ? [] : [hd]});
  }
  // weight views: the latest epoch with weights at or before the slider's
  for (const [name, el] of Object.entries(p.weights)) {
    const wi = epochIndex(r.weight_epochs, s.epoch);
    if (el.shown !== wi) { el.shown = wi; replace(el, JSON.parse(JSON.stringify(r.weight_figures[name][wi]))); }
  }
}

function updateCompare(s) {
  let top = 0.01; const ys = [];
  runs.forEach(r => {
    const l = Math.min(s.layer, r.depth), d = r.a.ratios[s.detector] ? s.detector : r.detectors[0], v = [];
    for (let i = 0; i < r.epochs_all.length; i++) v.push(r.a.ratios[d].at(i)[l]);
    ys.push(v); top = Math.max(top, 1.1 * Math.max(...v));
  });
  ratioAll.draw(`${s.detector} outlier ratio at layer ${s.layer}, every run`, runs.map(r => r.epochs_all), ys, top, s.epoch);
}

let pending = false;
function update() {
  const s = state(), maps = topMaps(s), scales = {};
  document.getElementById('epoch-value').textContent = s.epoch;
  document.getElementById('layer-value').textContent = s.layer;
  if (s.same) {                        // one colour scale for the runs side by side: magnitudes compare across variants
    const [nlo, nhi] = range(maps.map(m => m.nm)), [, ahi] = range(maps.flatMap(m => (m.cls ? [m.cls] : []).concat(m.regs)));
    scales.norm = {zmin: nlo, zmax: nhi};
    if (ahi > 0) scales.attn = {zmin: 0, zmax: ahi};
  }
  document.querySelectorAll('.run-details').forEach(el => { el.style.display = (+el.dataset.run === s.run) ? '' : 'none'; });
  runs.forEach((r, ri) => updateRun(ri, s, maps[ri], scales, ri === s.run));
  updateCompare(s);
  document.body.dataset.updates = String(1 + (+document.body.dataset.updates || 0));
}
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; update(); }); } }
Object.values(ui).forEach(el => el.addEventListener('input', schedule));
Object.values(ui).forEach(el => el.addEventListener('change', schedule));
// play: the epoch slider steps through its stops, every view following (what the notebook's GIF shows, for every view)
let timer = null;
const play = document.getElementById('play');
play.addEventListener('click', () => {
  if (timer) { clearInterval(timer); timer = null; play.textContent = '\u25B6 play'; return; }
  play.textContent = '\u25A0 stop';
  if (+ui.epoch.value >= +ui.epoch.max) ui.epoch.value = '0';
  timer = setInterval(() => {
    if (+ui.epoch.value >= +ui.epoch.max) { clearInterval(timer); timer = null; play.textContent = '\u25B6 play'; return; }
    ui.epoch.value = String(+ui.epoch.value + 1); schedule();
  }, 250);
});
update();
window.vitartifactsReport = {update, state, runs};
})();
