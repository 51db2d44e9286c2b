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


def _timm_weights(path: Path, name: str, **kw) -> Path:
    "A safetensors file of timm's `name` with random weights."
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model(name, **kw).state_dict().items()}, path)
    return path


def test_probe_runs_pvt_at_the_size_asked_and_prints_each_stage(tmp_path):
    "PVT-v2 takes no img_size but needs none: probed at 112 px, one line per stage store; a layer it lacks is one sentence."
    from vitartifacts.store import ProbeStore
    w = _timm_weights(tmp_path / 'pvt.safetensors', 'pvt_v2_b0', num_classes=3)
    args = ['probe', '--weights', w, '--model', 'pvt_v2_b0', '--img_size', '112', '--images', 'photos', '--n_images', '2']
    res = vitartifacts(*args, '--out', tmp_path / 'bad', '--features', '9')
    assert (res.returncode, res.stderr) == (2, "vitartifacts probe: features='9' names layer 9, but the deepest stage of pvt_v2_b0 "
                                               "has layers 0 to 2 (2 blocks, then 2: the final norm).\n")
    assert not (tmp_path / 'bad').exists()
    res = vitartifacts(*args, '--out', tmp_path / 'pvt')
    assert res.returncode == 0, res.stderr[-2000:]
    stores = [ProbeStore(tmp_path / 'pvt' / f'stage{i}') for i in range(4)]
    assert res.stdout.splitlines() == [f'probe store stage{i}: {st.root}' for i, st in enumerate(stores)]
    assert [st.layout.grid for st in stores] == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert stores[0].meta['model']['img_size'] == 112 and stores[0].meta['model']['num_classes'] == 3


def test_probe_features_make_a_store_the_information_probes_read(tmp_path):
    "`--features 2,4` keeps those layers' tokens, so the information probes run on a probe-only store without weights."
    from PIL import Image
    from safetensors.torch import save_file
    from vitartifacts.analysis import information_over_epochs
    from vitartifacts.models import create_model
    from vitartifacts.store import ProbeStore
    torch.manual_seed(0)
    net = create_model('register', 'tiny', num_classes=2, img_size=32, patch_size=8, n_registers=2)
    save_file(net.state_dict(), tmp_path / 'reg.safetensors')
    for i in range(16):
        (tmp_path / 'imgs' / f'c{i % 2}').mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (40, 40), (15 * i, 200 * (i % 2), 90)).save(tmp_path / 'imgs' / f'c{i % 2}' / f'{i}.png')
    res = vitartifacts('probe', '--weights', tmp_path / 'reg.safetensors', '--images', tmp_path / 'imgs',
                       '--out', tmp_path / 'probed', '--features', '2,4')
    assert res.returncode == 0, res.stderr[-2000:]
    store = ProbeStore(tmp_path / 'probed')
    assert res.stdout == f'probe store: {store.root}\n'
    assert store.feature_layers(0) == [2, 4] and store.weight_epochs == []
    assert store.features(0, 4).shape == (16, 19, 96)                 # images, CLS + 2 registers + 16 patches, width
    table = information_over_epochs(store, 4)
    assert table.source.tolist() == ['features'] and table.layer.tolist() == [4]
    res = vitartifacts('probe', '--weights', tmp_path / 'reg.safetensors', '--images', tmp_path / 'imgs',
                       '--out', tmp_path / 'x', '--features', '7')
    assert (res.returncode, res.stderr) == (2, "vitartifacts probe: features='7' names layer 7, but a tiny register model has "
                                               "layers 0 to 6 (6 blocks, then 6: the final norm).\n")
