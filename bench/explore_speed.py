"""Time one slider update of the explorer on ViT-S-sized data.

A made-up ViT-S run (vitartifacts.views.fabricate_run: K = 64 probe images, 12 blocks, 6 heads,
197 tokens, 81 probe epochs, stored as training stores it) is opened in `Explorer`, the
notebook's widget; then sliders are moved at random (epoch, layer, head or image, one at a time,
as a user does) and the time from setting the slider's value to every panel having been
recomputed and pushed (FigureWidget.batch_update) is measured. Target: median <= 50 ms.

    .venv/bin/python bench/explore_speed.py                 # fabricates the run once under bench/out/
    .venv/bin/python bench/explore_speed.py --moves 300 --repeats 5

Also reported: opening the run (first time: every detector on every layer and epoch; then from
the run's caches: analysis' outlier tables and the views' sink shares), and moves to epochs whose
attention maps are not in memory ("cold").
"""
import argparse, os, platform, random, statistics, sys, time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def moves(ex, n: int, rng: random.Random, cold: bool = False) -> list[float]:
    "Move one slider at a time to a new random value; seconds per move (value set -> all panels pushed)."
    run, out = ex.run, []
    sliders = ('epoch', 'layer', 'head', 'image')
    for _ in range(n):
        name = 'epoch' if cold else rng.choice(sliders)
        w = getattr(ex, name)
        values = [v for _, v in w.options] if hasattr(w, 'options') and name != 'image' else list(range(w.min, w.max + 1))
        new = rng.choice([v for v in values if v != w.value])
        if cold: run._attn.clear()                       # as if this epoch had never been looked at
        t = time.perf_counter()
        w.value = new                                    # the observer recomputes and pushes every panel
        out.append(time.perf_counter() - t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--run', default='bench/out/explore-vits-vanilla', help='where the made-up ViT-S run lives (made if missing)')
    ap.add_argument('--moves', type=int, default=200, help='slider moves per repeat')
    ap.add_argument('--repeats', type=int, default=5, help='repeats; the median of their medians is reported')
    ap.add_argument('--cold', type=int, default=40, help='epoch moves with the attention cache emptied first')
    args = ap.parse_args(argv)
    from vitartifacts.views import Explorer, RunView, fabricate_run
    import plotly, ipywidgets, torch
    run_dir = Path(args.run)
    if not (run_dir / 'probes' / 'index.json').exists():
        t = time.perf_counter()
        fabricate_run(run_dir, 'vanilla')                # ViT-S defaults: 81 epochs, 12 blocks, 6 heads, K = 64, 14 x 14
        print(f'fabricated {run_dir} in {time.perf_counter() - t:.1f} s')
    first = not ((run_dir / '.views_cache.npz').exists() and (run_dir / '.analysis_cache').is_dir())
    t = time.perf_counter(); run = RunView(run_dir); t_open = time.perf_counter() - t
    print(f"opened {run} in {t_open:.1f} s ({'first time: every detector on every layer and epoch' if first else 'summaries from the caches'})")
    if first:
        t = time.perf_counter(); run = RunView(run_dir); print(f'opened again (from the cache) in {time.perf_counter() - t:.2f} s')
    t = time.perf_counter(); run.preload(); print(f'attention maps of all {len(run.epochs)} epochs read in {time.perf_counter() - t:.2f} s')
    t = time.perf_counter(); ex = Explorer(run); print(f'explorer built in {time.perf_counter() - t:.2f} s')
    rng = random.Random(0)
    moves(ex, 20, rng)                                   # warm-up: first JPEG encodes, plotly validators
    medians, allt = [], []
    for r in range(args.repeats):
        ts = moves(ex, args.moves, rng)
        medians.append(statistics.median(ts)); allt += ts
        print(f'repeat {r + 1}: median {1e3 * medians[-1]:.1f} ms over {len(ts)} moves')
    cold = moves(ex, args.cold, rng, cold=True) if args.cold else []
    ms = lambda x: f'{1e3 * x:.1f} ms'
    print(f'\nslider update, all panels: median {ms(statistics.median(medians))} (median of {args.repeats} repeat medians), '
          f'p90 {ms(np.percentile(allt, 90))}, max {ms(max(allt))}')
    if cold: print(f'epoch moves to an epoch not in memory: median {ms(statistics.median(cold))}, max {ms(max(cold))}')
    print(f'device: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}, '
          f'numpy {np.__version__}, plotly {plotly.__version__}, ipywidgets {ipywidgets.__version__}, torch {torch.__version__}')
    return statistics.median(medians)


if __name__ == '__main__':
    sys.exit(0 if main() <= 0.050 else 1)
