"""The command line: every setting is an option, bad input is one sentence and exit code 2, the commands dispatch."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from vitartifacts.cli import main
from vitartifacts.config import setting_names

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')


def vitartifacts(*args):
    "Run `python -m vitartifacts.cli ARGS` in a fresh process."
    return subprocess.run([sys.executable, '-m', 'vitartifacts.cli', *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_help_lists_every_setting():
    res = vitartifacts('train', '--help')
    assert res.returncode == 0
    for name in setting_names(): assert f'--{name}' in res.stdout, name
    res = vitartifacts('--help')
    assert res.returncode == 0 and all(c in res.stdout for c in ('train', 'probe', 'report', 'prepare-data'))


@pytest.mark.parametrize('args, message', [
    (['train', '--lr', '-1'], "Setting lr must be positive, got -1.0."),
    (['train', '--batch_size', '0'], "Setting batch_size must be at least 1, got 0."),
    (['train', '--model', 'resnet'], "Setting model='resnet' is not one of 'vanilla', 'register', 'gated', 'cnn'."),
    (['train', '--data_path', '/no/such/imagenet'], "Setting data_path='/no/such/imagenet' does not exist"),
    (['train', '--epohcs', '3'], "Unknown option --epohcs; did you mean --epochs?"),
    (['train', '--epochs', 'many'], "Argument --epochs: invalid int value: 'many'"),
    (['train', '--resume'], "Setting resume needs run_name"),
    (['train', '--resume', '--run_name', 'nothing-here', '--runs_dir', '/tmp/no-runs'], "Cannot resume"),
    (['probe', '--weights', '/no/model.safetensors', '--images', '/tmp', '--out', '/tmp/x'], "/no/model.safetensors does not exist"),
    (['prepare-data', '/no/root', '--out', '/tmp/cache'], "/no/root has no train/ folder"),
    (['fly'], "Argument COMMAND: invalid choice: 'fly'"),
])
def test_bad_input_is_one_sentence_and_exit_2(args, message):
    res = vitartifacts(*args)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert message in res.stderr
    assert res.stderr.count('\n') == 1 and 'Traceback' not in res.stderr, res.stderr


def test_console_script():
    "The `vitartifacts` console script that `pip install -e .` puts beside the interpreter."
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    if exe is None: pytest.skip('the project is not installed into this environment (make test installs it)')
    res = subprocess.run([exe, 'train', '--lr', '-1'], env=ENV, capture_output=True, text=True)
    assert (res.returncode, res.stderr) == (2, "vitartifacts train: Setting lr must be positive, got -1.0.\n")


def test_train_then_probe_then_report(tmp_path, capsys):
    "A run trained from the command line is probed and reported by the other commands."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        code = main(['train', '--data_fn', 'vitartifacts.testing:memory_data', '--size', 'tiny', '--model', 'register',
                     '--n_registers', '2', '--img_size', '32', '--patch_size', '8', '--epochs', '1', '--batch_size', '64',
                     '--num_workers', '0', '--wandb_mode', 'disabled', '--probe_size', '4', '--analysis_freq', '1',
                     '--runs_dir', str(tmp_path), '--run_name', 'r'])
        assert code == 0
        run_dir = tmp_path / 'r'
        images = tmp_path / 'images' / 'class_a'
        images.mkdir(parents=True)
        from PIL import Image
        for i in range(3): Image.new('RGB', (40, 40), (60 * i, 100, 200)).save(images / f'{i}.png')
        code = main(['probe', '--weights', str(run_dir / 'checkpoints' / 'final.safetensors'),
                     '--images', str(images.parent), '--out', str(tmp_path / 'probed')])
        assert code == 0
    finally: torch.set_num_threads(n)
    from vitartifacts.store import ProbeStore
    store = ProbeStore(tmp_path / 'probed')
    assert store.epochs == [0] and store.meta['model']['variant'] == 'register'
    assert store.read('norms').shape[2] == 3          # epochs, layers, images, tokens
    pytest.importorskip('vitartifacts.report', reason='the report command (views issue) is not written yet')
    assert main(['report', str(run_dir), '-o', str(tmp_path / 'report.html')]) == 0
    assert (tmp_path / 'report.html').stat().st_size > 1000
