"""Training engine: exact resume after SIGKILL, the papermill notebook, wandb that cannot fail a run."""
import math, subprocess
from pathlib import Path

import nbformat
import pytest
import torch

from _helpers import ENV, ROOT, WORKFLOW, assert_same_run, cli, kill_mid_epoch
from vitartifacts.config import Config, demo_config, from_namespace, setting_names
from vitartifacts.runs import read_metrics
from vitartifacts.train import train

TINY = ['--data_fn', 'vitartifacts.testing:memory_data', '--size', 'tiny', '--img_size', '32', '--patch_size', '8',
        '--num_workers', '0', '--wandb_mode', 'disabled', '--probe_size', '4']


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    "Tiny models train fastest on one thread, and the suite shares two cores; papermill kernels inherit the setting."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    yield
    torch.set_num_threads(n)


def test_sigkill_and_resume_is_bit_exact(tmp_path):
    "A run killed with SIGKILL in the middle of an epoch and resumed ends exactly like an uninterrupted one."
    common = TINY + ['--epochs', 2, '--batch_size', 16, '--warmup_epochs', 1, '--save_steps', 5, '--deterministic',
                     '--analysis_freq', 2, '--runs_dir', tmp_path]  # Mixup/CutMix and drop path on: they draw
    from vitartifacts.cli import parse_args, train_config
    train(train_config(parse_args(list(map(str, ['train', *common, '--run_name', 'straight'])))))  # in this process

    proc = subprocess.Popen(cli('train', *common, '--run_name', 'killed'), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # 32 steps an epoch, a save every 5: kill right after the save at step 8 or 13 of the second epoch,
    # so the next save is 5 steps away and the kill lands in the middle of the epoch
    progress = kill_mid_epoch({'killed': (proc, tmp_path / 'killed')}, epoch=1, steps=(8, 13))['killed']
    assert progress['epoch'] == 1 and progress['step_in_epoch'] in (8, 13), progress

    subprocess.run(cli('train', '--runs_dir', tmp_path, '--run_name', 'killed', '--resume'), env=ENV, check=True,
                   capture_output=True)

    assert [l['epoch'] for l in read_metrics(tmp_path / 'straight')] == [1, 2]
    from vitartifacts.store import ProbeStore
    assert ProbeStore(tmp_path / 'straight').epochs == [0, 2]
    assert_same_run(tmp_path / 'straight', tmp_path / 'killed')


def test_resume_refuses_changed_settings(tmp_path):
    cfg = Config(size='tiny', img_size=32, patch_size=8, epochs=1, batch_size=64, num_workers=0, wandb_mode='disabled',
                 analysis_freq=0, data_fn='vitartifacts.testing:memory_data', runs_dir=str(tmp_path), run_name='r')
    train(cfg)
    with pytest.raises(ValueError, match=r"settings differ from its config.yaml: lr \(0.004 -> 0.001\)"):
        train(Config(**{**cfg.__dict__, 'lr': 1e-3, 'resume': True}))
    with pytest.raises(FileNotFoundError, match='Cannot resume'):
        train(Config(**{**cfg.__dict__, 'run_name': 'other', 'resume': True}))


def parameters_cell(nb):
    cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(cells) == 1, "nbs/workflows/train.ipynb needs exactly one cell tagged 'parameters'"
    return cells[0]


def test_workflow_parameters_are_the_config():
    "The papermill parameters cell names every setting of Config, with the demo's values, and papermill reads them."
    nb = nbformat.read(WORKFLOW, as_version=4)
    ns = {}
    exec(parameters_cell(nb).source, {}, ns)
    assert sorted(ns) == sorted(setting_names())
    assert from_namespace(ns) == demo_config()
    import papermill
    assert list(papermill.inspect_notebook(str(WORKFLOW))) == setting_names()
    assert 'default_exp' not in ''.join(c.source for c in nb.cells)


def test_workflow_notebook_trains_under_papermill(tmp_path):
    "papermill runs the notebook with -p overrides: it trains on the embedded synthetic dataset into runs_dir/run_name."
    import papermill
    run_dir = tmp_path / 'pm'
    run_dir.mkdir()
    papermill.execute_notebook(
        str(WORKFLOW), str(run_dir / 'train.ipynb'), cwd=str(ROOT), progress_bar=False, kernel_name='python3',
        parameters=dict(img_size=32, epochs=1, num_workers=0, cache_dir=str(tmp_path / 'cache'), wandb_mode='disabled',
                        model='register', n_registers=2, analysis_freq=1, runs_dir=str(tmp_path), run_name='pm'))
    cfg = Config.load(run_dir / 'config.yaml')
    assert (cfg.model, cfg.dataset, cfg.img_size) == ('register', 'synthetic', 32)  # the embedded dataset, via vitartifacts.data
    assert [m['epoch'] for m in read_metrics(run_dir)] == [1]
    assert (run_dir / 'checkpoints' / 'final.safetensors').exists()
    out = nbformat.read(run_dir / 'train.ipynb', as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in out.cells)
    from vitartifacts.store import ProbeStore
    assert ProbeStore(run_dir).epochs == [0, 1]


def test_wandb_never_fails_a_run(tmp_path, monkeypatch, recwarn):
    "online without a key logs offline; online with an unreachable server falls back to offline; TensorBoard writes."
    monkeypatch.setenv('HOME', str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.delenv('WANDB_MODE', raising=False)
    base = dict(size='tiny', img_size=32, patch_size=8, epochs=1, batch_size=64, num_workers=0, analysis_freq=0,
                data_fn='vitartifacts.testing:memory_data', runs_dir=str(tmp_path), wandb_mode='online')
    run_dir = train(Config(**base, run_name='nokey', tensorboard=True))
    assert list((run_dir / 'wandb').glob('offline-run-*')), "wandb should have logged offline into the run folder"
    assert not [w for w in recwarn if 'wandb' in str(w.message)]
    assert list((run_dir / 'tensorboard').glob('events.out.tfevents.*'))
    monkeypatch.setenv('WANDB_API_KEY', 'a' * 40)
    monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9')  # nothing listens there
    monkeypatch.setenv('WANDB_INIT_TIMEOUT', '3')
    run_dir = train(Config(**base, run_name='unreachable'))
    assert len(read_metrics(run_dir)) == 1
    assert list((run_dir / 'wandb').glob('offline-run-*'))
    assert not [w for w in recwarn if 'wandb' in str(w.message)]


def test_run_folder_is_checked_once(tmp_path, monkeypatch):
    "A training start checks its run folder once (before building the data), not again when it creates the folder."
    import vitartifacts.train as T
    checked = []
    monkeypatch.setattr(T, 'check_run_dir', lambda cfg, check=T.check_run_dir: checked.append(cfg.run_name) or check(cfg))
    cfg = Config(data_fn='vitartifacts.testing:memory_data', size='tiny', img_size=32, patch_size=8, batch_size=32,
                 epochs=1, num_workers=0, wandb_mode='disabled', analysis_freq=0, runs_dir=str(tmp_path), run_name='once')
    train(cfg)
    assert checked == ['once']
    with pytest.raises(FileExistsError, match='already holds a run'): train(cfg)


def prepared_cache(tmp_path) -> Path:
    "A two-class ImageFolder (16 train, 8 val images per class) cached by `vitartifacts prepare-data` for 32 px."
    from PIL import Image
    from vitartifacts.cli import main
    for split, n in (('train', 16), ('val', 8)):
        for c, color in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = tmp_path / 'folder' / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(n):
                im = Image.new('RGB', (48 + 8 * (i % 3), 40), color)
                im.paste((255, 255, 255), (4 * i % 30, 8, 4 * i % 30 + 10, 20))
                im.save(folder / f'{i}.png')
    assert main(['prepare-data', str(tmp_path / 'folder'), '--out', str(tmp_path / 'cache'), '--img_size', '32',
                 '--num_workers', '0']) == 0
    return tmp_path / 'cache'


def test_fast_data_trains_from_a_prepared_cache(tmp_path):
    "fast_data: `vitartifacts prepare-data` caches an ImageFolder, and train augments it a batch at a time."
    cfg = Config(size='tiny', img_size=32, patch_size=8, epochs=2, batch_size=8, warmup_epochs=0.5, probe_size=4,
                 fast_data=True, data_path=str(prepared_cache(tmp_path)), wandb_mode='disabled', analysis_freq=1,
                 runs_dir=str(tmp_path), run_name='fast')
    run_dir = train(cfg)
    lines = read_metrics(run_dir)
    assert [l['step'] for l in lines] == [4, 8]          # 32 images, batch 8
    assert all(0 <= l['val_acc1'] <= 1 for l in lines) and lines[-1]['val_loss'] > 0
    from vitartifacts.store import ProbeStore
    assert ProbeStore(run_dir).epochs == [0, 1, 2]
    # the GPU speed settings run on the CPU too and train the same run to the same numbers within float rounding:
    # the matmul patch embedding (same weights) and the matmul resampling (float32 here; matmul-fp16 is for tensor cores)
    fast = Config(**{**cfg.__dict__, 'run_name': 'fast-matmul', 'patch_embed': 'linear', 'augment_kernel': 'matmul'})
    other = read_metrics(train(fast))
    for a, b in zip(lines, other):
        assert abs(a['train_loss'] - b['train_loss']) < 1e-3 and abs(a['val_loss'] - b['val_loss']) < 1e-3, (a, b)
    half = read_metrics(train(Config(**{**cfg.__dict__, 'run_name': 'fast-fp16', 'augment_kernel': 'matmul-fp16'})))
    assert abs(half[-1]['train_loss'] - lines[-1]['train_loss']) < 2e-2


def test_fast_data_carries_its_target_function(tmp_path):
    "fast_data says who makes the soft targets: its loader when it mixes, else label smoothing as the Data's mixup_fn."
    from vitartifacts.data import SmoothedTargets
    from vitartifacts.gpudata import cached_data
    from vitartifacts.train import soft_targets
    base = dict(size='tiny', img_size=32, patch_size=8, batch_size=8, probe_size=4, fast_data=True,
                data_path=str(prepared_cache(tmp_path)), smoothing=0.2)
    plain = Config(**base, mixup_alpha=0, cutmix_alpha=0)
    data = cached_data(plain, torch.device('cpu'))
    assert not data.loader_mixes and isinstance(data.mixup_fn, SmoothedTargets)
    assert (data.mixup_fn.num_classes, data.mixup_fn.smoothing) == (2, 0.2)
    x, y = next(iter(data.train_loader))
    assert y.shape == (8,)                                   # class indices: the loader did not mix
    _, targets = soft_targets(x, y, data, plain)
    assert torch.equal(targets, torch.full((8, 2), 0.1).scatter_(1, y[:, None], 0.9))
    data = cached_data(Config(**base), torch.device('cpu'))  # Mixup/CutMix on: mixed on the device, by the loader
    assert data.loader_mixes and data.mixup_fn is None
    x, targets = next(iter(data.train_loader))
    assert targets.shape == (8, 2) and soft_targets(x, targets, data, plain)[1] is targets


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
def test_fast_data_on_cuda_with_every_speed_option(tmp_path):
    """On a GPU: the fast path with compile (model, LAMB, augmentation), bf16 batches, the prefetching loader, the matmul
    patch embedding and half-precision resampling trains, and its first-epoch loss matches the plain CUDA run's."""
    base = dict(size='tiny', img_size=32, patch_size=8, epochs=2, batch_size=8, warmup_epochs=0.5, probe_size=4,
                fast_data=True, data_path=str(prepared_cache(tmp_path)), wandb_mode='disabled', analysis_freq=1,
                runs_dir=str(tmp_path), device='cuda')
    plain = read_metrics(train(Config(**base, run_name='plain')))
    fast = read_metrics(train(Config(**base, run_name='fast', compile=True, patch_embed='linear', augment_kernel='matmul-fp16')))
    assert [l['step'] for l in fast] == [4, 8] and all(math.isfinite(l['train_loss']) for l in fast)
    assert abs(fast[0]['train_loss'] - plain[0]['train_loss']) < 2e-2, (fast[0], plain[0])
    from vitartifacts.store import ProbeStore
    assert ProbeStore(tmp_path / 'fast').epochs == [0, 1, 2]
