"""The workspace itself: what a newcomer relies on before any notebook runs."""
import re, subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_setup_commands():
    text = (ROOT / 'README.md').read_text()
    first_block = re.search(r"```\w*\n(.*?)```", text, re.S).group(1)
    commands = [line.split('#')[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ['make demo', 'make test']
    assert text.index('```') < text.index('\n## '), "the set-up commands must come before any section"


def test_nbdev3_config_and_no_legacy_files():
    assert not (ROOT / 'settings.ini').exists() and not (ROOT / 'setup.py').exists()
    cfg = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    nbdev = cfg['tool']['nbdev']
    assert nbdev['lib_path'] == 'vitartifacts' and nbdev['nbs_path'] == 'nbs'
    assert {'slow', 'cuda'} <= set(nbdev['tst_flags'].split())
    assert 'anywidget' in ' '.join(cfg['project']['dependencies'])


def test_every_library_notebook_exports_a_committed_module():
    for nb in sorted((ROOT / 'nbs').glob('[0-9]*.ipynb')):
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", nb.read_text())
        assert m, f"{nb.name} has no default_exp"
        assert (ROOT / 'vitartifacts' / (m.group(1).replace('.', '/') + '.py')).exists(), nb.name


def test_public_imports_in_a_fresh_interpreter():
    code = "from vitartifacts.models import create_model; from vitartifacts.probe import probe; print('ok')"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd='/')
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr
