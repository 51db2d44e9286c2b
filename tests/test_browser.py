"""The report and the explorer in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

- report.html: the page loads without script errors, moving the epoch slider changes the sink-share
  heat map (and the other panels), a figure below the fold is drawn when scrolled to, a screenshot is kept.
- JupyterLab (its default settings, both cores kept busy): a server on 127.0.0.1 (free port, no token, own folders)
  opens copies of nbs/workflows/explore.ipynb and then compare.ipynb in the same page, runs all cells of each, every
  figure is drawn with data (no "Error displaying widget", no "Failed to load model class"), moving a slider changes
  the figures, screenshots are kept, and the server is shut down.
- a page that takes 3 s to load plotly.js: a figure changed right after it is made still shows the change.

Screenshots go to the pytest temporary folder (printed; `pytest --basetemp DIR` keeps them in DIR).
The tests skip only when chromium is missing outside CI; in CI (CI=true) they must run.
"""
import contextlib, json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.serial   # `make test` runs these alone, after the tests that run two at a time

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run']
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')

if not Path(CHROMIUM).exists():
    if IN_CI: raise RuntimeError(f"chromium is not installed ({CHROMIUM}); CI must run the browser tests: apt-get install chromium.")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser tests run in CI.", allow_module_level=True)


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def watch(page) -> list[str]:
    "Collect the page's script errors."
    errors = []
    page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
    page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
    return errors


# ---- the report ---------------------------------------------------------------------------------
READ = """() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].filter(el => el.id)
                   .map(el => [el.id, JSON.stringify(el.data.map(t => [t.z, t.x, t.y, t.source]))])
                   .concat([...document.querySelectorAll('.map-panel')].map(el => [el.id, el.dataset.drawn])))"""


def test_report_slider_moves_the_views(browser, tmp_path):
    "Every control moves what it should: epoch, layer, head, one colour scale; plotly charts off screen wait to be drawn."
    from vitartifacts.testing import fabricate_run
    from vitartifacts.report import report_command
    shape = dict(n_epochs=21, depth=6, n_heads=3, n_images=8, grid=(8, 8), patch_size=8, num_classes=4)
    runs = [fabricate_run(tmp_path / v, v, n_registers=2, **shape) for v in ('vanilla', 'register', 'gated')]
    out = report_command([str(r) for r in runs], str(tmp_path / 'report.html'))
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    errors = watch(page)
    page.goto(out.as_uri())
    page.wait_for_function('Number(document.body.dataset.updates) >= 1', timeout=60_000)
    read = lambda: page.evaluate(READ)
    def moved(action):
        n = int(page.evaluate('document.body.dataset.updates'))
        action()
        page.wait_for_function(f'Number(document.body.dataset.updates) > {n}', timeout=30_000)
        return read()
    before = read()
    assert {'sinks-0', 'overlay-0', 'cls-1', 'registers-1', 'ratio-all', 'hist-0', 'heads-0', 'layers-0'} <= set(before)
    hidden = {f'{m}-{i}' for m in ('sinks', 'heads', 'layers') for i in (1, 2)}       # details of the runs not chosen
    assert {k for k in before if not before[k]} == hidden, before                  # every map in sight drawn at load
    assert 'registers-0' not in before and page.locator('#image option').count() == 8   # every shared image kept
    page.focus('#epoch')
    after = moved(lambda: page.keyboard.press('Home'))                  # the slider to the first epoch, as a user would
    assert page.eval_on_selector('#epoch', 'el => el.value') == '0'
    for panel in ('sinks-0', 'overlay-0', 'overlay-1', 'cls-2', 'hist-0', 'layers-0', 'heads-0', 'ratio-all'):
        assert after[panel] != before[panel], f'{panel} did not follow the epoch slider'
    assert page.locator('#epoch-value').inner_text() == '0'
    # a chart far below the fold got its data but is drawn only when it scrolls into view
    drawn = "id => { const el = document.getElementById(id); return JSON.stringify(el._fullData[0].y) === JSON.stringify(el.data[0].y); }"
    assert not page.evaluate(drawn, 'hist-0'), 'an off-screen chart was redrawn on every move'
    page.locator('#hist-0').scroll_into_view_if_needed()
    page.wait_for_function(f"({drawn})('hist-0')", timeout=10_000)
    page.evaluate('window.scrollTo(0, 0)')
    # a head: the CLS maps show it; the norm maps and the register maps (mean of heads in the page) stay
    head = moved(lambda: page.select_option('#head', '1'))
    assert head['cls-1'] != after['cls-1'] and head['overlay-1'] == after['overlay-1'] and head['registers-1'] == after['registers-1']
    assert page.locator('#cls-1 .map-title').inner_text().endswith('head 1')
    # one colour scale: the runs side by side share the norm range
    ranges = lambda: [page.get_attribute(f'#overlay-{i}', 'data-range') for i in range(3)]
    assert len(set(ranges())) > 1                                                # each run its own scale ...
    moved(lambda: page.check('#same'))
    assert len(set(ranges())) == 1, ranges()                                     # ... or one for all
    # the register run's details: the register maps and the per-head grid move with the layer slider
    chosen = moved(lambda: page.select_option('#run', '1'))
    page.focus('#layer')
    layer = moved(lambda: page.keyboard.press('Home'))
    assert page.locator('#layer-value').inner_text() == '0'
    assert layer['registers-1'] != chosen['registers-1'], 'the register maps did not follow the layer slider'
    assert layer['heads-1'] != chosen['heads-1'], 'the per-head grid did not follow the layer slider'
    assert 'block 0' in page.locator('#heads-1 .map-title').inner_text()
    assert page.locator('.run-details[data-run="1"]').is_visible() and not page.locator('.run-details[data-run="0"]').is_visible()
    shot = tmp_path / 'report.png'
    page.screenshot(path=str(shot), full_page=True)
    print(f'report screenshot: {shot}')
    assert errors == [], errors
    page.close()


def test_report_of_a_model_without_cls_token(browser, tmp_path):
    """A ViT without CLS token, with one register and its weights kept: no CLS maps, the rest moves, and the weight
    views follow the epoch slider to the epoch of the weights at or before it."""
    from test_report import no_cls_run
    from vitartifacts.report import write_report
    out = write_report([no_cls_run(tmp_path / 'no-cls', 1, weights=True)], tmp_path / 'report.html', detectors=('sigma',))
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    errors = watch(page)
    page.goto(out.as_uri())
    page.wait_for_function('Number(document.body.dataset.updates) >= 1', timeout=60_000)
    assert page.locator('#cls-0').count() == 0 and 'no CLS token' in page.locator('.row').first.inner_text()
    overlay = lambda: page.get_attribute('#overlay-0', 'data-drawn')
    title = lambda: page.evaluate("() => document.getElementById('posemb-0').layout.title.text")
    before, t1 = overlay(), title()
    assert t1.endswith('epoch 1')
    n = int(page.evaluate('document.body.dataset.updates'))
    page.select_option('#image', '1')          # (timm's init, LayerScale 1e-5, leaves the tokens alike at every layer)
    page.wait_for_function(f'Number(document.body.dataset.updates) > {n}', timeout=30_000)
    assert overlay() != before, 'the norm map did not follow the image'
    page.focus('#epoch'); page.keyboard.press('Home')
    page.wait_for_function("document.getElementById('posemb-0').layout.title.text.endsWith('epoch 0')", timeout=30_000)
    assert errors == [], errors
    page.close()


# ---- JupyterLab -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@contextlib.contextmanager
def lab_server(root, tmp_path, plugin_settings: dict):
    "A JupyterLab server on 127.0.0.1 serving `root`, as `.venv/bin/jupyter lab` starts it (its config in sys.prefix included)."
    home = tmp_path / 'jupyter'
    settings = home / 'settings'
    for plugin, values in plugin_settings.items():
        p = settings / f'{plugin}.jupyterlab-settings'
        p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(values))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / 'config'), JUPYTER_RUNTIME_DIR=str(home / 'runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / 'workspaces'),
               IPYTHONDIR=str(home / 'ipython'), PYTHONPATH=str(REPO))
    port = free_port()
    log = open(tmp_path / 'jupyterlab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1',
                             f'--ServerApp.port={port}', '--ServerApp.port_retries=0', "--IdentityProvider.token=",
                             "--ServerApp.password=", f'--ServerApp.root_dir={root}', '--LabApp.news_url=None',
                             '--ServerApp.open_browser=False'] + (['--allow-root'] if os.geteuid() == 0 else []), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f'{url}/api/status', timeout=2): break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f'JupyterLab did not start: {(tmp_path / "jupyterlab.log").read_text()[-2000:]}')
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)                     # the server shuts its kernels down with it
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()


NO_NEWS = {'@jupyterlab/apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False}}   # no network here


@pytest.fixture()
def jupyterlab(tmp_path):
    """A JupyterLab server with its default settings (notebook windowing on; only the news check, which needs the
    network, is off) serving a folder with copies of explore.ipynb and compare.ipynb; shut down afterwards."""
    root = tmp_path / 'lab'
    root.mkdir()
    for nb in ('explore.ipynb', 'compare.ipynb'):
        shutil.copy(REPO / 'nbs' / 'workflows' / nb, root / nb)   # the repo's copies stay clean
    with lab_server(root, tmp_path, NO_NEWS) as url:
        yield url


@pytest.fixture()
def busy_cpu():
    "Both cores spinning in the background while the test runs, as on a machine that is training something."
    spin = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(os.cpu_count() or 2)]
    yield
    for p in spin: p.kill(); p.wait()


def test_saving_a_workflow_notebook_keeps_the_repo_clean(browser, tmp_path):
    "JupyterLab with its default settings on the repo's own nbs/workflows/: run cells, save, and git finds nothing changed."
    status = lambda: subprocess.run(['git', 'status', '--porcelain', '--', 'nbs'], cwd=REPO, capture_output=True, text=True).stdout
    before = status()
    with lab_server(REPO / 'nbs' / 'workflows', tmp_path, NO_NEWS) as url:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        page.goto(f'{url}/lab/tree/train.ipynb')
        page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=90_000)
        try: page.locator('.jp-Dialog .jp-mod-accept').click(timeout=15_000)
        except PlaywrightTimeout: pass
        page.wait_for_function("""() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
                                          return s && s.getAttribute('data-status') === 'idle'; }""", timeout=90_000)
        page.locator('.jp-CodeCell').first.click()
        for _ in range(2): page.keyboard.press('Shift+Enter')   # the parameters and the imports: execution counts, kernel metadata
        page.wait_for_function("""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                                          .filter(p => /\\[\\d+\\]/.test(p.textContent)).length >= 2""", timeout=120_000)
        page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.textContent.includes('model: vanilla'))",
                               timeout=60_000)                      # the settings the second cell prints
        page.keyboard.press('Control+s')
        page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
        saved = json.loads((REPO / 'nbs' / 'workflows' / 'train.ipynb').read_text())
        page.close()
    code = [c for c in saved['cells'] if c['cell_type'] == 'code']
    assert [(c['execution_count'], c['outputs']) for c in code[:2]] == [(None, [])] * 2, code[:2]
    assert status() == before, f'saving changed the repo:\n{status()}'


def run_all(page, url: str, name: str, tmp_path):
    "Open notebook `name` in the lab at `url` in `page`, run all its cells, and wait until every code cell has run."
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    page.goto(f'{url}/lab/tree/{name}')
    page.wait_for_selector('.jp-NotebookPanel .jp-Cell', timeout=120_000)
    try: page.locator('.jp-Dialog .jp-mod-accept').click(timeout=15_000)   # JupyterLab may ask which kernel: the default
    except PlaywrightTimeout: pass
    page.wait_for_function("""() => { const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
                                      return s && s.getAttribute('data-status') === 'idle'; }""", timeout=120_000)
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
    try:                                                     # every code cell has run: a number in its prompt, none busy
        page.wait_for_function("""() => { const ps = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')];
                                          return ps.length > 0 && ps.every(p => /\\[\\d+\\]/.test(p.textContent)); }""", timeout=300_000)
    except Exception:
        page.screenshot(path=str(tmp_path / f'{name}-failed.png'), full_page=True)
        prompts = page.eval_on_selector_all('.jp-CodeCell .jp-InputArea-prompt', 'ps => ps.map(p => p.textContent)')
        raise AssertionError(f'{name} did not finish; prompts {prompts}; screenshot {tmp_path / f"{name}-failed.png"}')


PLOTLY_MARK = b'Bundled license information'   # in plotly's widget module, sent with every widget unless shared


FIGURES = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot')].map(el => {
    const full = v => v != null && (typeof v === 'string' ? v.length > 0 : (Array.isArray(v) || ArrayBuffer.isView(v)) ? v.length > 0
                                    : typeof v === 'object' && Object.keys(v).length > 0);
    const traces = (el.data || []).filter(t => ['z', 'x', 'y', 'source'].some(k => full(t[k]))).length;
    const notes = ((el.layout || {}).annotations || []).filter(a => a.text).length;
    return {title: el.layout && el.layout.title ? el.layout.title.text : null, traces, notes,
            data: JSON.stringify((el.data || []).map(t => [t.z, t.x, t.y, t.source]))};
})"""


def every_figure(page) -> list[dict]:
    "Scroll every output into view (windowing draws only what is on screen, as for a reader), then read every figure."
    cells = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')
    for k in range(cells.count()):
        cells.nth(k).scroll_into_view_if_needed()
        page.wait_for_timeout(200)
    plots = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot')
    for k in range(plots.count()):
        plots.nth(k).scroll_into_view_if_needed()
        page.wait_for_timeout(200)
    return page.evaluate(FIGURES)


def test_explore_and_compare_in_a_busy_jupyterlab(browser, jupyterlab, busy_cpu, tmp_path):
    """explore.ipynb, then compare.ipynb in the same page (the explorer's widgets still live), each run with Run All in
    JupyterLab at its default settings while both cores are busy: every figure is drawn with data (or says why it has
    none), and moving a slider changes them."""
    from vitartifacts.testing import example_runs
    example_runs(['vanilla', 'register', 'gated'])           # the notebooks' runs (trained once and cached, or the demo's)
    page = browser.new_page(viewport={'width': 1500, 'height': 1100})
    errors = watch(page)
    received, plotly = {}, {}                                # per kernel connection: bytes the page got, messages with plotly.js
    def frame(url, payload):
        data = payload if isinstance(payload, bytes) else payload.encode()
        received[url] = received.get(url, 0) + len(data); plotly[url] = plotly.get(url, 0) + (PLOTLY_MARK in data)
    page.on('websocket', lambda ws: ws.on('framereceived', lambda payload: frame(ws.url, payload)))
    run_all(page, jupyterlab, 'explore.ipynb', tmp_path)
    page.wait_for_function("document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot').length >= 9", timeout=120_000)
    figs = every_figure(page)
    empty = [f['title'] for f in figs if not f['traces'] and not f['notes']]
    page.screenshot(path=str(tmp_path / 'explore.png'), full_page=True)
    assert len(figs) >= 9 and not empty, f'{len(empty)} of {len(figs)} figures drawn without data: {empty}; screenshot {tmp_path / "explore.png"}'
    titles = [f['title'] or '' for f in figs]
    assert any(t.startswith('image 0: norms') for t in titles) and any(t.startswith('CLS attention') for t in titles), titles
    text = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook').inner_text()
    for bad in ('Error displaying widget', 'Failed to load model class', 'Traceback', 'Error:'):
        assert bad not in text, f'{bad!r} in explore.ipynb:\n{text[-3000:]}'
    epoch = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-hslider', has=page.locator('label', has_text='epoch')).first
    epoch.scroll_into_view_if_needed()
    before = [f['data'] for f in page.evaluate(FIGURES)]
    epoch.locator('.noUi-handle').first.focus()
    page.keyboard.press('Home')                              # the epoch slider to the first probe epoch
    page.wait_for_function(f"""(before) => ({FIGURES})().filter((f, i) => f.data !== before[i]).length >= 5""", arg=before, timeout=60_000)
    print(f'explore screenshot: {tmp_path / "explore.png"}')

    run_all(page, jupyterlab, 'compare.ipynb', tmp_path)     # a second notebook, the explorer's widgets still in the page
    page.wait_for_function("document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot').length >= 10", timeout=120_000)
    figs = every_figure(page)
    empty = [f['title'] for f in figs if not f['traces'] and not f['notes']]
    page.screenshot(path=str(tmp_path / 'compare.png'), full_page=True)
    assert len(figs) >= 10 and not empty, f'{len(empty)} of {len(figs)} figures drawn without data: {empty}; screenshot {tmp_path / "compare.png"}'
    layer = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-hslider', has=page.locator('label', has_text='layer')).first
    layer.scroll_into_view_if_needed()
    before = [f['data'] for f in page.evaluate(FIGURES)]
    layer.locator('.noUi-handle').first.focus()
    page.keyboard.press('Home')                              # every run to block 0
    page.wait_for_function(f"""(before) => ({FIGURES})().filter((f, i) => f.data !== before[i]).length >= 3""", arg=before, timeout=60_000)
    print(f'compare screenshot: {tmp_path / "compare.png"}')
    bad = [e for e in errors if 'widget' in e.lower() or 'model class' in e.lower() or 'initialize' in e.lower()]
    assert not bad, bad
    print(f"the page received {sum(received.values()) / 1e6:.1f} MB from the kernels; plotly.js per connection: {list(plotly.values())}")
    # plotly.js once per kernel: with the widget that carries it, and again only if the page asks for every widget's state
    assert plotly and max(plotly.values()) <= 2, f"plotly.js was sent {plotly} times: per figure, not once per kernel"
    page.close()



SLOW_PLOTLY = """\
from vitartifacts import figures
slow = 'await new Promise((done) => setTimeout(done, 3000));\\n' + figures.PLOTLY_ESM.read_text(encoding='utf-8')
figures._BUNDLE = figures.PlotlyBundle(code=slow)   # plotly.js as a page that takes 3 s to load it gets it"""
SLOW_FIGURE = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{k}', 'metadata': {}, 'outputs': [], 'source': src}
                         for k, src in enumerate([
    SLOW_PLOTLY,
    'import plotly.graph_objects as go\nfig = figures.FigureWidget(go.Figure(go.Heatmap(z=[[1, 2]])))\nfig',
    'fig.data[0].z = [[3, 4]]          # sent while the page is still loading plotly.js',
    'fig.update_layout(title_text="moved");'])],
    'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}


def test_a_figure_gets_every_update_while_plotly_loads(browser, tmp_path):
    """A figure made and changed at once, on a page that takes 3 s to load plotly.js (a busy machine takes about 2 s):
    the figure shows the change, and the page logs no widget error. anywidget gives a widget 2 s to initialize and
    drops every later message to it if it takes longer."""
    root = tmp_path / 'lab'
    root.mkdir()
    (root / 'slow.ipynb').write_text(json.dumps(SLOW_FIGURE))
    with lab_server(root, tmp_path, NO_NEWS) as url:
        page = browser.new_page(viewport={'width': 1200, 'height': 900})
        errors = watch(page)
        run_all(page, url, 'slow.ipynb', tmp_path)
        page.wait_for_function("document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot').length >= 1", timeout=120_000)
        page.wait_for_timeout(3000)                          # what else would arrive has arrived
        shown = page.evaluate("""() => { const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .js-plotly-plot');
                                        return {z: el.data && el.data[0] ? el.data[0].z : null,
                                                title: el.layout && el.layout.title ? el.layout.title.text : null}; }""")
        page.screenshot(path=str(tmp_path / 'slow.png'))
        page.close()
    assert shown == {'z': [[3, 4]], 'title': 'moved'}, f'the figure missed updates sent while plotly.js loaded: {shown}; {errors}'
    assert not [e for e in errors if 'widget' in e.lower() or 'initialize' in e.lower()], errors
