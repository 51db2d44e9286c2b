"""A tiny training run writes a probe store that every analysis function reads; `probe_command` writes the same store."""
import json
import math

import numpy as np
import pytest
import torch

from vitartifacts import analysis as A
from vitartifacts import probing as P
from vitartifacts.config import Config
from vitartifacts.models import create_model
from vitartifacts.store import ProbeStore, epoch_nbytes, features_nbytes
from vitartifacts.train import train


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    "Tiny models train fastest on one thread, and the suite shares two cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A 3-epoch register run of the tiny model on the synthetic dataset, probed (with weights, and block 2's tokens) every epoch."
    torch.set_num_threads(1)
    cfg = Config(model='register', n_registers=2, size='tiny', img_size=64, patch_size=16, epochs=3, batch_size=64,
                 warmup_epochs=1, analysis_freq=1, probe_size=8, probe_weights=True, probe_features='2', num_workers=0, save_freq=0,
                 wandb_mode='disabled', dataset='synthetic',
                 runs_dir=str(tmp_path_factory.mktemp('runs')), run_name='tiny-register')
    return train(cfg)


def test_the_training_run_writes_a_whole_store(run_dir):
    store = ProbeStore(run_dir)
    assert store.epochs == [0, 1, 2, 3] and store.weight_epochs == [0, 1, 2, 3]
    lay = store.layout
    assert (lay.n_tokens, lay.n_prefix, lay.register_indices, lay.grid) == (19, 3, [1, 2], (4, 4))
    d = store.load(3)
    depth, H = store.meta['depth'], store.meta['n_heads']
    assert d['norms'].shape == (depth + 1, 8, 19) and d['attn_prefix'].shape == (depth, 8, H, 3, 19)
    assert d['attn_received'].shape == (depth, 8, H, 19)
    np.testing.assert_allclose(d['attn_prefix'].sum(-1), 1, atol=5e-3)     # rows of probabilities (fp16)
    assert store.images().shape == (8, 64, 64, 3) and store.images().dtype == np.uint8
    assert store.labels is not None and len(store.labels) == 8
    size = store.epoch_path(3).stat().st_size
    assert size <= epoch_nbytes(depth, 8, 19, H, 3) + features_nbytes(8, 19, 96) + 40_000
    assert [store.feature_layers(e) for e in store.epochs] == [[2]] * 4
    assert store.load(3, ['features_2'], raw=True)['features_2'].dtype == np.float16


def test_every_analysis_function_reads_the_store(run_dir):
    store, lay = ProbeStore(run_dir), ProbeStore(run_dir).layout
    d = store.load(store.epochs[-1])
    for det in A.DETECTORS:
        o = A.detect_outliers(d['norms'], lay, det)
        assert o.mask.shape == (d['norms'].shape[0], 8, 16) and o.ratio.shape == (d['norms'].shape[0],)
    ov = A.outliers_over_epochs(store)
    assert set(ov.epoch) == {0, 1, 2, 3} and {'outlier_ratio', 'norm_ratio', 'max_norm_ratio', 'separation'} <= set(ov.columns)
    assert A.first_separating_layer(A.detect_outliers(d['norms'], lay)) in (None, *range(len(d['norms'])))
    assert A.cls_maps(d['attn_prefix'], lay).shape[-2:] == (4, 4)
    assert A.register_maps(d['attn_prefix'], lay).shape[3:] == (2, 4, 4)
    assert A.attention_entropy(d['attn_prefix']).shape == (store.meta['depth'], store.meta['n_heads'])
    shares = A.sink_share(d['attn_received'], lay)
    np.testing.assert_allclose(shares['cls'] + shares['registers'] + shares['patches'], 1, atol=5e-3)
    assert 0 <= A.sink_rate(d['attn_received']).rate <= 1
    sk = A.sinks_over_epochs(store)
    assert len(sk) == 4 * store.meta['depth']
    mt = A.massive_table(store)
    assert len(mt) == 4 * store.meta['depth'] and (mt.ratio >= 1).all()

    # the measurements that need the model: rebuilt from the weights stored with the probe
    model = store.load_model_weights(create_model(**store.meta['model']), 3)
    x = store.images(normalized=True)
    r = A.probe(model, x, attention=True, features=[2])
    np.testing.assert_allclose(r.norms.numpy(), d['norms'], rtol=0.03, atol=0.03)  # bf16 weights, fp16 norms
    assert A.rollout_maps(model, x).shape == (8, 4, 4)
    assert A.mean_attention_distance(r.attn, lay).shape == (store.meta['depth'], store.meta['n_heads'])
    sim = A.neighbour_similarity(A.patch_embeddings(model, x), lay.grid)
    mask = A.detect_outliers(r.norms, lay, 'sigma').mask[2]
    red = A.outlier_redundancy(sim, mask)
    assert -1 <= red['normal'] <= 1
    pp = A.position_probe(r.features[2][:, lay.n_prefix:], mask, lay.grid)
    assert 0 <= pp['normal_acc'] <= 1 and pp['n_normal'] + pp['n_outlier'] == 4 * 16


def test_compare_runs_reads_metrics_and_store(run_dir):
    table = A.compare_runs([run_dir])
    row = table.loc[run_dir.name]
    metrics = [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert row.final_val_acc1 == metrics[-1]['val_acc1']
    assert row.model == 'register' and row.n_registers == 2
    assert row.probe_epochs == 4 and row.last_probe_epoch == 3
    assert 0 <= row.final_outlier_ratio <= row.peak_outlier_ratio <= 1
    assert row.register_sink_share > 0 and row.cls_sink_share > 0 and not math.isnan(row.max_norm_ratio)


def test_probe_command_on_a_checkpoint_writes_the_same_store(run_dir, tmp_path):
    from PIL import Image
    store = ProbeStore(run_dir)
    folder = tmp_path / 'images'
    folder.mkdir()
    for i, im in enumerate(store.images()): Image.fromarray(im).save(folder / f'{i}.png')
    weights = store.weights_path(3)
    out = P.probe_command(weights, folder, tmp_path / 'probed', epoch=3, batch_size=3)
    probed = ProbeStore(tmp_path / 'probed')
    assert out.root == probed.root and probed.epochs == [3] and probed.layout == store.layout
    assert probed.meta['model']['variant'] == 'register' and probed.labels is None
    # the stored norms are those of a direct probe of the same weights on the same files (up to float16)
    model = store.load_model_weights(create_model(**store.meta['model']), 3)
    x, _ = P.read_image_folder(folder, 64)
    ref = P.probe(model, x, attention=False).norms.numpy()
    np.testing.assert_allclose(probed.load(3)['norms'], ref, rtol=2e-3, atol=1e-3)
    table = A.compare_runs([tmp_path / 'probed'])
    assert math.isnan(table.iloc[0].final_val_acc1)


def test_run_summary_lists_the_epochs_once(run_dir, monkeypatch):
    "A run still training writes epochs while it is summarised: every figure must come from one listing of the store."
    class Growing(ProbeStore):
        looks = 0
        @property
        def epochs(self):                              # one more epoch each time the store is listed
            Growing.looks += 1
            return super().epochs[:Growing.looks]
    monkeypatch.setattr(A, 'ProbeStore', Growing)
    row = A.run_summary(run_dir)
    assert (row['probe_epochs'], row['last_probe_epoch']) == (1, 0)
    assert 0 <= row['final_outlier_ratio'] <= row['peak_outlier_ratio'] <= 1


def test_information_reads_stored_features_else_the_weights(run_dir):
    "Block 2's tokens come from the store's features; block 3's from the stored weights; both give the same probes' table."
    store = ProbeStore(run_dir)
    kept, rebuilt = A.information_over_epochs(store, 2), A.information_over_epochs(store, 3)
    assert kept.source.tolist() == ['features'] * 4 and rebuilt.source.tolist() == ['weights'] * 4
    assert A.information_over_epochs(store).layer.tolist() == [2] * 4           # the stored layer, by default
    cols = ['position_normal', 'pixel_normal', 'class_normal', 'position_chance', 'pixel_chance', 'class_chance']
    assert set(cols) <= set(kept.columns) and kept[cols].notna().all().all()
    # the stored tokens are those the stored weights give again (float16 tokens, bf16 weights)
    tokens, _, source = A.epoch_tokens(store, 3, 2)
    model = store.load_model_weights(create_model(**store.meta['model']), 3)
    again = A.probe(model, store.images(normalized=True), attention=False, features=[2]).features[2].numpy()
    assert source == 'features' and tokens.shape == again.shape == (8, 19, 96)
    np.testing.assert_allclose(tokens, again, rtol=0.05, atol=0.05 * np.abs(again).max())
