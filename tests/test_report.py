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
from vitartifacts.report import write_report, report_epochs, image_bytes, _b64_len

LIMIT = 20_000_000   # bytes: "at most about 20 MB for three ViT-S runs with default settings"


@pytest.fixture(scope='module')
def vits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('vits')
    return [fabricate_run(root / v, v) for v in ('vanilla', 'register', 'gated')]


def payload(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(blob.replace('<\\/', '</'))


def test_three_vits_runs_fit_in_20_mb(vits_runs, tmp_path):
    "The page keeps as many shared probe images as fit in 20 MB, and no more; the maps are what the explorer shows."
    # what the third detector would add: the same arrays as mean + 3 sigma's (41 kept epochs, 81 for the ratios, 13 layers), per run
    third = 3 * (_b64_len(41 * 13 * 4) + _b64_len(81 * 13 * 4) + 64)
    out = write_report(vits_runs, tmp_path / 'report.html', detectors=('sigma', 'cutoff'), max_mb=(LIMIT - third) / 1e6)
    page = out.read_text()
    data = payload(page)
    size = out.stat().st_size
    k = len(data['images'])
    print(f'report of three ViT-S runs: {size / 1e6:.2f} MB (+{third / 1e6:.3f} MB with the bimodal detector), {k} of 64 images')
    assert size + third <= LIMIT, f'{(size + third) / 1e6:.1f} MB'
    per_image = sum(image_bytes(RunView(r, detectors=('sigma',)), report_epochs(list(range(81)), 41)) for r in vits_runs)
    assert 2 <= k < 64 and size + third + per_image + len(data['images'][0]) > LIMIT, (k, size)   # one more would not fit
    # it holds what the defaults promise: 41 of 81 epochs, float32 norms of every layer, every head's CLS and register maps
    reg = data['runs'][1]
    assert (len(reg['epochs']), len(reg['epochs_all'])) == (41, 81)
    assert reg['arrays']['norms']['shape'] == [41, 13, k, 196]
    assert reg['arrays']['cls']['shape'] == [41, 12, k, 6, 196]                    # the CLS token's, per block and head
    assert reg['arrays']['registers']['shape'] == [41, 12, k, 4, 196]              # the registers', mean of heads
    # equal to what the explorer shows (norms exactly; attention to a byte per value)
    rv = RunView(vits_runs[1], detectors=('sigma', 'cutoff'))
    ei = report_epochs(rv.epochs, 41)[20]
    norms = np.frombuffer(base64.b64decode(reg['arrays']['norms']['b64']), '<f4').reshape(41, 13, k, 196)
    np.testing.assert_array_equal(norms[20, 7, 1], rv.norms[ei, 7, 1, 5:])
    q = reg['arrays']['cls']
    maps = (np.frombuffer(base64.b64decode(q['u8']), np.uint8).reshape(q['shape']) *
            np.frombuffer(base64.b64decode(q['scale']), '<f4').reshape(q['shape'][:-1])[..., None])
    cls = rv.cls_map(ei, 11, 1).ravel()
    np.testing.assert_allclose(maps[20, 11, 1].mean(0), cls, atol=cls.max() / 255)
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
    assert list(data['weight_figures']) == (['posemb', 'pca'] if n_registers else [])   # no CLS token: no rollout
    assert data['weight_epochs'] == ([0, 1] if n_registers else []) and 'training-0' in payload(out.read_text())['static_figures']
