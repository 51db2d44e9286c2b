"""Do high-norm tokens emerge in a ViT trained from scratch on this CPU? A search over candidate settings.

Each candidate is a synthetic dataset (`vitartifacts.synthetic`: the demo's shapes, or a sparse task with small objects
on one flat background: `sparse`, `count`, `same`) with a training recipe, trained with the installed `vitartifacts
train` command (one run per setting, variant and seed; each at most about 20 minutes on 2 cores) and probed every few
epochs on 64 validation images. Per probe epoch and layer it records, with the default detectors unchanged (bimodal,
and mean + 3 sigma):

- the outlier ratio of the patch tokens, and the outliers' norm over the median patch norm;
- the largest patch norm over the median;
- where the bimodal detector's outliers sit: the share on background patches (a patch is an object patch when one of
  its pixels is more than 40 grey levels from the image's median colour; the backgrounds are flat);
- the attention share each prefix token (CLS, registers) and the patches receive;
- with registers, the largest register norm over the median patch norm (median over the images).

A run shows emergence as defined here when, with no planting of any kind: at the first probe (epoch 0) no layer has
outliers, and at the last probe some layer past the first third holds bimodal outliers at 0.5-10% of the patch tokens,
at least 4x the median norm, mostly (over half) on background patches. For those runs the last epoch's tokens go through
the two linear probes of `vitartifacts.analysis`: the patch position (local information, `position_probe`) and the
image's class (global information, `class_probe`), each scored on outlier and on normal tokens.

    .venv/bin/python bench/emergence.py --list                                   # the candidate settings
    .venv/bin/python bench/emergence.py --settings count sparse --seeds 0        # vanilla only: the screening
    .venv/bin/python bench/emergence.py --settings count --variants vanilla register gated --seeds 0 1 2
    .venv/bin/python bench/emergence.py --table                                  # the table of every run so far

Runs live in `--runs_dir` (default runs/emergence); running again skips the finished runs and resumes the interrupted
ones. The table goes to bench/results/emergence_cpu.json and is printed as markdown.
"""
from __future__ import annotations

import argparse, json, math, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch

from vitartifacts.sweep import EPOCH_LINE
from _common import environment, finish, header, write_json

# common to every candidate: the tiny ViT (6 blocks, width 96, 3 heads, CLS token) at 64 px with patches of 8 (8 x 8
# patches), LAMB with the DeiT III schedule, probes every `analysis_freq` epochs on 64 validation images
COMMON = dict(size='tiny', img_size=64, patch_size=8, batch_size=64, warmup_epochs=2, probe_size=64, probe_weights=True,
              save_freq=0, log_freq=1000, wandb_mode='disabled', num_workers=1)
NO_MIX = dict(augment='none', mixup_alpha=0.0, cutmix_alpha=0.0)   # a crop or a mix would change a count or drop an object

SETTINGS = {
    # the demo's dataset and recipe, trained 8x longer: the baseline
    'demo-long': dict(preset='demo', train=dict(epochs=48, lr=1e-2, analysis_freq=8),
                      why='the demo as it is, for longer: large objects, the full DeiT III augmentation'),
    # one small object on a mostly empty image, a local label
    'sparse': dict(preset='sparse', train=dict(epochs=30, lr=1e-2, analysis_freq=5),
                   why='redundant background: one small object per image (radius 7-10% of the side)'),
    # the label is about the whole image
    'count': dict(preset='count', train=dict(epochs=30, lr=5e-3, analysis_freq=5, **NO_MIX),
                  why='global aggregation: count 1-5 small objects on one flat background'),
    'count-hi-lr': dict(preset='count', train=dict(epochs=30, lr=2e-2, analysis_freq=5, **NO_MIX),
                        why='the same, at 4x the learning rate (large updates are said to drive outlier features)'),
    # no ready-made sink: without a CLS token a head that wants to attend nowhere must pick a patch or a register
    'count-gap': dict(preset='count', train=dict(epochs=30, lr=5e-3, analysis_freq=5, class_token=False, **NO_MIX),
                      why='count, with no CLS token (global average pooling): no token but patches and registers to sink on'),
    # LayerScale at 1e-4 keeps every branch small at first; without it the residual stream can grow from the start
    'count-nols': dict(preset='count', train=dict(epochs=30, lr=5e-3, analysis_freq=5, layer_scale=0.0, **NO_MIX),
                       why='count, with LayerScale off (Bach et al. 2025: LayerScale changes where artifacts appear)'),
    'same': dict(preset='same', train=dict(epochs=16, lr=5e-3, analysis_freq=4, **NO_MIX),
                 why='a relation between distant patches: two small objects of the same shape or not'),
}
VARIANTS = dict(vanilla=dict(model='vanilla'), register=dict(model='register', n_registers=4), gated=dict(model='gated'))
OBJECT_LEVEL = 40          # grey levels from the image's median colour that make a pixel part of an object


def data_root(setting: str, cache_dir: str) -> Path:
    from vitartifacts.synthetic import synthetic_root
    preset = SETTINGS[setting]['preset']
    return synthetic_root(cache_dir, preset, seed=0, **(dict(image_size=COMMON['img_size']) if preset == 'demo' else {}))


def run_name(setting: str, variant: str, seed: int) -> str: return f'{setting}-{variant}-s{seed}'


def train_command(setting: str, variant: str, seed: int, runs_dir: Path, cache_dir: str, epochs: int | None = None) -> list[str] | None:
    "The `vitartifacts train` command line of one run; None when the run is finished."
    run_dir = runs_dir / run_name(setting, variant, seed)
    if (run_dir / 'checkpoints' / 'final.pt').exists(): return None
    settings = dict(COMMON, **SETTINGS[setting]['train'], **VARIANTS[variant], seed=seed, dataset='imagefolder',
                    data_path=str(data_root(setting, cache_dir)), cache_dir=cache_dir, runs_dir=str(runs_dir),
                    run_name=run_dir.name)
    if epochs: settings.update(epochs=epochs, analysis_freq=max(1, epochs // 2), warmup_epochs=min(settings['warmup_epochs'], epochs / 2))
    if (run_dir / 'checkpoints' / 'latest.pt').exists(): settings['resume'] = True
    elif (run_dir / 'config.yaml').exists(): settings['overwrite'] = True
    exe = Path(sys.executable).with_name('vitartifacts')
    cmd = [str(exe) if exe.exists() else 'vitartifacts', 'train']
    for k, v in settings.items(): cmd += [f'--{k}', str(v).lower() if isinstance(v, bool) else str(v)]
    return cmd


def train(setting: str, variant: str, seed: int, runs_dir: Path, cache_dir: str, epochs: int | None = None) -> float:
    "Train one run to its end (or resume it), echoing its epoch lines; return the seconds it took (0: it was done)."
    cmd = train_command(setting, variant, seed, runs_dir, cache_dir, epochs)
    if cmd is None: return 0.0
    log = runs_dir / 'logs' / f'{run_name(setting, variant, seed)}.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {run_name(setting, variant, seed)} ({SETTINGS[setting]['why']}); log {log}", flush=True)
    t0 = time.perf_counter()
    with open(log, 'a') as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line); f.flush()
            m = EPOCH_LINE.search(line.rstrip())
            if m: print('  ' + m.group(1), flush=True)
        proc.wait()
    if proc.returncode != 0: raise SystemExit(f"{run_name(setting, variant, seed)} failed (exit {proc.returncode}); see {log}.")
    return time.perf_counter() - t0


def object_patches(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    "Which patches show part of an object: [K, H, W, 3] uint8 images -> [K, N] bool (flat backgrounds make this exact)."
    x = images.astype(np.int16)
    med = np.median(x.reshape(len(x), -1, 3), axis=1)[:, None, None, :]
    obj = (np.abs(x - med).max(-1) > OBJECT_LEVEL)                                   # K, H, W
    K, H, W = obj.shape
    ph, pw = H // grid[0], W // grid[1]
    return obj[:, :grid[0] * ph, :grid[1] * pw].reshape(K, grid[0], ph, grid[1], pw).any((2, 4)).reshape(K, -1)


def info_probes(run_dir: Path, epoch: int, layer: int) -> dict:
    "Position (local) and class (global) probes of the patch tokens after block `layer` at `epoch`, outliers apart."
    from vitartifacts.analysis import information_over_epochs
    from vitartifacts.store import ProbeStore
    row = information_over_epochs(ProbeStore(run_dir), layer, 'bimodal', [epoch]).iloc[0]
    return {k: float(row[k]) for k in ('position_normal', 'position_outlier', 'position_chance', 'class_normal', 'class_outlier', 'class_chance')}


def analyse(run_dir: Path) -> dict:
    "Per probe epoch and layer, the figures listed above; and whether the run shows emergence."
    from vitartifacts.analysis import detect_outliers, patch_norms, sink_share
    from vitartifacts.runs import read_metrics
    from vitartifacts.store import ProbeStore
    store = ProbeStore(run_dir)
    layout, epochs = store.layout, store.epochs
    objects = object_patches(store.images(), layout.grid)                             # K, N
    rows = []
    for e in epochs:
        d = store.load(e, ['norms', 'attn_received'])
        pn = patch_norms(d['norms'], layout)                                           # L+1, K, N
        bim, sig = detect_outliers(d['norms'], layout, 'bimodal'), detect_outliers(d['norms'], layout, 'sigma')
        shares = sink_share(d['attn_received'], layout)
        received = d['attn_received'].mean(2)[..., layout.n_prefix:layout.n_tokens]      # depth, K, N: mean over heads
        for l in range(len(pn)):
            med = float(np.median(pn[l]))
            m, ms = bim.mask[l], sig.mask[l]
            top = received[l].argmax(-1) if l < len(received) else None                  # each image's most attended patch
            rows.append(dict(epoch=e, layer=l, bimodal=float(bim.ratio[l]), sigma=float(sig.ratio[l]),
                             outlier_norm_ratio=float(pn[l][m].mean() / med) if m.any() else math.nan,
                             max_median=float(pn[l].max() / med),
                             background_share=float((~objects[m]).mean()) if m.any() else math.nan,
                             sigma_background_share=float((~objects[ms]).mean()) if ms.any() else math.nan,
                             top_patch_background=float((~objects[np.arange(len(top)), top]).mean()) if top is not None else math.nan,
                             background_patches=float((~objects).mean()),
                             register_norm_ratio=(float(np.median(d['norms'][l][:, layout.register_indices].max(-1)) / med)
                                                  if layout.register_indices else math.nan),
                             **({f'share_{k}': float(v[l].mean()) for k, v in shares.items()} if l < len(d['attn_received']) else {})))
    depth = len(rows) // max(1, len(epochs)) - 1                                       # blocks (the last row: the final norm)
    last = [r for r in rows if r['epoch'] == epochs[-1] and r['layer'] < depth]
    first = [r for r in rows if r['epoch'] == epochs[0]]
    late = [r for r in last if r['layer'] >= math.ceil(depth / 3)]
    hits = [r for r in late if 0.005 <= r['bimodal'] <= 0.10 and r['outlier_norm_ratio'] >= 4 and r['background_share'] > 0.5]
    best = max(late, key=lambda r: (r['bimodal'] > 0, r['max_median']))
    metrics = read_metrics(run_dir)
    acc = [m['val_acc1'] for m in metrics if m.get('val_acc1') is not None]
    summary = dict(run=run_dir.name, epochs=epochs[-1], val_acc1=acc[-1] if acc else math.nan,
                   train_seconds=float(sum(m.get('seconds', 0) for m in metrics)),
                   images_per_s=float(np.median([m['images_per_s'] for m in metrics if 'images_per_s' in m] or [math.nan])),
                   clean_at_start=all(r['bimodal'] == 0 for r in first), emerged=bool(hits) and all(r['bimodal'] == 0 for r in first),
                   layer=best['layer'], bimodal=best['bimodal'], sigma=best['sigma'], outlier_norm_ratio=best['outlier_norm_ratio'],
                   max_median=best['max_median'], background_share=best['background_share'],
                   max_median_start=max(r['max_median'] for r in first if r['layer'] < depth),
                   sigma_background_share=best['sigma_background_share'], background_patches=best['background_patches'],
                   top_patch_share=max(r['share_top patch'] for r in late),
                   top_patch_background=max(late, key=lambda r: r['share_top patch'])['top_patch_background'],
                   share_cls=np.mean([r.get('share_cls', math.nan) for r in last]),
                   share_registers=np.mean([r.get('share_registers', math.nan) for r in last]),
                   register_norm_ratio=best['register_norm_ratio'])
    if hits:
        h = max(hits, key=lambda r: r['bimodal'])
        summary.update(info_probes(run_dir, epochs[-1], h['layer']))
    return dict(summary=summary, rows=rows)


def markdown(summaries: list[dict]) -> str:
    cols = ['run', 'epochs', 'val_acc1', 'train_seconds', 'images_per_s', 'clean_at_start', 'emerged', 'layer', 'bimodal', 'sigma',
            'outlier_norm_ratio', 'max_median', 'max_median_start', 'background_share', 'sigma_background_share',
            'background_patches', 'top_patch_share', 'top_patch_background', 'share_cls', 'share_registers', 'register_norm_ratio']
    fmt = lambda v: (f'{v:.3g}' if isinstance(v, float) and not math.isnan(v) else '-' if isinstance(v, float) else str(v))
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(s.get(c, math.nan)) for c in cols) + ' |' for s in summaries]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS), help='candidates to train (default: all)')
    parser.add_argument('--variants', nargs='+', default=['vanilla'], choices=list(VARIANTS), help='default: vanilla')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--runs_dir', default='runs/emergence', help='where the runs live (default: runs/emergence)')
    parser.add_argument('--cache_dir', default='~/.cache/vitartifacts', help='where the synthetic datasets are written')
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'emergence_cpu.json'))
    parser.add_argument('--epochs', type=int, help="every run's epochs instead of its setting's (a quick check of the script)")
    parser.add_argument('--list', action='store_true', help='print the candidate settings and stop')
    parser.add_argument('--table', action='store_true', help='analyse the finished runs in runs_dir only; train nothing')
    args = parser.parse_args()
    if args.list:
        for name, s in SETTINGS.items(): print(f"{name}: {s['why']}; dataset preset {s['preset']}; {s['train']}")
        return
    runs_dir = Path(args.runs_dir)
    env = environment('cpu', torch_threads=torch.get_num_threads())
    print(header(env))
    if not args.table:
        for setting in args.settings:
            for variant in args.variants:
                for seed in args.seeds:
                    train(setting, variant, seed, runs_dir, args.cache_dir, args.epochs)
    try: old = json.loads(Path(args.out).read_text())
    except (OSError, ValueError): old = {}
    results = {r['summary']['run']: r for r in old.get('results', [])}
    for run_dir in sorted(p for p in runs_dir.iterdir() if (p / 'checkpoints' / 'final.pt').exists()):
        r = analyse(run_dir)
        r['summary']['setting'] = run_dir.name.rsplit('-', 2)[0]
        results[run_dir.name] = r
    summaries = [r['summary'] for r in results.values()]
    print(markdown(summaries))
    finish(env)
    write_json(args.out, dict(env=env, settings={k: dict(v, common=COMMON) for k, v in SETTINGS.items()}, results=list(results.values())))
    print(f"table: {args.out}")


if __name__ == '__main__':
    main()
