"""What the training tests share: one-thread subprocesses, a kill in the middle of an epoch, and the check that two runs
ended exactly alike."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / 'nbs' / 'workflows' / 'train.ipynb'
# one thread: bit-exact comparisons need the same thread count in every run, and tiny models are fastest so
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(ROOT), WANDB_MODE='disabled')


def cli(*args):
    "The command line of `python -m vitartifacts.cli ARGS`."
    return [sys.executable, '-m', 'vitartifacts.cli', *map(str, args)]


def papermill_cli(out: Path, parameters: dict):
    "The command line that runs the training notebook under papermill into `out` with `parameters` (as YAML, types kept)."
    return [sys.executable, '-m', 'papermill', str(WORKFLOW), str(out), '-y', json.dumps(parameters), '--cwd', str(ROOT),
            '-k', 'python3', '--no-progress-bar']


def without_timing(lines):
    return [{k: v for k, v in l.items() if k not in ('seconds', 'images_per_s')} for l in lines]


def kill_mid_epoch(runs: dict, epoch: int, steps, timeout: float = 240) -> dict:
    """SIGKILL each training process of `runs` ({name: (Popen, run_dir)}) right after its `latest.json` says it saved
    at one of `steps` (steps into epoch `epoch`); return each run's progress in the `latest.pt` it left."""
    left, deadline = dict(runs), time.time() + timeout
    try:
        while left and time.time() < deadline:
            for name, (proc, run_dir) in list(left.items()):
                assert proc.poll() is None, f"the run {name} ended before it could be killed"
                try: at = json.loads((run_dir / 'checkpoints' / 'latest.json').read_text())
                except (FileNotFoundError, json.JSONDecodeError): at = {}
                if at.get('epoch') == epoch and at.get('step_in_epoch') in steps:
                    os.kill(proc.pid, signal.SIGKILL); proc.wait(); del left[name]
            time.sleep(0.005)
        assert not left, f"not killed within {timeout} s: {sorted(left)}"
    finally:
        for proc, _ in runs.values(): proc.kill(); proc.wait()
    progress = {}
    for name, (_, run_dir) in runs.items():
        assert not (run_dir / 'checkpoints' / 'final.pt').exists(), name
        progress[name] = torch.load(run_dir / 'checkpoints' / 'latest.pt', weights_only=True)['progress']
    return progress


def assert_same_run(a: Path, b: Path):
    "Runs `a` and `b` ended exactly alike: final weights, metrics (but their timing) and every array of every probe epoch."
    from safetensors.torch import load_file
    from vitartifacts.runs import read_metrics
    from vitartifacts.store import ProbeStore
    wa, wb = (load_file(r / 'checkpoints' / 'final.safetensors') for r in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa: assert torch.equal(wa[k], wb[k]), k
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    sa, sb = ProbeStore(a), ProbeStore(b)
    assert sa.epochs == sb.epochs and sa.epochs
    for e in sa.epochs:
        da, db = sa.load(e, raw=True), sb.load(e, raw=True)
        assert da.keys() == db.keys(), e
        for k in da:
            if k != 'time': assert (da[k] == db[k]).all(), (e, k)
