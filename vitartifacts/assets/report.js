(function () {
"use strict";
const D = JSON.parse(document.getElementById('report-data').textContent);
const TEMPLATE = D.template;

function f32(o) {                      // {shape, b64} -> {d: Float32Array, shape, at(...idx) -> subarray}
  const s = atob(o.b64), u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
  const d = new Float32Array(u.buffer), shape = o.shape, strides = new Array(shape.length);
  let n = 1;
  for (let i = shape.length - 1; i >= 0; i--) { strides[i] = n; n *= shape[i]; }
  return {d, shape, at(...idx) {
    let off = 0;
    for (let i = 0; i < idx.length; i++) off += idx[i] * strides[i];
    return d.subarray(off, off + (idx.length ? strides[idx.length - 1] : d.length));
  }};
}
function sinkScale(arr) {              // figures.sink_scale: the largest share over the epochs kept (at least 0.001)
  if (arr.top === undefined) { let t = 1e-3; for (const v of arr.d) if (v > t) t = v; arr.top = t; }
  return arr.top;
}
function grid2d(flat, h, w) { const z = []; for (let i = 0; i < h; i++) z.push(Array.from(flat.subarray(i * w, (i + 1) * w))); return z; }
function tile(maps, h, w, cols) {      // as the notebook's `tile`: blank column between maps, blank rows above each
  const g = Math.max(1, Math.round(h / 5)), rows = Math.ceil(maps.length / cols), H = rows * (h + g), W = cols * (w + 1) - 1, z = [];
  for (let i = 0; i < H; i++) z.push(new Array(W).fill(null));
  maps.forEach((m, n) => {
    const r = Math.floor(n / cols), c = n % cols;
    for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) z[r * (h + g) + g + i][c * (w + 1) + j] = m[i * w + j];
  });
  return z;
}
function median(a) { const s = Array.from(a).sort((x, y) => x - y), m = s.length >> 1; return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]); }
function mean(list) { const out = new Float32Array(list[0].length); for (const a of list) for (let i = 0; i < a.length; i++) out[i] += a[i] / list.length; return out; }
function fmt(x) { return Number.isFinite(x) ? Number(x).toPrecision(3) : 'none'; }
// Drawing is the expensive part of a move (tens of ms per figure), so a figure out of sight only gets its new data;
// it is drawn when it scrolls into view (or is shown), once, with whatever the controls say by then.
const onScreen = new WeakMap(), stale = new Set();
const watcher = new IntersectionObserver(entries => entries.forEach(en => {
  onScreen.set(en.target, en.isIntersecting);
  if (en.isIntersecting && stale.delete(en.target)) Plotly.react(en.target, en.target.data, en.target.layout);
}), {rootMargin: '400px 0px'});
function set(el, traces, layout) {     // change trace and layout properties in place, then one Plotly.react if in sight
  for (const [i, props] of Object.entries(traces)) Object.assign(el.data[+i], props);
  for (const [path, v] of Object.entries(layout || {})) {
    const keys = path.split('.'); let o = el.layout;
    for (const key of keys.slice(0, -1)) o = (o[key] = o[key] || {});
    o[keys[keys.length - 1]] = v;
  }
  el.layout.datarevision = (el.layout.datarevision || 0) + 1;
  if (onScreen.get(el) === false) { stale.add(el); return Promise.resolve(el); }
  stale.delete(el);
  return Plotly.react(el, el.data, el.layout);
}
function plot(id, fig) {
  const el = document.getElementById(id);
  fig.layout.template = TEMPLATE;
  Plotly.newPlot(el, fig.data, fig.layout, {displaylogo: false, responsive: false});
  watcher.observe(el);
  return el;
}

// ---- decode every run's arrays once ----
const runs = D.runs.map(r => {
  const a = {};
  for (const [k, v] of Object.entries(r.arrays)) a[k] = f32(v);
  for (const grp of ['thresholds', 'ratios', 'sinks']) { a[grp] = {}; for (const [k, v] of Object.entries(r[grp])) a[grp][k] = f32(v); }
  return Object.assign({}, r, {a});
});
const allEpochs = D.epochs;             // the union of the runs' report epochs: the slider's stops

const ui = {epoch: document.getElementById('epoch'), layer: document.getElementById('layer'), image: document.getElementById('image'),
            sink: document.getElementById('sink'), detector: document.getElementById('detector'), run: document.getElementById('run')};
function state() {
  return {epoch: allEpochs[+ui.epoch.value], layer: +ui.layer.value, image: +ui.image.value, sink: ui.sink.value,
          detector: ui.detector.value, run: +ui.run.value};
}
function epochIndex(r, epoch) { let i = 0; while (i + 1 < r.epochs.length && r.epochs[i + 1] <= epoch) i++; return i; }
function layerName(r, l) { return l >= r.depth ? 'final norm' : 'block ' + l; }

// ---- the panels: same figures as the notebook's ExploreFigures, moved by restyle ----
const panels = runs.map((r, ri) => {
  const p = {};
  for (const [name, fig] of Object.entries(r.figures)) p[name] = plot(`${name}-${ri}`, fig);
  return p;
});
const ratioAll = plot('ratio-all', D.ratio_all);
for (const [id, fig] of Object.entries(D.static_figures)) plot(id, fig);

function updateRun(ri, s, details) {
  const r = runs[ri], p = panels[ri], a = r.a, [h, w] = r.grid, ps = r.patch_size;
  const ei = epochIndex(r, s.epoch), l = Math.min(s.layer, r.depth), al = Math.min(l, r.depth - 1), k = s.image;
  const e = r.epochs[ei], det = a.thresholds[s.detector] ? s.detector : Object.keys(a.thresholds)[0];
  // image with its norm map and the detector's outliers
  const nm = a.norms.at(ei, l, k), thr = a.thresholds[det].at(ei)[l];
  const ox = [], oy = [];
  nm.forEach((v, i) => { if (v > thr) { ox.push((i % w + 0.5) * ps); oy.push((Math.floor(i / w) + 0.5) * ps); } });
  set(p.overlay, {0: {source: r.images[k]}, 1: {z: grid2d(nm, h, w)}, 2: {x: ox, y: oy}},
      {'title.text': `image ${r.image_ids[k]}: norms, ep ${e}, ${layerName(r, l)} (${ox.length} ${det} outliers)`});
  if (a.cls) set(p.cls, {0: {z: grid2d(a.cls.at(ei, al, k), h, w)}}, {'title.text': `CLS attention, block ${al}, mean of heads`});
  if (r.n_registers) {
    const maps = []; for (let i = 0; i < r.n_registers; i++) maps.push(a.registers.at(ei, al, k, i));
    set(p.registers, {0: {z: tile(maps, h, w, Math.min(r.n_registers, 4))}}, {'title.text': `register attention, block ${al}, mean of heads`});
  }
  if (!details) return;
  // histogram with each detector's threshold
  const counts = Array.from(a.hist.at(ei, l)), edges = Array.from(a.bin_edges.at(l));
  const y = counts.concat([counts[counts.length - 1]]).map(c => c > 0 ? c : 0.5), top = Math.max(1, ...counts) * 1.5;
  const ht = {0: {x: edges, y: y}};
  r.detectors.forEach((d, i) => {
    const t = a.thresholds[d].at(ei)[l], ok = Number.isFinite(t);
    const off = ok && !(edges[0] <= t && t <= edges[edges.length - 1]);   // outside the axis: the legend says so
    ht[i + 1] = {x: ok ? [t, t] : [], y: ok ? [0.7, top] : [], name: ok ? `${d} ${fmt(t)}${off ? ' (off scale)' : ''}` : `${d}: none`};
  });
  set(p.hist, ht, {'yaxis.range': [Math.log10(0.7), Math.log10(top)], 'xaxis.range': [Math.log10(edges[0]), Math.log10(edges[edges.length - 1])],
                   'title.text': `patch-token norms, epoch ${e}, ${layerName(r, l)}`});
  // outlier ratio over all probe epochs at this layer, the epoch marked
  let rtop = 0.01; const ry = r.detectors.map(d => { const v = []; for (let i = 0; i < r.epochs_all.length; i++) v.push(a.ratios[d].at(i)[l]); rtop = Math.max(rtop, 1.1 * Math.max(...v)); return v; });
  const rt = {}; ry.forEach((v, i) => { rt[i] = {y: v}; }); rt[ry.length] = {x: [e, e], y: [0, rtop]};
  set(p.ratio, rt, {'yaxis.range': [0, rtop], 'title.text': `outlier ratio, ${layerName(r, l)}`});
  // sink share per block and head
  const sk = a.sinks[s.sink] ? s.sink : r.default_sink, sz = [];
  for (let b = 0; b < r.depth; b++) sz.push(Array.from(a.sinks[sk].at(ei, b)));
  const heads = [...Array(r.n_heads).keys()];
  set(p.sinks, {0: {z: sz, zmin: 0, zmax: sinkScale(a.sinks[sk])}, 1: {x: heads, y: heads.map(() => al)}},
      {'title.text': `attention share of ${sk}, epoch ${e}`});
  // training curves: move the epoch markers
  const ct = {}; p.curves.data.forEach((tr, i) => { if (tr.name === 'epoch') ct[i] = {x: [e, e]}; });
  set(p.curves, ct);
  // every layer's norms over the median, every head of the last block
  const rel = []; for (let li = 0; li <= r.depth; li++) { const v = a.norms.at(ei, li, k), m = median(v) || 1; rel.push(Array.from(v, x => x / m)); }
  set(p.layers, {0: {z: tile(rel, h, w, Math.min(r.depth + 1, 7))}}, {'title.text': `norm / median norm of image ${r.image_ids[k]} at every layer, epoch ${e}`});
  if (!a.heads) return;                 // a model without CLS token
  const hm = []; for (let hd = 0; hd < r.n_heads; hd++) hm.push(a.heads.at(ei, hd, k));
  set(p.heads, {0: {z: tile(hm, h, w, Math.min(r.n_heads, 6))}}, {'title.text': `CLS attention of every head, block ${r.depth - 1}, epoch ${e}`});
}

function updateCompare(s) {
  let top = 0.01; const ys = [];
  runs.forEach(r => {
    const l = Math.min(s.layer, r.depth), d = r.a.ratios[s.detector] ? s.detector : r.detectors[0], v = [];
    for (let i = 0; i < r.epochs_all.length; i++) v.push(r.a.ratios[d].at(i)[l]);
    ys.push(v); top = Math.max(top, 1.1 * Math.max(...v));
  });
  const t = {}; ys.forEach((v, i) => { t[i] = {y: v}; }); t[ys.length] = {x: [s.epoch, s.epoch], y: [0, top]};
  set(ratioAll, t, {'yaxis.range': [0, top], 'title.text': `${s.detector} outlier ratio at layer ${s.layer}, every run`});
}

let pending = false;
function update() {
  const s = state();
  document.getElementById('epoch-value').textContent = s.epoch;
  document.getElementById('layer-value').textContent = s.layer;
  runs.forEach((r, ri) => updateRun(ri, s, ri === s.run));
  updateCompare(s);
  document.querySelectorAll('.run-details').forEach(el => { el.style.display = (+el.dataset.run === s.run) ? '' : 'none'; });
  document.body.dataset.updates = String(1 + (+document.body.dataset.updates || 0));
}
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; update(); }); } }
Object.values(ui).forEach(el => el.addEventListener('input', schedule));
Object.values(ui).forEach(el => el.addEventListener('change', schedule));
update();
window.vitartifactsReport = {update, state, runs};
})();
