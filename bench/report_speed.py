"""Time to write the HTML report of three made-up ViT-S runs (vanilla, 4 registers, gated; 81 probe epochs of 64 images,
as training stores them), the first time (every summary computed) and again (the views' and the analysis' caches read).
`--shape demo`: three runs of the demo's shape instead (tiny ViT, 6 blocks, 3 heads, 8 x 8 patches of 8 px, 4 probe
epochs of 64 images, as `make demo` trains them).

    python bench/report_speed.py [--shape vits|demo] [--repeats 2] [--work DIR] [--out FILE]
"""
import argparse, statistics, tempfile, time
from pathlib import Path

from _common import add_out_argument, environment, footer, header, write_json

SHAPES = dict(vits={}, demo=dict(n_epochs=4, epoch_step=2, depth=6, n_heads=3, n_images=64, grid=(8, 8), patch_size=8, num_classes=10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=2, help='writes after the first one')
    ap.add_argument('--work', default='')
    ap.add_argument('--shape', choices=list(SHAPES), default='vits')
    add_out_argument(ap)
    args = ap.parse_args()
    import torch   # its version and thread count go into the header
    from vitartifacts.testing import fabricate_run
    from vitartifacts.report import report_command
    env = environment('cpu', packages=('plotly',))
    print(header(env), flush=True)
    work = Path(args.work or tempfile.mkdtemp(prefix='report_speed_'))
    t0 = time.perf_counter()
    runs = [fabricate_run(work / v, v, **SHAPES[args.shape]) for v in ('vanilla', 'register', 'gated')]
    t_make = time.perf_counter() - t0
    print(f"three runs made in {t_make:.0f} s", flush=True)
    times, sizes = [], []
    for k in range(1 + args.repeats):
        t0 = time.perf_counter()
        out = report_command([str(r) for r in runs], str(work / 'report.html'))
        times.append(time.perf_counter() - t0); sizes.append(out.stat().st_size)
        print(f"write {k + 1}: {times[-1]:.1f} s, {sizes[-1] / 1e6:.2f} MB", flush=True)
    again = statistics.median(times[1:]) if args.repeats else None
    print(f"first {times[0]:.1f} s; again (median of {args.repeats}) " + (f"{again:.1f} s" if again is not None else '-'))
    print(footer(env))
    write_json(args.out, dict(env=env, shape=args.shape, report=str(out), runs_made_s=t_make, write_s=times, first_s=times[0], again_s=again,
                              size_mb=sizes[-1] / 1e6))


if __name__ == '__main__': main()
