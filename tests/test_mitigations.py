"""The mitigations `attn_bias` and `softmax_one`, alone and with registers or gating: a tiny run of each from the
installed `vitartifacts` command, read back by the store, the model builder and the report."""
import os, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from vitartifacts.analysis import compare_runs, sink_share
from vitartifacts.config import Config
from vitartifacts.models import build_probe_model
from vitartifacts.report import write_report
from vitartifacts.store import ProbeStore

ENV = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
TINY = ['--data_fn', 'vitartifacts.testing:memory_data', '--size', 'tiny', '--img_size', '32', '--patch_size', '8',
        '--batch_size', '32', '--num_workers', '0', '--wandb_mode', 'disabled', '--analysis_freq', '1', '--epochs', '1']
RUNS = {   # run name: (options, the bias slots its attention must have)
    'attn_bias': (['--attn_bias', 'true'], ['attn_bias']),
    'softmax_one': (['--softmax_one', 'true'], ['softmax_one']),
    'attn_bias-register': (['--attn_bias', 'true', '--model', 'register', '--n_registers', '2'], ['attn_bias']),
    'softmax_one-gated': (['--softmax_one', 'true', '--model', 'gated'], ['softmax_one']),
}


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "The four tiny runs, trained side by side (each process on one thread)."
    root = tmp_path_factory.mktemp('mitigations')
    procs = {name: subprocess.Popen(command() + ['train', *TINY, '--runs_dir', str(root), '--run_name', name, *args],
                                    env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, _) in RUNS.items()}
    for name, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, (name, err[-2000:])
    return root


@pytest.mark.parametrize('name', RUNS)
def test_a_tiny_run_of_each_mitigation(runs, name):
    run, slots = runs / name, RUNS[name][1]
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
    dirs = [runs / name for name in RUNS]
    html = write_report(dirs, tmp_path / 'report.html', gif=False).read_text()
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
    weights = runs / 'attn_bias' / 'checkpoints' / 'final.safetensors'
    res = subprocess.run(command() + ['probe', '--weights', str(weights), '--images', 'synthetic', '--n_images', '8',
                                      '--out', str(tmp_path / 'ttr'), '--test_time_registers', '1'],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    store, plain = ProbeStore(tmp_path / 'ttr'), ProbeStore(runs / 'attn_bias')
    assert store.layout.n_registers == plain.layout.n_registers + 1
    assert store.layout.n_tokens == plain.layout.n_tokens + 1
    info = store.meta['model']
    assert info['test_time_registers'] == 1 and isinstance(info['register_neurons'], list)
    assert all(set(n) == {'layer', 'neuron', 'score'} for n in info['register_neurons'])
    res = subprocess.run(command() + ['probe', '--weights', str(weights), '--images', 'synthetic', '--out', str(tmp_path / 'x'),
                                      '--test_time_registers', '-1'], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and 'test_time_registers=-1 must be 0 or more' in res.stderr and 'Traceback' not in res.stderr
