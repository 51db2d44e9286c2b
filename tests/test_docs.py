"""`make docs`: each library notebook a page that shows its figures without the reader running anything.

Running every notebook takes minutes on two cores, and `make test` has just run them all (nbtest), so
this builds, in a scratch copy of the project, a site of only the two pages it checks: the analysis
notebook and the one that draws the views' figures, found by their `#| default_exp` line, not by
their file names. With quarto installed it runs `make docs` there and reads the HTML; without quarto
it runs the same steps up to quarto (the notebooks run and saved, then nbdev's docs processing) and
reads what the pages are made from.
"""
import json, os, re, shutil, subprocess, tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.serial   # `make test` runs these alone, after the tests that run two at a time

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / '.venv' / 'bin'
QUARTO = shutil.which('quarto', path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
PLOTLY_JS = 'window.Plotly = Plotly'      # the last line of plotly.js, which plotly embeds with a notebook's first figure
FIGURE = 'class="plotly-graph-div"'
TABLE = 'class="dataframe"'


def _cells(nb): return json.loads(Path(nb).read_text())['cells']


def notebook_exporting(*modules):
    "The library notebook whose `#| default_exp` is the first of `modules` that one exports"
    found = {}
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        for cell in _cells(nb):
            m = re.search(r'^#\|\s*default_exp\s+([\w.]+)', ''.join(cell['source']), re.M)
            if m: found.setdefault(m.group(1), nb); break
    mod = next((m for m in modules if m in found), None)
    assert mod, f"no notebook in nbs/ has `#| default_exp` {' or '.join(modules)}"
    return found[mod]


def _run(cmd, cwd):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A copy of the project holding only the docs scaffolding, its site built from the two checked notebooks"
    proj = tmp_path_factory.mktemp('docs')
    shutil.copy2(ROOT / 'Makefile', proj)
    # the copy's own package folder, so that the notebooks' closing `nbdev_export()` writes nothing that
    # would shadow the installed vitartifacts for the processes run from the copy
    cfg = (ROOT / 'pyproject.toml').read_text()
    (proj / 'pyproject.toml').write_text(re.sub(r'(?m)^lib_path\s*=.*$', 'lib_path = "_exported"', cfg))
    (proj / 'nbs').mkdir()
    for f in (ROOT / 'nbs').iterdir():
        if f.is_file() and f.suffix != '.ipynb': shutil.copy2(f, proj / 'nbs')
    (proj / '.venv').symlink_to(ROOT / '.venv')
    pages = {'analysis': notebook_exporting('analysis'), 'figures': notebook_exporting('figures', 'views')}
    if QUARTO:
        # -o: the venv is the project's own and already installed; the copy must not install into it
        _run(['make', '-o', '.venv/.installed', 'docs', 'DOCS_NBS=' + ' '.join(map(str, pages.values()))], proj)
    else:   # the steps of `make docs` before quarto
        staged = proj / '_executed'
        staged.mkdir()
        for f in [*pages.values(), *(proj / 'nbs').iterdir()]: shutil.copy2(f, staged)
        _run([BIN / 'nbdev-test', staged, '--save', '--n-workers', '2'], proj)
        _run([BIN / 'python', '-c', 'from nbdev.serve import proc_nbs; proc_nbs("_executed")'], proj)
    return proj, {k: nb.stem for k, nb in pages.items()}


def _outputs_html(nb):
    "The HTML of every output of `nb`, one string per output"
    return [''.join(o['data']['text/html']) for c in _cells(nb) for o in c.get('outputs', [])
            if 'text/html' in o.get('data', {})]


def _flags(cell): return set(re.findall(r'^#\|\s*(\w+)\s*$', ''.join(cell['source']), re.M))


def test_flagged_cells_stay_unrun(site):
    proj, pages = site
    skip = set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['nbdev']['tst_flags'].split())
    for stem in pages.values():
        cells = [c for c in _cells(proj / '_executed' / f'{stem}.ipynb') if c['cell_type'] == 'code']
        assert any(c['execution_count'] for c in cells), f"{stem} did not run"
        for c in cells:
            if _flags(c) & skip: assert not c['execution_count'] and not c['outputs'], (stem, c['source'])


def test_processed_pages_hold_their_figures(site):
    "What quarto is given: the figures, plotly.js itself in a shown output, and the analysis tables"
    proj, pages = site
    for name, stem in pages.items():
        html = _outputs_html(proj / '_proc' / f'{stem}.ipynb')
        assert sum(h.count(FIGURE) for h in html) >= 2, f"the {name} page ({stem}) holds fewer than 2 plotly figures"
        assert any(PLOTLY_JS in h for h in html), f"the {name} page ({stem}) does not embed plotly.js"
    assert any(TABLE in h for h in _outputs_html(proj / '_proc' / f"{pages['analysis']}.ipynb")), "no table on the analysis page"


@pytest.mark.skipif(not QUARTO, reason="quarto is not installed (in .venv/bin or on PATH): the HTML is not built")
def test_pages_show_their_figures(site):
    proj, pages = site
    docs = proj / '_docs'
    assert (docs / 'index.html').exists()
    for name, stem in pages.items():
        page = (docs / f'{stem}.html').read_text()
        n_figures = sum(h.count(FIGURE) for h in _outputs_html(proj / '_proc' / f'{stem}.ipynb'))
        assert page.count(FIGURE) == n_figures >= 2, (name, page.count(FIGURE), n_figures)
        assert PLOTLY_JS in page, f"the {name} page does not carry plotly.js"
        assert not re.search(r'<script[^>]+src="[^"]*plotly[^"]*"', page), f"the {name} page loads plotly.js from elsewhere"
        assert f'{stem}.html' in (docs / 'index.html').read_text(), f"the sidebar does not list the {name} page"
    assert TABLE in (docs / f"{pages['analysis']}.html").read_text()
