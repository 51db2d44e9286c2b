"""What every bench script shares: the environment header and the `--out FILE` JSON file.

A script in bench/ imports it as `from _common import ...`: run as `python bench/NAME.py`, Python puts the script's
own folder first on the import path, so no path juggling is needed (the package itself is imported as installed).

    env = environment(device)            # date, command line, device, CPU/GPU name, versions, load average
    print(header(env))                   # the same as a few readable lines
    ...
    finish(env)                          # adds the load average at the end and the seconds taken
                                         # (or print(footer(env)): finish, as one closing line)
    write_json(args.out, dict(env=env, results=...))   # atomic: a temporary file beside it, then os.replace
"""
from __future__ import annotations

import datetime, importlib.metadata, json, os, platform, shlex, sys, tempfile, time
from pathlib import Path

# distribution names for the modules whose import name differs
_DIST = {'PIL': 'pillow'}
_STARTED: dict[int, float] = {}   # id(env) -> when `environment` made it


def cpu_name() -> str:
    "The CPU's model name (from /proc/cpuinfo where there is one)."
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def version(name: str) -> str | None:
    """The version of a package: the module's `__version__` when it is already imported (torch's carries the CUDA
    build, e.g. 2.14.1+cu130), else the installed distribution's, without importing it; None when not installed."""
    mod = sys.modules.get(name)
    if mod is not None and isinstance(getattr(mod, '__version__', None), str): return mod.__version__
    try: return importlib.metadata.version(_DIST.get(name, name))
    except importlib.metadata.PackageNotFoundError: return None


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(device=None, packages=(), **extra) -> dict:
    """Where and how a benchmark runs, as one flat dict.

    Keys: date (ISO, local time), command (the exact command line, with OMP_NUM_THREADS when set), python, torch, timm,
    numpy and the versions of `packages` (keyed by distribution name, e.g. 'pillow' for PIL), device (as given, or
    None), gpu (the CUDA device's name when torch is imported and a GPU is visible), cpu (model name), machine,
    cores (usable by this process), cpus (in the machine), torch_threads (when torch is imported), load_average
    (1, 5, 15 minutes), then `extra`."""
    omp = os.environ.get('OMP_NUM_THREADS')
    command = shlex.join([os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else
                          os.path.basename(sys.executable)] + sys.argv)
    env = dict(date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
               command=(f'OMP_NUM_THREADS={omp} ' if omp else '') + command,
               python=platform.python_version())
    for name in ('torch', 'timm', 'numpy', *packages): env[_DIST.get(name, name)] = version(name)
    torch = sys.modules.get('torch')
    dev = None if device is None else str(device)
    env['device'] = dev
    env['gpu'] = None
    if torch is not None:
        try:
            if dev is not None and dev.startswith('cuda'): env['gpu'] = torch.cuda.get_device_name(torch.device(dev))
            elif torch.cuda.is_available(): env['gpu'] = torch.cuda.get_device_name()
        except Exception as e: env['gpu'] = f'unavailable ({type(e).__name__})'
    env.update(cpu=cpu_name(), machine=platform.machine(), cores=len(os.sched_getaffinity(0)), cpus=os.cpu_count())
    if torch is not None: env['torch_threads'] = torch.get_num_threads()
    env['load_average'] = _load()
    env.update(extra)
    _STARTED[id(env)] = time.time()
    return env


def finish(env: dict) -> dict:
    "Adds `load_average_end` and `seconds` (since `environment` made `env`) to `env`; returns it."
    env['load_average_end'] = _load()
    if id(env) in _STARTED: env['seconds'] = round(time.time() - _STARTED[id(env)], 1)
    return env


def header(env: dict, prefix: str = '') -> str:
    "The environment as three short lines (each starting with `prefix`, e.g. '# ' under a markdown table)."
    keys = list(env)
    vkeys = keys[keys.index('python'):keys.index('device')]          # python, torch, timm, numpy, the packages
    versions = ', '.join(f'{k} {env[k]}' for k in vkeys if env[k] is not None)
    dev = env.get('device') or 'cpu'
    where = f"device {dev}" + (f" ({env['gpu']})" if env.get('gpu') and dev.startswith('cuda') else '')
    where += f"; CPU {env['cpu']}, {env['cores']} cores usable of {env['cpus']}"
    if env.get('gpu') and not dev.startswith('cuda'): where += f"; GPU present: {env['gpu']}"
    if 'torch_threads' in env: where += f"; torch threads {env['torch_threads']}"
    load = f"load average {' '.join(map(str, env['load_average']))}"
    if 'load_average_end' in env: load += f" -> {' '.join(map(str, env['load_average_end']))}"
    lines = [f"{env['date']}  {env['command']}", where, f"{versions}; {load}"]
    return '\n'.join(prefix + l for l in lines)


def footer(env: dict, prefix: str = '') -> str:
    "One closing line for a header printed at the start: the load average then and now, and the seconds taken."
    finish(env)
    return (f"{prefix}load average {' '.join(map(str, env['load_average']))} -> "
            f"{' '.join(map(str, env['load_average_end']))}; {env.get('seconds', '?')} s")


def add_out_argument(parser, *aliases: str, default: str | None = None, help: str = '') -> None:
    "`--out FILE` (and any alias, e.g. '--json'): where to write the results as JSON."
    parser.add_argument('--out', *aliases, dest='out', default=default, metavar='FILE',
                        help=help or 'also write the results (with the environment) to this JSON file'
                                     + (f' (default: {default})' if default else ''))


def write_json(path, data) -> Path | None:
    """Writes `data` as indented JSON to `path` atomically (a temporary file in the same folder, then os.replace), so
    a reader, or a run cut short, never sees half a file. Makes the folder; does nothing when `path` is empty."""
    if not path: return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            umask = os.umask(0); os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)   # as an ordinary new file would be (mkstemp makes it private)
            json.dump(data, f, indent=1, default=_jsonable)
            f.write('\n')
        os.replace(tmp, path)
    except BaseException:
        try: os.unlink(tmp)
        except OSError: pass
        raise
    return path


def _jsonable(x):
    "Fallback for values json does not know: numpy scalars and arrays, paths, torch dtypes and devices."
    if hasattr(x, 'tolist'): return x.tolist()
    return str(x)
