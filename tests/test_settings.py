"""The settings of the comparative studies as a user meets them: the installed `vitartifacts train` takes each one,
refuses the combinations that cannot work in one sentence, and the run folders it writes are what the sweep, the
results table, the probe, the store and the views expect. The notebooks check each setting's mechanics."""
import json, math, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ENV = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
TINY = ['--data_fn', 'vitartifacts.testing:memory_data', '--size', 'tiny', '--img_size', '32', '--patch_size', '8',
        '--batch_size', '32', '--num_workers', '0', '--wandb_mode', 'disabled', '--analysis_freq', '1']
FLAT = ['--lr', '1e-9', '--min_lr', '1e-9', '--warmup_lr', '1e-9']   # no prediction changes: top-1 stays put


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


def vitartifacts(*args, timeout=300):
    return subprocess.run(command() + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout)


def refused(res, *phrases):
    assert res.returncode == 2, (res.returncode, res.stdout[-1500:], res.stderr[-1500:])
    assert 'Traceback' not in res.stderr and res.stderr.count('\n') == 1, res.stderr
    for p in phrases: assert p in res.stderr, (p, res.stderr)


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines() if l.strip()]


def test_new_settings_train_from_the_command_line_and_stop_early(tmp_path):
    res = vitartifacts('train', *TINY, *FLAT, '--epochs', '4', '--early_stop_patience', '1', '--pos_embed', 'sincos',
                       '--patch_embed', 'convstem', '--augment', 'cutout', '--class_token', 'false', '--layer_scale', '0',
                       '--runs_dir', tmp_path, '--run_name', 'r')
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / 'r'
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert (cfg['pos_embed'], cfg['patch_embed'], cfg['augment'], cfg['early_stop_patience']) == ('sincos', 'convstem', 'cutout', 1)
    assert (cfg['class_token'], cfg['layer_scale']) == (False, 0.0)
    lines = metrics(run)
    assert [(l['epoch'], l.get('early_stop', False)) for l in lines] == [(1, False), (2, True)], lines
    assert 'Early stop after epoch 2 of 4' in res.stdout
    assert (run / 'checkpoints' / 'final.pt').exists() and (run / 'checkpoints' / 'final.safetensors').exists()
    from vitartifacts.store import ProbeStore
    store = ProbeStore(run)
    assert store.epochs == [0, 1, 2] and (store.layout.cls_index, store.layout.n_prefix) == (None, 0)   # patch tokens only
    from vitartifacts.models import build_probe_model   # the weights say what they are: stem, sin-cos, no CLS, no LayerScale
    net, info = build_probe_model(run / 'checkpoints' / 'final.safetensors')
    assert (info['patch_embed'], info['pos_embed'], info['patch_size'], info['img_size']) == ('convstem', 'sincos', 8, 32)
    assert (info['class_token'], info['init_values'], net.global_pool) == (False, 0.0, 'avg')
    from vitartifacts.analysis import compare_runs
    assert compare_runs([run]).loc['r', ['class_token', 'layer_scale']].tolist() == [False, 0.0]


@pytest.mark.parametrize('args, phrases', [
    (['--patch_embed', 'convstem', '--img_size', '48', '--patch_size', '12'], ["patch_embed='convstem' needs a power-of-two patch_size", 'got 12']),
    (['--fast_data', 'true', '--augment', 'strong'], ["augment='strong' cannot be done by fast_data"]),
])
def test_impossible_combinations_are_one_sentence(tmp_path, args, phrases):
    refused(vitartifacts('train', *TINY, '--epochs', '1', *args, '--runs_dir', tmp_path, '--run_name', 'x'), *phrases)
    assert not (tmp_path / 'x').exists()


def test_a_cnn_point_has_metrics_no_probes_and_nan_artifacts_and_early_stop_counts_as_done(tmp_path):
    from vitartifacts.analysis import run_summary
    from vitartifacts.results import ARTIFACT_MEASURES, _artifacts, sweep_results
    from vitartifacts.sweep import load_sweep, point_state, prepare_sweep
    from vitartifacts.train import train
    base = dict(data_fn='vitartifacts.testing:memory_data', size='tiny', img_size=32, patch_size=8, batch_size=32,
                epochs=3, num_workers=0, analysis_freq=1, wandb_mode='disabled', lr=1e-9, min_lr=1e-9,
                warmup_lr=1e-9, early_stop_patience=1)
    # the CNN's BatchNorm statistics move even at lr 1e-9, so it runs its one epoch without early stopping
    points = [dict(model='cnn', epochs=1, early_stop_patience=0), dict(model='vanilla')]
    sweep = load_sweep(dict(name='s', base=base, points=points, seeds=[0]), str(tmp_path))
    prepare_sweep(sweep)
    cnn, vit = sweep.points
    assert point_state(sweep, cnn) == point_state(sweep, vit) == 'pending'
    res = vitartifacts('train', *TINY, *FLAT, '--epochs', '1', '--model', 'cnn', '--runs_dir', sweep.folder, '--run_name', cnn.name)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "model='cnn' has no tokens to probe" in res.stdout
    assert [l['epoch'] for l in metrics(cnn.run_dir)] == [1] and not (cnn.run_dir / 'probes').exists()
    train(vit.cfg, probe_hook=None)
    stopped = metrics(vit.run_dir)
    assert [(l['epoch'], l.get('early_stop', False)) for l in stopped] == [(1, False), (2, True)], stopped
    assert point_state(sweep, cnn) == point_state(sweep, vit) == 'done'
    s = run_summary(cnn.run_dir)
    assert s['model'] == 'cnn' and s['final_val_acc1'] == metrics(cnn.run_dir)[-1]['val_acc1']
    arts = _artifacts(cnn.run_dir)
    assert set(arts) == set(ARTIFACT_MEASURES.values()) and all(math.isnan(v) for v in arts.values())
    table = sweep_results(sweep)
    row = table.loc[[k for k in table.index if 'cnn' in k][0]]
    assert math.isnan(row['outlier_ratio']) and row['top1_lo'] <= row['top1'] <= row['top1_hi']


@pytest.mark.parametrize('patch_size', [2, 4, 8])
def test_probe_store_and_views_take_every_patch_grid(tmp_path, patch_size):
    from vitartifacts.models import create_model
    from vitartifacts.probe import probe
    from vitartifacts.store import ProbeStore
    from vitartifacts.views import RunView
    torch.manual_seed(0)
    grid = 32 // patch_size
    model = create_model('register', 'tiny', num_classes=4, img_size=32, patch_size=patch_size, n_registers=2).eval()
    images = torch.randn(3, 3, 32, 32)
    info = dict(variant='register', size='tiny', num_classes=4, img_size=32, patch_size=patch_size, n_registers=2)
    run = tmp_path / f'p{patch_size}'
    (run).mkdir()
    (run / 'config.yaml').write_text(yaml.safe_dump(dict(model='register', size='tiny', img_size=32, patch_size=patch_size,
                                                         n_registers=2)))
    for epoch in (0, 1):
        result = probe(model, images, attention='summary')
        assert result.norms.shape[-1] == 1 + 2 + grid * grid
        ProbeStore(run, attn_dtype='auto').append(epoch, result, images=images, weights=model, model_info=info)
    view = RunView(run)
    assert (view.grid, view.patch_size, view.epochs, view.n_registers) == ((grid, grid), patch_size, [0, 1], 2)
    assert view.norm_map(1, 2, 0).shape == (grid, grid)
    assert view.cls_map(1, 2, 0).shape == (grid, grid)
    assert view.register_maps(1, 2, 0).shape == (2, grid, grid)
    assert all(0 <= i < grid * grid for i in view.outlier_patches(1, 2, 0))
    counts, edges = view.histogram(1, 2)
    assert counts.sum() == 3 * grid * grid and len(edges) == len(counts) + 1   # every patch token of the 3 images
    net, e = view.model()
    with torch.no_grad(): assert torch.allclose(net(images), model(images), atol=1e-2)   # bf16 weights in the store
