"""Sweeps run as a user runs them: the installed `vitartifacts sweep` and `vitartifacts results`, the submitit path
through submitit's local executor, and the sweep notebook under papermill. Every run is the tiny model on the embedded
in-memory data, one epoch."""
import dataclasses, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
BASE = dict(data_fn='vitartifacts.testing:memory_data', size='tiny', img_size=32, patch_size=8, batch_size=32, epochs=1,
            num_workers=0, analysis_freq=1, probe_size=8, wandb_mode='disabled', save_steps=4)


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


def vitartifacts(*args, timeout=900):
    return subprocess.run(command() + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout)


def write_spec(path, **spec):
    path.write_text(yaml.safe_dump({'base': BASE, **spec}))
    return path


def states(folder, *args):
    res = vitartifacts('sweep', folder, '--status', *args)
    assert res.returncode == 0, res.stderr
    return {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[:-1]}


@pytest.fixture(scope='module')
def grid_sweep(tmp_path_factory):
    """A 2 x 2 grid over two seeds (8 runs, two at a time), stopped with Ctrl-C once a point is done and others are under
    way or waiting, then run again to the end."""
    d = tmp_path_factory.mktemp('sweep')
    spec = write_spec(d / 'grid.yaml', name='grid', grid=dict(model=['vanilla', 'register'], patch_size=[4, 8]),
                      seeds=[0, 1], baseline=dict(model='vanilla', patch_size=8))
    folder = d / 'runs' / 'grid'
    first = subprocess.Popen(command() + ['sweep', str(spec), '--runs_dir', str(d / 'runs'), '--gpus', '0,1'], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 600 and first.poll() is None and not list(folder.glob('*/checkpoints/final.pt')):
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGINT)                         # Ctrl-C in the terminal: the sweep and its points
    out1 = first.communicate(timeout=300)[0]
    before = states(folder)
    second = vitartifacts('sweep', spec, '--runs_dir', d / 'runs', '--gpus', '0,1')
    return dict(folder=folder, spec=spec, first=(first.returncode, out1), before=before, second=second)


def test_a_grid_sweep_runs_every_point_and_goes_on_after_ctrl_c(grid_sweep):
    code, out = grid_sweep['first']
    assert code == 130 and 'interrupted' in out, out[-2000:]
    before = grid_sweep['before']
    assert 'done' in before.values() and set(before.values()) - {'done'} <= {'partial', 'pending'}, before   # no lock left
    n_done = sum(s == 'done' for s in before.values())
    assert n_done < 8
    res = grid_sweep['second']
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"8 points, {n_done} done or running, {8 - n_done} to run" in res.stdout
    assert set(states(grid_sweep['folder']).values()) == {'done'}
    # each point is an ordinary run with its executed notebook
    run = grid_sweep['folder'] / 'model=register+patch_size=4+seed=1'
    assert (run / 'train.ipynb').exists() and (run / 'probes' / 'index.json').exists()
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert (cfg['model'], cfg['patch_size'], cfg['seed']) == ('register', 4, 1)


def test_an_interrupted_point_resumes_from_its_checkpoint(tmp_path):
    "A point with a checkpoint but not all its epochs (here: its first epoch trained by hand) is resumed, not restarted."
    from vitartifacts.sweep import load_sweep, prepare_sweep
    spec = write_spec(tmp_path / 'r.yaml', name='r', points=[dict(epochs=2)])
    sweep = load_sweep(spec, str(tmp_path / 'runs'))
    prepare_sweep(sweep)                                         # the sweep folder, as a first `vitartifacts sweep` makes it
    point = sweep.points[0]
    (tmp_path / 'one.yaml').write_text(yaml.safe_dump({**dataclasses.asdict(point.cfg), 'epochs': 1}))
    first = vitartifacts('train', '--config', tmp_path / 'one.yaml')
    assert first.returncode == 0, first.stderr[-2000:]
    assert states(spec, '--runs_dir', tmp_path / 'runs') == {point.name: 'partial'}
    res = vitartifacts('sweep', spec, '--runs_dir', tmp_path / 'runs')
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f'{point.name} (partial)' in (point.run_dir.parent / 'logs' / f'{point.name}.log').read_text()
    lines = [json.loads(l) for l in (point.run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == [1, 2]                 # epoch 1 kept, epoch 2 trained on from the checkpoint


def test_results_table_has_intervals_around_the_means(grid_sweep):
    res = vitartifacts('results', grid_sweep['folder'])
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(grid_sweep['folder'] / 'results.csv', index_col=0)
    assert list(table.index) == ['model=vanilla+patch_size=4', 'model=vanilla+patch_size=8',
                                 'model=register+patch_size=4', 'model=register+patch_size=8']
    assert (table.seeds == 2).all() and (table.interval_over == 'seeds').all()
    assert ((table.top1_lo <= table.top1) & (table.top1 <= table.top1_hi)).all()
    for setting, row in table.iterrows():     # the mean of the two seeds' final top-1
        accs = [json.loads((grid_sweep['folder'] / f'{setting}+seed={s}' / 'metrics.jsonl').read_text().splitlines()[-1])['val_acc1']
                for s in (0, 1)]
        assert row.top1 == pytest.approx(sum(accs) / 2)
    base = table.loc['model=vanilla+patch_size=8']
    assert (base['diff'], base.diff_lo, base.diff_hi) == (0, 0, 0)
    assert table.drop(index='model=vanilla+patch_size=8')['diff'].tolist() == pytest.approx(
        (table.top1 - base.top1).drop(index='model=vanilla+patch_size=8').tolist())
    assert table.outlier_ratio.notna().all() and table.max_norm_ratio.notna().all()
    assert '| model=register+patch_size=4' in res.stdout and 'bootstrap' in res.stdout


def test_bad_specs_fail_before_any_run(tmp_path):
    cases = [(dict(grid=dict(modle=['gated'])), "grid names 'modle', which is not a setting; did you mean 'model'?"),
             (dict(grid=dict(patch_size=[])), 'grid setting patch_size has no values'),
             (dict(grid=dict(patch_size=[5])), 'point patch_size=5+seed=0: Setting img_size=32 is not divisible by patch_size=5'),
             (dict(points=[dict(lr=0.1), dict(lr=0.1)]), 'two points are both named lr=0.1+seed=0'),
             (dict(grid=dict(model=['vanilla']), colour='red'), "unknown key 'colour'")]
    for i, (spec, message) in enumerate(cases):
        path = write_spec(tmp_path / f'bad{i}.yaml', **spec)
        res = vitartifacts('sweep', path, '--runs_dir', tmp_path / 'runs')
        assert res.returncode == 2 and res.stderr.count('\n') == 1 and 'Traceback' not in res.stderr, res.stderr
        assert message in res.stderr and str(path) in res.stderr, res.stderr
    assert not (tmp_path / 'runs').exists()


def test_a_failed_point_is_reported_and_the_rest_go_on(tmp_path):
    spec = write_spec(tmp_path / 'f.yaml', name='f', points=[dict(data_fn='vitartifacts.testing:no_such_data'), dict()])
    res = vitartifacts('sweep', spec, '--runs_dir', tmp_path / 'runs')
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr
    assert '1 of 2 points failed (data_fn=vitartifacts.testing-no_such_data+seed=0)' in res.stderr
    st = states(tmp_path / 'runs' / 'f')
    assert st == {'data_fn=vitartifacts.testing-no_such_data+seed=0': 'failed', 'seed=0': 'done'}, st
    log = tmp_path / 'runs' / 'f' / 'logs' / 'data_fn=vitartifacts.testing-no_such_data+seed=0.log'
    assert 'no_such_data' in log.read_text()


def test_submitit_local_executor_runs_each_point_as_a_job(tmp_path):
    "The submitit code path without Slurm; one seed per setting, so the results' intervals are over test images."
    spec = write_spec(tmp_path / 's.yaml', name='jobs', grid=dict(model=['vanilla', 'register']))
    res = vitartifacts('sweep', spec, '--runs_dir', tmp_path / 'runs', '--executor', 'submitit-local')
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folder = tmp_path / 'runs' / 'jobs'
    jobs = json.loads((folder / 'jobs.json').read_text())
    assert sorted(jobs) == ['model=register+seed=0', 'model=vanilla+seed=0']
    assert set(states(folder).values()) == {'done'}
    assert len(list((folder / 'submitit').glob('*/*_result.pkl'))) == 2     # submitit's own record of each job
    res = vitartifacts('results', folder)
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(folder / 'results.csv', index_col=0)
    assert (table.interval_over == 'images').all() and (table.seeds == 1).all()
    assert ((table.top1_lo <= table.top1) & (table.top1 <= table.top1_hi)).all() and (table.top1_hi > table.top1_lo).all()
    # the sweep notebook under papermill reads the finished sweep: nothing left to run, the same table
    out = tmp_path / 'sweep.ipynb'
    nb = subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs/workflows/sweep.ipynb'), str(out),
                         '-p', 'spec', str(folder)], env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert nb.returncode == 0, nb.stderr[-3000:]
    text = out.read_text()
    assert '2 points, 2 done or running, 0 to run' in text and '| model=register' in text
    assert text.count('application/vnd.plotly.v1+json') >= 3


def test_slurm_without_sbatch_is_one_sentence(tmp_path):
    spec = write_spec(tmp_path / 's.yaml', name='s', grid=dict(model=['vanilla']))
    env = dict(ENV, PATH=str(Path(sys.executable).parent) + os.pathsep + '/usr/bin:/bin')
    res = subprocess.run(command() + ['sweep', str(spec), '--runs_dir', str(tmp_path / 'runs'), '--executor', 'slurm'],
                         env=env, capture_output=True, text=True, timeout=300)
    if shutil.which('sbatch', path=env['PATH']): pytest.skip('Slurm is installed here')
    assert res.returncode == 2 and "needs Slurm's sbatch on PATH" in res.stderr and 'Traceback' not in res.stderr, res.stderr
    assert not (tmp_path / 'runs').exists()
