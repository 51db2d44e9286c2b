"""Time to write the HTML report of three made-up ViT-S runs (vanilla, 4 registers, gated; 81 probe epochs of 64 images,
as training stores them), the first time (every summary computed) and again (the views' and the analysis' caches read).

    python bench/report_speed.py [--repeats 2] [--work DIR]
"""
import argparse, os, platform, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=2, help='writes after the first one')
    ap.add_argument('--work', default='')
    args = ap.parse_args()
    import torch
    from vitartifacts.views import fabricate_run
    from vitartifacts.report import report_command
    work = Path(args.work or tempfile.mkdtemp(prefix='report_speed_'))
    t0 = time.perf_counter()
    runs = [fabricate_run(work / v, v) for v in ('vanilla', 'register', 'gated')]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}; three runs made in {time.perf_counter() - t0:.0f} s", flush=True)
    times = []
    for k in range(1 + args.repeats):
        t0 = time.perf_counter()
        out = report_command([str(r) for r in runs], str(work / 'report.html'))
        times.append(time.perf_counter() - t0)
        print(f"write {k + 1}: {times[-1]:.1f} s, {out.stat().st_size / 1e6:.2f} MB", flush=True)
    print(f"first {times[0]:.1f} s; again (median of {args.repeats}) {statistics.median(times[1:]):.1f} s; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == '__main__': main()
