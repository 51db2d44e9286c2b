"""Several processes (gloo on CPU): `nproc=2` and `torchrun` give the metrics of one process at the same global batch.

Tolerance: the two runs see the same global batches (the samplers shard one permutation) and, with Mixup and drop path
off, compute the same mean gradient; only the order of floating-point sums differs (two half-batch means averaged by
all-reduce against one mean over the whole batch). After two epochs (32 LAMB steps) we measured losses equal to 2e-8
relative and weights to 1.3e-7 absolute (weights of size up to 1); the test allows losses 1e-6 relative, weights 1e-5
absolute and accuracies one validation image in 128.
"""
import os, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vitartifacts.config import Config
from vitartifacts.runs import read_metrics
from vitartifacts.train import train

pytestmark = pytest.mark.serial   # `make test` runs these alone, after the tests that run two at a time

ROOT = Path(__file__).resolve().parents[1]
BASE = Config(size='tiny', img_size=32, patch_size=8, epochs=2, batch_size=32, warmup_epochs=0.5, lr=4e-3,
              mixup_alpha=0, cutmix_alpha=0, drop_path_rate=0, num_workers=0, wandb_mode='disabled', analysis_freq=0,
              save_freq=0, data_fn='vitartifacts.testing:memory_data', device='cpu')


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    "The reference: one process, global batch 32."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try: return train(replace(BASE, runs_dir=str(tmp_path_factory.mktemp('one')), run_name='one'))
    finally: torch.set_num_threads(n)


def assert_same_run(a: Path, b: Path):
    ma, mb = read_metrics(a), read_metrics(b)
    assert [m['epoch'] for m in ma] == [m['epoch'] for m in mb] == [1, 2]
    for x, y in zip(ma, mb):
        assert x['step'] == y['step'] and x['lr'] == pytest.approx(y['lr'], rel=1e-12)
        for k in ('train_loss', 'val_loss'): assert x[k] == pytest.approx(y[k], rel=1e-6), (k, x, y)
        for k in ('val_acc1', 'val_acc5'): assert abs(x[k] - y[k]) <= 1 / 128 + 1e-9, (k, x, y)
    from safetensors.torch import load_file
    wa, wb = (load_file(r / 'checkpoints' / 'final.safetensors') for r in (a, b))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < 1e-5, worst


def test_nproc_launches_gloo_workers(one_process, tmp_path, monkeypatch):
    "train(nproc=2) starts two processes through torch.distributed's launcher, each with half the global batch."
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    run_dir = train(replace(BASE, batch_size=16, nproc=2, runs_dir=str(tmp_path), run_name='two'))
    assert run_dir == tmp_path / 'two'
    assert_same_run(one_process, run_dir)
    assert Config.load(run_dir / 'config.yaml').nproc == 2


def test_torchrun(one_process, tmp_path):
    "`torchrun --nproc_per_node 2 -m vitartifacts.cli train ...` trains the same run."
    args = ['--size', 'tiny', '--img_size', 32, '--patch_size', 8, '--epochs', 2, '--batch_size', 16,
            '--warmup_epochs', 0.5, '--lr', 4e-3, '--mixup_alpha', 0, '--cutmix_alpha', 0, '--drop_path_rate', 0,
            '--num_workers', 0, '--wandb_mode', 'disabled', '--analysis_freq', 0, '--save_freq', 0,
            '--data_fn', 'vitartifacts.testing:memory_data', '--device', 'cpu', '--runs_dir', tmp_path, '--run_name', 'tr']
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    res = subprocess.run(torchrun + ['-m', 'vitartifacts.cli', 'train', *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_run(one_process, tmp_path / 'tr')
