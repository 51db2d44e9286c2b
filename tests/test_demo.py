"""`make demo` as a newcomer runs it, cut to one epoch per variant: the three runs, their executed notebooks and the report."""
import json
import subprocess
from pathlib import Path
import pytest

pytestmark = pytest.mark.serial   # `make test` runs these alone, after the tests that run two at a time

ROOT = Path(__file__).resolve().parents[1]


def test_make_demo_trains_every_variant_and_writes_the_report(tmp_path):
    runs = tmp_path / 'runs'
    done = subprocess.run(['make', '--no-print-directory', 'demo', f"DEMO_ARGS=--epochs 1 --runs_dir {runs}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in ('vanilla', 'register', 'gated'):
        run = runs / f'demo-{variant}'
        lines = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
        assert [l['epoch'] for l in lines] == [1], lines              # one epoch, numbered from 1
        assert 0 <= lines[0]['val_acc1'] <= 1
        assert (run / 'train.ipynb').exists() and (run / 'probes' / 'index.json').exists()
        assert f'training {variant} into {run} ...' in done.stdout      # the run folder first, where the user looks
        assert 'epoch 1/1: train_loss' in done.stdout.split(f'training {variant} into')[1]   # and each epoch as it ends
    report = runs / 'demo-report.html'
    assert report.stat().st_size > 1_000_000                          # plotly.js inline, the three runs' data
    assert 'demo-register' in report.read_text()
    assert str(report) in done.stdout
