"""The mitigations `attn_bias` and `softmax_one`, alone and with registers or gating: a tiny run of each from the
installed `vitartifacts` command and under papermill, resumed bit-exactly after SIGKILL, read back by the store, the
model builder, the comparison table and the report."""
import re, shutil, subprocess, sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from _helpers import ENV, assert_same_run, kill_mid_epoch, papermill_cli
from vitartifacts.analysis import compare_mitigations, compare_runs, sink_share
from vitartifacts.config import Config, demo_config
from vitartifacts.models import build_probe_model
from vitartifacts.report import write_report
from vitartifacts.runs import read_metrics
from vitartifacts.store import ProbeStore

# One setting for every run, from the command line and from papermill alike (the notebook's parameters are the demo's,
# so a command-line run starts from `demo_config` too), so that each papermill run is the uninterrupted twin that a
# killed command-line run must end exactly like: 32 steps of 16 images, a save every 5 steps, block 2's tokens kept.
TINY = dict(data_fn='vitartifacts.testing:memory_data', img_size=32, patch_size=8, epochs=1, batch_size=16, save_steps=5,
            deterministic=True, analysis_freq=1, probe_size=4, probe_features='2', num_workers=0, wandb_mode='disabled')
RUNS = {   # run name: its mitigation (and variant)
    'attn_bias': dict(attn_bias=True),
    'softmax_one': dict(softmax_one=True),
    'attn_bias-register': dict(attn_bias=True, model='register', n_registers=2),
    'softmax_one-gated': dict(softmax_one=True, model='gated'),
}
KILLED = ('attn_bias-register', 'softmax_one-gated')   # each mitigation once, with registers and with gating


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


def bias_slots(name): return [k for k in ('attn_bias', 'softmax_one') if k in RUNS[name]]


def resume_here(root, name):
    "Resume run `name` in this process, on one thread as the runs it is compared with."
    from vitartifacts.cli import parse_args, train_config
    from vitartifacts.train import train
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try: train(train_config(parse_args(['train', '--runs_dir', str(root), '--run_name', name, '--resume'])))
    finally: torch.set_num_threads(n)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Every mitigation and a vanilla run from the installed command, and every mitigation under papermill (`NAME-pm`),
    side by side, each process on one thread; the runs of `KILLED` are killed in the middle of their epoch and resumed.
    Returns the runs folder and what the killed runs' checkpoints held."""
    root = tmp_path_factory.mktemp('mitigations')
    procs, killed = {}, {}
    for name, kw in {**RUNS, 'vanilla': {}}.items():
        demo_config(**TINY, **kw).save(root / f'{name}.yaml')
        procs[name] = subprocess.Popen(command() + ['train', '--config', str(root / f'{name}.yaml'), '--runs_dir', str(root),
                                                    '--run_name', name], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if name in RUNS:
            (root / f'{name}-pm').mkdir()
            procs[f'{name}-pm'] = subprocess.Popen(papermill_cli(root / f'{name}-pm' / 'train.ipynb', {**TINY, **kw, 'runs_dir': str(root),
                                                   'run_name': f'{name}-pm'}), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    progress = kill_mid_epoch({name: (procs.pop(name), root / name) for name in KILLED}, epoch=0, steps=(10, 15, 20))
    for name in KILLED: resume_here(root, name)       # the next save was 5 steps away: resumed from the middle of the epoch
    for name, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, (name, out[-2000:])
    return root, progress


@pytest.mark.parametrize('name', RUNS)
def test_a_tiny_run_of_each_mitigation(runs, name):
    run, slots = runs[0] / name, bias_slots(name)
    cfg = Config.load(run / 'config.yaml')
    assert (cfg.attn_bias, cfg.softmax_one) == ('attn_bias' in name, 'softmax_one' in name)
    model, info = build_probe_model(run / 'checkpoints' / 'final.safetensors')   # the weights alone say which mitigation
    assert (info['variant'], info['attn_bias'], info['softmax_one']) == (cfg.model, cfg.attn_bias, cfg.softmax_one)
    assert list(model.blocks[0].attn.bias_slots) == slots
    store = ProbeStore(run)
    assert store.epochs == [0, 1] and store.layout.bias_slots == slots
    assert store.meta['model']['attn_bias'] == cfg.attn_bias and store.meta['model']['softmax_one'] == cfg.softmax_one
    received = store.load(1, ['attn_received'])['attn_received']                # depth, K, H, T + 1
    assert received.shape[-1] == store.layout.n_tokens + 1
    shares = sink_share(received, store.layout)
    every = shares['cls'] + shares.get('registers', 0) + shares['patches'] + shares['bias slots']
    np.testing.assert_allclose(every, 1, atol=1e-3)                             # float16 storage of T + 1 shares
    assert (shares['bias slots'] > 0).all()


def test_the_report_opens_every_mitigation(runs, tmp_path):
    dirs = [runs[0] / name for name in RUNS]
    html = write_report(dirs, tmp_path / 'report.html').read_text()
    assert all(f'"{name}"' in html for name in RUNS)
    table = compare_runs(dirs)
    assert table.loc['softmax_one-gated', ['model', 'softmax_one', 'attn_bias']].tolist() == ['gated', True, False]
    assert (table.bias_sink_share > 0).all()


def test_help_names_each_paper():
    out = subprocess.run(command() + ['train', '--help'], env=ENV, capture_output=True, text=True).stdout
    entry = lambda name: ' '.join(re.search(rf'\n  --{name} .*?(?=\n  -)', out, re.S)[0].split())   # its help, unwrapped
    assert 'Sun et al. 2024, Massive Activations' in entry('attn_bias'), entry('attn_bias')
    assert 'Miller 2023, Attention is off by one' in entry('softmax_one'), entry('softmax_one')


def test_probe_with_test_time_registers_records_them(runs, tmp_path):
    "`vitartifacts probe --test_time_registers 1`: one more register in the layout, and the moved neurons in the store."
    weights = runs[0] / 'attn_bias' / 'checkpoints' / 'final.safetensors'
    res = subprocess.run(command() + ['probe', '--weights', str(weights), '--images', 'synthetic', '--n_images', '8',
                                      '--out', str(tmp_path / 'ttr'), '--test_time_registers', '1'],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    store, plain = ProbeStore(tmp_path / 'ttr'), ProbeStore(runs[0] / 'attn_bias')
    assert store.layout.n_registers == plain.layout.n_registers + 1
    assert store.layout.n_tokens == plain.layout.n_tokens + 1
    info = store.meta['model']
    assert info['test_time_registers'] == 1 and isinstance(info['register_neurons'], list)
    assert all(set(n) == {'layer', 'neuron', 'score'} for n in info['register_neurons'])
    res = subprocess.run(command() + ['probe', '--weights', str(weights), '--images', 'synthetic', '--out', str(tmp_path / 'x'),
                                      '--test_time_registers', '-1'], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and 'test_time_registers=-1 must be 0 or more' in res.stderr and 'Traceback' not in res.stderr


def test_compare_mitigations_lines_up_every_run(runs):
    "Runs of every variant and mitigation side by side by the same measures, each labelled with both."
    names = [*RUNS, 'vanilla']
    table = compare_mitigations([runs[0] / n for n in names])
    assert table.index.tolist() == names
    assert table.model.tolist() == ['vanilla', 'vanilla', 'register', 'gated', 'vanilla']
    assert table.mitigation.tolist() == ['attn_bias', 'softmax_one', 'attn_bias', 'softmax_one', 'none']
    layers = [c for c in table.columns if c.startswith('outliers_')]
    assert layers == [f'outliers_{l}' for l in range(7)]                         # 6 blocks and the final norm
    assert ((table[layers] >= 0) & (table[layers] <= 1)).all().all()
    assert (table.bias_sink_share.notna() == (table.mitigation != 'none')).all() and (table.bias_sink_share.dropna() > 0).all()
    assert table.register_sink_share.notna().tolist() == [False, False, True, False, False]
    assert (table.cls_sink_share > 0).all() and (table.max_norm_ratio >= 1).all() and (table.massive_ratio >= 1).all()
    for n in names: assert table.loc[n, 'final_val_acc1'] == read_metrics(runs[0] / n)[-1]['val_acc1']


@pytest.mark.parametrize('name', RUNS)
def test_papermill_trains_each_mitigation(runs, name):
    run, want = runs[0] / f'{name}-pm', RUNS[name]
    cfg = Config.load(run / 'config.yaml')
    assert (cfg.model, cfg.attn_bias, cfg.softmax_one) == (want.get('model', 'vanilla'), 'attn_bias' in want, 'softmax_one' in want)
    assert cfg.training_diff(Config.load(runs[0] / name / 'config.yaml')) == []     # the command-line run's settings
    assert [m['epoch'] for m in read_metrics(run)] == [1]
    out = nbformat.read(run / 'train.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in out.cells)
    store = ProbeStore(run)
    assert store.epochs == [0, 1] and store.layout.bias_slots == bias_slots(name)
    assert [store.feature_layers(e) for e in store.epochs] == [[2], [2]]
    assert store.features(1, 2).shape == (4, store.layout.n_tokens, 96)


@pytest.mark.parametrize('name', KILLED)
def test_sigkill_and_resume_of_a_mitigation_is_bit_exact(runs, name):
    "Killed in the middle of its epoch and resumed, the command-line run ends exactly like its papermill twin."
    root, progress = runs
    assert progress[name]['epoch'] == 0 and progress[name]['step_in_epoch'] in (10, 15, 20), progress[name]
    assert_same_run(root / f'{name}-pm', root / name)                          # weights, metrics, every stored array
    assert ProbeStore(root / name).feature_layers(1) == [2]                    # token features included
