"""Nothing a user owns is lost: each class of damage is refused with one sentence naming the path, exit code 2 and
nothing touched. Every check runs the installed `vitartifacts` command, as a user would."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
TINY = ['--data_fn', 'vitartifacts.testing:memory_data', '--size', 'tiny', '--img_size', '32', '--patch_size', '8',
        '--batch_size', '32', '--num_workers', '0', '--wandb_mode', 'disabled', '--analysis_freq', '1']


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


def vitartifacts(*args, timeout=300):
    return subprocess.run(command() + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout)


def refused(res, *phrases):
    assert res.returncode == 2, (res.returncode, res.stdout[-1500:], res.stderr[-1500:])
    assert 'Traceback' not in res.stderr and res.stderr.count('\n') == 1, res.stderr
    for p in phrases: assert p in res.stderr, (p, res.stderr)


def tree(folder):
    "Every file under `folder` with its bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


def test_overwrite_removes_only_a_run(tmp_path):
    mine = tmp_path / 'runs' / 'photos'
    mine.mkdir(parents=True); (mine / 'cat.jpg').write_bytes(b'my photo'); (mine / 'notes.txt').write_text('mine')
    before = tree(mine)
    refused(vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', tmp_path / 'runs', '--run_name', 'photos',
                         '--overwrite', 'true'), f'Cannot overwrite {mine}: it holds no run of this project')
    assert tree(mine) == before
    # a run of ours with a file of the user's beside it: the run is replaced, the user's file stays
    res = vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', tmp_path / 'runs', '--run_name', 'r')
    assert res.returncode == 0, res.stderr
    (tmp_path / 'runs' / 'r' / 'notes.txt').write_text('mine')
    res = vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', tmp_path / 'runs', '--run_name', 'r', '--overwrite', 'true')
    assert res.returncode == 0, res.stderr
    assert (tmp_path / 'runs' / 'r' / 'notes.txt').read_text() == 'mine'


def image_root(root, n=4):
    for split in ('train', 'val'):
        for c in ('a', 'b'):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n): Image.new('RGB', (40, 30), (60 * i, 100, 200)).save(root / split / c / f'{i}.jpg')
    return root


@pytest.mark.parametrize('where', ['same', 'inside', 'around'])
def test_prepare_data_never_writes_over_the_dataset(tmp_path, where):
    root = image_root(tmp_path / 'data' / 'in100')
    out = {'same': root, 'inside': root / 'cache', 'around': tmp_path / 'data'}[where]
    before = tree(root)
    refused(vitartifacts('prepare-data', root, '--out', out, '--overwrite', '--img_size', '32'),
            {'same': 'is the dataset', 'inside': 'is inside the dataset', 'around': 'contains the dataset'}[where])
    assert tree(root) == before


def test_prepare_data_overwrites_only_a_cache(tmp_path):
    root = image_root(tmp_path / 'in100')
    mine = tmp_path / 'mine'; (mine / 'train').mkdir(parents=True); (mine / 'train' / 'keep.txt').write_text('mine')
    refused(vitartifacts('prepare-data', root, '--out', mine, '--overwrite', '--img_size', '32'), 'is not an image cache')
    assert (mine / 'train' / 'keep.txt').read_text() == 'mine'
    assert vitartifacts('prepare-data', root, '--out', tmp_path / 'cache', '--img_size', '32').returncode == 0
    assert vitartifacts('prepare-data', root, '--out', tmp_path / 'cache', '--img_size', '48', '--overwrite').returncode == 0


def test_probe_into_a_run_keeps_its_store_readable(tmp_path):
    runs = tmp_path / 'runs'
    assert vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'r').returncode == 0
    run = runs / 'r'
    before = tree(run / 'probes')
    weights = run / 'checkpoints' / 'final.safetensors'
    refused(vitartifacts('probe', '--weights', weights, '--images', 'photos', '--out', run, '--n_images', '4'),
            'already holds probe epoch 0; pass another --epoch')
    assert tree(run / 'probes') == before
    refused(vitartifacts('probe', '--weights', weights, '--images', 'photos', '--out', run, '--n_images', '4', '--epoch', '5'),
            'does not fit the store')                                 # 4 photos where the run probes 16 images
    assert tree(run / 'probes') == before
    from vitartifacts.store import ProbeStore
    assert ProbeStore(run).read('norms').shape[0] == 2                # epochs 0 and 1, readable


def test_a_run_folder_has_one_writer(tmp_path):
    runs = tmp_path / 'runs'
    first = subprocess.Popen(command() + ['train', *TINY, '--epochs', '400', '--analysis_freq', '0', '--runs_dir', str(runs),
                                          '--run_name', 'r', '--save_steps', '1'],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (runs / 'r' / 'checkpoints' / 'latest.pt').exists():
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, 'the first trainer wrote no checkpoint in 120 s'
            time.sleep(0.2)
        holder = f'pid {first.pid} on '
        refused(vitartifacts('train', *TINY, '--epochs', '400', '--runs_dir', runs, '--run_name', 'r', '--resume', 'true'),
                f'Run folder {runs / "r"} is in use by {holder}')
        refused(vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'r', '--overwrite', 'true'),
                'is in use by ' + holder)
        refused(vitartifacts('probe', '--weights', runs / 'r' / 'checkpoints' / 'latest.pt', '--images', 'photos',
                             '--out', runs / 'r', '--epoch', '7'), 'is in use by ' + holder)
    finally:
        first.kill(); first.wait()
    # SIGKILL leaves no stale lock: the run resumes at once
    res = vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'r', '--overwrite', 'true')
    assert res.returncode == 0, res.stderr


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    from vitartifacts.data import open_image
    grey = (np.linspace(0, 40000, 32 * 32).reshape(32, 32)).astype(np.uint16)   # a dark picture in 16 bits
    Image.fromarray(grey).save(tmp_path / 'g.png')
    rgb = np.asarray(open_image(tmp_path / 'g.png'))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    np.testing.assert_allclose(rgb[..., 0], grey / 257, atol=0.6)    # PIL's convert('RGB') gives 255 for 99% of it
    assert (rgb == 255).mean() < 0.01


def test_papermill_refuses_a_misspelt_parameter(tmp_path):
    out = tmp_path / 'out.ipynb'
    res = subprocess.run([str(Path(sys.executable).parent / 'papermill'), str(ROOT / 'nbs/workflows/train.ipynb'), str(out),
                          '-p', 'modle', 'gated', '-p', 'runs_dir', str(tmp_path / 'runs')],
                         env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0
    assert "Unknown setting 'modle'; did you mean 'model'?" in res.stderr + res.stdout
    assert not (tmp_path / 'runs').exists()                           # nothing trained


def test_report_replaces_only_a_report(tmp_path):
    from vitartifacts.testing import fabricate_run
    run = fabricate_run(tmp_path / 'v', 'vanilla', n_epochs=3, depth=2, n_heads=2, n_images=2, grid=(4, 4), patch_size=8, num_classes=3)
    mine = tmp_path / 'notes.html'; mine.write_text('<p>my notes</p>')
    refused(vitartifacts('report', run, '-o', mine), f'{mine} exists and is not a report this project wrote')
    assert mine.read_text() == '<p>my notes</p>'
    assert vitartifacts('report', run, '-o', tmp_path / 'r.html').returncode == 0
    assert vitartifacts('report', run, '-o', tmp_path / 'r.html').returncode == 0   # our own report is replaced


@pytest.mark.parametrize('args, message', [
    (['--lr', 'inf'], 'Setting lr must be a finite number, got inf.'),
    (['--smoothing', 'nan'], 'Setting smoothing must be a finite number, got nan.'),
])
def test_non_finite_settings_are_refused(args, message):
    refused(vitartifacts('train', *args), message)


def test_a_renamed_run_folder_resumes(tmp_path):
    runs = tmp_path / 'runs'
    assert vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'a').returncode == 0
    (runs / 'a').rename(runs / 'b')
    res = vitartifacts('train', *TINY, '--epochs', '2', '--runs_dir', runs, '--run_name', 'b', '--resume', 'true')
    assert res.returncode == 0, res.stderr
    assert [json.loads(l)['epoch'] for l in (runs / 'b' / 'metrics.jsonl').read_text().splitlines()] == [1, 2]


def test_unreadable_weights_never_advise_weights_only_false(tmp_path):
    import pickle
    bad = tmp_path / 'evil.pt'
    bad.write_bytes(pickle.dumps({'model': object()}))
    res = vitartifacts('probe', '--weights', bad, '--images', 'photos', '--out', tmp_path / 'p', '--model', 'vanilla')
    refused(res, f'Weights file {bad} could not be read')
    assert 'weights_only' not in res.stderr.replace('weights_only=True', '')


def test_a_run_killed_before_its_first_checkpoint_gets_advice_that_works(tmp_path):
    runs = tmp_path / 'runs'
    from vitartifacts.config import Config
    (runs / 'r' / 'checkpoints').mkdir(parents=True)
    Config(run_name='r', runs_dir=str(runs)).save(runs / 'r' / 'config.yaml')     # what a run killed at once leaves
    for extra in ([], ['--resume', 'true']):
        res = vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'r', *extra)
        refused(res, 'stopped before its first checkpoint', 'overwrite=True')
    res = vitartifacts('train', *TINY, '--epochs', '1', '--runs_dir', runs, '--run_name', 'r', '--overwrite', 'true')
    assert res.returncode == 0, res.stderr                                        # and the advice works


@pytest.mark.parametrize('args, message', [
    (['--n_images', '0'], 'n_images=0 must be at least 1'),
    (['--img_size', '100000'], 'img_size=100000 must be from 8 to 4096 pixels'),
])
def test_probe_refuses_impossible_sizes(tmp_path, args, message):
    from vitartifacts.models import create_model
    from safetensors.torch import save_file
    save_file(create_model('vanilla', 'tiny', img_size=32, patch_size=8).state_dict(), tmp_path / 'w.safetensors')
    refused(vitartifacts('probe', '--weights', tmp_path / 'w.safetensors', '--images', 'photos', '--out', tmp_path / 'p', *args), message)


def test_probe_names_a_corrupt_image(tmp_path):
    from vitartifacts.models import create_model
    from safetensors.torch import save_file
    save_file(create_model('vanilla', 'tiny', img_size=32, patch_size=8).state_dict(), tmp_path / 'w.safetensors')
    (tmp_path / 'imgs').mkdir(); Image.new('RGB', (32, 32)).save(tmp_path / 'imgs' / 'ok.png')
    (tmp_path / 'imgs' / 'bad.jpg').write_bytes(b'\xff\xd8\xff not really')
    refused(vitartifacts('probe', '--weights', tmp_path / 'w.safetensors', '--images', tmp_path / 'imgs', '--out', tmp_path / 'p'),
            f"{tmp_path / 'imgs' / 'bad.jpg'} is not a readable image")


def test_huge_img_size_is_refused_before_any_allocation():
    refused(vitartifacts('train', '--img_size', '100000', '--patch_size', '16'), 'Setting img_size must be at most 4096 pixels')


def test_report_names_a_damaged_probe_epoch(tmp_path):
    from vitartifacts.testing import fabricate_run
    run = fabricate_run(tmp_path / 'v', 'vanilla', n_epochs=3, depth=2, n_heads=2, n_images=2, grid=(4, 4), patch_size=8, num_classes=3)
    last = sorted((run / 'probes').glob('epoch_*.npz'))[-1]
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2])     # a copy that stopped half-way
    refused(vitartifacts('report', run, '-o', tmp_path / 'r.html'), f'Probe epoch file {last} is damaged')
    assert not (tmp_path / 'r.html').exists()


def test_resuming_a_checkpoint_of_another_variant_is_one_sentence(tmp_path):
    runs = tmp_path / 'runs'
    for name, model in (('r', 'vanilla'), ('g', 'register')):
        res = vitartifacts('train', *TINY, '--epochs', '1', '--analysis_freq', '0', '--model', model, '--runs_dir', runs, '--run_name', name)
        assert res.returncode == 0, res.stderr
    shutil.copyfile(runs / 'g' / 'checkpoints' / 'latest.pt', runs / 'r' / 'checkpoints' / 'latest.pt')
    before = tree(runs / 'r')
    refused(vitartifacts('train', *TINY, '--epochs', '2', '--analysis_freq', '0', '--runs_dir', runs, '--run_name', 'r', '--resume', 'true'),
            'holds a model that does not fit this run', 'reg_token', "put back the run's own latest.pt")
    assert tree(runs / 'r') == before                       # config.yaml too: a refused resume changes nothing


DISK_FULL = r'''
import hashlib, json, os, subprocess, sys
from pathlib import Path
cmd, small = json.loads(sys.argv[1]), Path(sys.argv[2])
small.mkdir(parents=True, exist_ok=True)
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', str(small)], check=True)
def run(*a): return subprocess.run(cmd + list(a), capture_output=True, text=True, timeout=300)
first = run('--epochs', '1', '--runs_dir', str(small), '--run_name', 'r')
ckpt = small / 'r' / 'checkpoints' / 'latest.pt'
digest = hashlib.sha256(ckpt.read_bytes()).hexdigest() if ckpt.exists() else None
st = os.statvfs(small)
(small / 'filler').write_bytes(b'\0' * max(0, st.f_bavail * st.f_frsize - ckpt.stat().st_size // 2))
second = run('--epochs', '2', '--runs_dir', str(small), '--run_name', 'r', '--resume', 'true')
print(json.dumps(dict(first=[first.returncode, first.stderr[-2000:]], second=[second.returncode, second.stderr],
                      kept=digest is not None and hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest,
                      temps=[str(p) for p in small.rglob('*.tmp')], folder=str(small))))
'''


def test_a_full_disk_is_one_sentence_and_keeps_the_last_checkpoint(tmp_path):
    "A run folder on a 32 MB file system that fills during a checkpoint: one sentence, the previous checkpoint whole."
    if subprocess.run(['unshare', '-Urm', 'true'], capture_output=True).returncode != 0:
        pytest.skip('needs a private mount namespace (unshare -Urm) for a small file system')
    cmd = command() + ['train', *TINY]
    res = subprocess.run(['unshare', '-Urm', sys.executable, '-c', DISK_FULL, json.dumps(cmd), str(tmp_path / 'small')],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.splitlines()[-1])
    assert out['first'][0] == 0, out['first']
    code, err = out['second']
    assert code == 1 and 'Traceback' not in err, (code, err)
    last = err.strip().splitlines()[-1]          # the lines above it are the epoch's progress bar
    assert last.startswith(f"vitartifacts train: No space left on {out['folder']}"), err
    assert out['kept'] and out['temps'] == [], out


def test_weights_of_another_timm_architecture_name_it(tmp_path):
    import timm
    from safetensors.torch import save_file
    save_file(timm.create_model('vit_tiny_patch16_224', num_classes=10, img_size=32).state_dict(), tmp_path / 'w.safetensors')
    (tmp_path / 'imgs').mkdir(); Image.new('RGB', (32, 32)).save(tmp_path / 'imgs' / 'ok.png')
    res = vitartifacts('probe', '--weights', tmp_path / 'w.safetensors', '--model', 'vit_small_patch16_224', '--img_size', '32',
                       '--images', tmp_path / 'imgs', '--out', tmp_path / 'p')
    refused(res, f"Weights file {tmp_path / 'w.safetensors'} does not fit timm's vit_small_patch16_224: mismatched", '--model')
    assert 'strict=False' not in res.stderr and not (tmp_path / 'p').exists()


def test_a_symlink_loop_in_an_image_folder_is_named(tmp_path):
    from vitartifacts.models import create_model
    from safetensors.torch import save_file
    save_file(create_model('vanilla', 'tiny', img_size=32, patch_size=8).state_dict(), tmp_path / 'w.safetensors')
    (tmp_path / 'imgs' / 'cats').mkdir(parents=True); Image.new('RGB', (32, 32)).save(tmp_path / 'imgs' / 'cats' / 'ok.png')
    (tmp_path / 'imgs' / 'cats' / 'again').symlink_to('..')
    refused(vitartifacts('probe', '--weights', tmp_path / 'w.safetensors', '--images', tmp_path / 'imgs', '--out', tmp_path / 'p'),
            f"{tmp_path / 'imgs' / 'cats' / 'again'} is a symbolic link to {tmp_path / 'imgs'}", 'a loop')
    # the training data's scan too (prepare-data reads the same folders)
    root = image_root(tmp_path / 'in100'); (root / 'train' / 'a' / 'loop').symlink_to(root / 'train')
    refused(vitartifacts('prepare-data', root, '--out', tmp_path / 'cache', '--img_size', '32'),
            f"{root / 'train' / 'a' / 'loop'} is a symbolic link to {root / 'train'}")
