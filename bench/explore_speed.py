"""Time one slider update of the explorer on ViT-S-sized data.

A made-up ViT-S run (vitartifacts.testing.fabricate_run: K = 64 probe images, 12 blocks, 6 heads,
197 tokens, 81 probe epochs, stored as training stores it) is opened in `Explorer`, the
notebook's widget; then sliders are moved at random (epoch, layer, head or image, one at a time,
as a user does) and the time from setting the slider's value to every panel having been
recomputed and pushed (FigureWidget.batch_update) is measured. Target: median <= 50 ms.

    .venv/bin/python bench/explore_speed.py                 # fabricates the run once under bench/out/
    .venv/bin/python bench/explore_speed.py --moves 300 --repeats 5 [--out FILE]

Also reported: opening the run (first time: every detector on every layer and epoch; then from
the run's caches: analysis' outlier tables and the views' sink shares), and moves to epochs whose
attention maps are not in memory ("cold").
"""
import argparse, random, statistics, sys, time
from pathlib import Path

import numpy as np

from _common import add_out_argument, environment, footer, header, write_json


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
    add_out_argument(ap)
    args = ap.parse_args(argv)
    from vitartifacts.testing import fabricate_run
    from vitartifacts.views import RunView
    from vitartifacts.widgets import Explorer
    import plotly, ipywidgets, torch   # imported here so that the header records the loaded versions
    env = environment('cpu', packages=('plotly', 'ipywidgets', 'anywidget'))
    print(header(env), flush=True)
    res = dict(run=args.run, moves=args.moves, repeats=args.repeats)
    run_dir = Path(args.run)
    if not (run_dir / 'probes' / 'index.json').exists():
        t = time.perf_counter()
        fabricate_run(run_dir, 'vanilla')                # ViT-S defaults: 81 epochs, 12 blocks, 6 heads, K = 64, 14 x 14
        print(f'fabricated {run_dir} in {time.perf_counter() - t:.1f} s')
    first = not ((run_dir / '.views_cache.npz').exists() and (run_dir / '.analysis_cache').is_dir())
    t = time.perf_counter(); run = RunView(run_dir); t_open = time.perf_counter() - t
    print(f"opened {run} in {t_open:.1f} s ({'first time: every detector on every layer and epoch' if first else 'summaries from the caches'})")
    res['open_s'], res['open_first_time'] = t_open, first
    if first:
        t = time.perf_counter(); run = RunView(run_dir); res['open_again_s'] = time.perf_counter() - t
        print(f"opened again (from the cache) in {res['open_again_s']:.2f} s")
    t = time.perf_counter(); run.preload(); res['preload_s'] = time.perf_counter() - t
    print(f"attention maps of all {len(run.epochs)} epochs read in {res['preload_s']:.2f} s")
    t = time.perf_counter(); ex = Explorer(run); res['explorer_build_s'] = time.perf_counter() - t
    print(f"explorer built in {res['explorer_build_s']:.2f} s")
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
    res.update(median_s=statistics.median(medians), repeat_medians_s=medians, p90_s=float(np.percentile(allt, 90)),
               max_s=max(allt), cold_median_s=statistics.median(cold) if cold else None, cold_max_s=max(cold) if cold else None)
    print(footer(env))
    write_json(args.out, dict(env=env, results=res))
    return statistics.median(medians)


if __name__ == '__main__':
    sys.exit(0 if main() <= 0.050 else 1)
