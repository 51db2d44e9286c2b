"""The HTML report at full size: three ViT-S-sized runs (vanilla, 4 registers, gated; 81 probe epochs of
64 images, 12 blocks, 6 heads, 197/201 tokens, as training stores them) give one file of at most 20 MB.

The runs are made up (`vitartifacts.testing.fabricate_run`), so the test needs no training; the size of
a report depends on the runs' shapes, not on their numbers. To keep the test quick it runs two of the
three outlier detectors: the bimodal one costs tens of milliseconds per layer and epoch (minutes for
three ViT-S runs) and adds exactly as many numbers as the mean + 3 sigma one, which the test counts in.
"""
import base64, json, re
from pathlib import Path

import numpy as np
import pytest

from vitartifacts.testing import fabricate_run
from vitartifacts.views import RunView
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


def no_cls_run(run_dir: Path, n_registers: int, weights: bool) -> Path:
    """A probe store of a ViT without CLS token (mean-pooled, like timm's `*_gap_*` models), as `vitartifacts probe`
    writes it: with registers, timm's `vit_wee_patch16_reg1_gap_256` at 64 px (its weights kept, so the weight views
    run); without, a two-block timm ViT with no prefix token at all."""
    import timm, torch
    from vitartifacts.probe import probe
    from vitartifacts.store import ProbeStore
    torch.manual_seed(0)
    if n_registers:
        name = 'vit_wee_patch16_reg1_gap_256'
        model = timm.create_model(name, pretrained=False, img_size=64, num_classes=4).eval()
        info = dict(timm_name=name, img_size=64, num_classes=4)
    else:
        from timm.models.vision_transformer import VisionTransformer
        model = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=4,
                                  class_token=False, global_pool='avg').eval()
        info = dict(img_size=64, num_classes=4)
    x = torch.randn(4, 3, 64, 64)
    store = ProbeStore(run_dir)
    for epoch in (0, 1):
        store.append(epoch, probe(model, x), images=x, weights=model if weights else None, model_info=info)
    return run_dir


@pytest.mark.parametrize('n_registers', [0, 1])
def test_a_model_without_cls_token(tmp_path, n_registers):
    from vitartifacts.figures import ExploreFigures, weight_views
    run_dir = no_cls_run(tmp_path / 'no-cls', n_registers, weights=bool(n_registers))
    run = RunView(run_dir, detectors=('sigma',))
    assert run.layout.cls_index is None and run.n_registers == n_registers
    views = ExploreFigures(run)
    views.update(epoch=0, layer=0, head=1, image=2)                 # every panel moves, none needs a CLS row
    assert not views['cls'].data and not views['heads'].data        # the CLS panels say there is none
    np.testing.assert_array_equal(run.cls_map(0, 0, 2), 0)
    if n_registers:
        np.testing.assert_array_equal(views['registers'].data[0].z[-4:, :4], run.register_maps(0, 0, 2, head=1)[0])
        wv = weight_views(run, images=[0, 1])
        assert wv.rollout is None and wv.pca.shape == (4, 2)
    out = write_report([run_dir], tmp_path / 'report.html', detectors=('sigma',))
    data = payload(out.read_text())['runs'][0]
    assert 'cls' not in data['arrays'] and 'heads' not in data['arrays']
    assert ('registers' in data['arrays']) == bool(n_registers)
    assert data['static'] == ['training'] + (['posemb', 'pca'] if n_registers else [])   # the layer x epoch view for every run
