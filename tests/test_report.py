"""The HTML report at full size: three ViT-S-sized runs (vanilla, 4 registers, gated; 81 probe epochs of
64 images, 12 blocks, 6 heads, 197/201 tokens, as training stores them) give one file of at most 20 MB.

The runs are made up (`vitartifacts.views.fabricate_run`), so the test needs no training; the size of
a report depends on the runs' shapes, not on their numbers. To keep the test quick it runs two of the
three outlier detectors: the bimodal one costs tens of milliseconds per layer and epoch (minutes for
three ViT-S runs) and adds exactly as many numbers as the mean + 3 sigma one, which the test counts in.
"""
import base64, json, re
from pathlib import Path

import numpy as np
import pytest

from vitartifacts.views import fabricate_run, RunView
from vitartifacts.report import write_report, report_epochs

LIMIT = 20_000_000   # bytes: "at most about 20 MB for three ViT-S runs with default settings"


@pytest.fixture(scope='module')
def vits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('vits')
    return [fabricate_run(root / v, v) for v in ('vanilla', 'register', 'gated')]


def payload(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(blob.replace('<\\/', '</'))


def test_three_vits_runs_fit_in_20_mb(vits_runs, tmp_path):
    out = write_report(vits_runs, tmp_path / 'report.html', detectors=('sigma', 'cutoff'))
    page = out.read_text()
    data = payload(page)
    # what the third detector would add: the same arrays as mean + 3 sigma's, per run
    third = sum(len(json.dumps(r['thresholds']['sigma'])) + len(json.dumps(r['ratios']['sigma'])) + 64 for r in data['runs'])
    size = out.stat().st_size
    print(f'report of three ViT-S runs: {size / 1e6:.2f} MB (+{third / 1e6:.3f} MB with the bimodal detector)')
    assert size + third <= LIMIT, f'{(size + third) / 1e6:.1f} MB'
    # it holds what the defaults promise: 41 of 81 epochs, 2 images, float32 maps of every layer
    reg = data['runs'][1]
    assert (len(reg['epochs']), len(reg['epochs_all']), reg['image_ids']) == (41, 81, [0, 1])
    shape = lambda a: a['shape']
    assert shape(reg['arrays']['norms']) == [41, 13, 2, 196]
    assert shape(reg['arrays']['registers']) == [41, 12, 2, 4, 196]
    assert shape(reg['arrays']['cls']) == [41, 12, 2, 196] and shape(reg['arrays']['heads']) == [41, 6, 2, 196]
    # float32 values, equal to what the explorer shows
    rv = RunView(vits_runs[1], detectors=('sigma', 'cutoff'))
    cls = np.frombuffer(base64.b64decode(reg['arrays']['cls']['b64']), '<f4').reshape(41, 12, 2, 196)
    ei = report_epochs(rv.epochs, 41)[20]
    np.testing.assert_array_equal(cls[20, 11, 1], rv.cls_map(ei, 11, 1).ravel())
    assert not list(tmp_path.glob('.report.html*'))           # written atomically: no temporary file left
