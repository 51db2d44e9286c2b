"""How long a control move takes in the HTML report, in headless Chromium (Debian's `chromium`, driven by Playwright).

    python bench/report_browser_speed.py REPORT.html [--moves 30] [--controls epoch layer head image] [--seed 0] [--out FILE]

Loads the report (1400x1000 viewport, scrolled to the top), then moves each control in `--controls` `--moves` times to
random values and times each move from the input event until the page has drawn the next frame after the update (two
requestAnimationFrame callbacks). Prints the page-load time and, per control, the median, p90 and max of the moves.
Make a report of three ViT-S-sized runs with `python bench/report_speed.py`, which leaves it in its work folder, or of
three demo-shaped runs with `python bench/report_speed.py --shape demo`.
"""
import argparse, json, shutil, statistics, time
from pathlib import Path

from _common import add_out_argument, environment, finish, write_json

ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run']

MOVE_JS = """async ([id, value]) => {
  const el = document.getElementById(id), n0 = Number(document.body.dataset.updates);
  const t0 = performance.now();
  el.value = String(value); el.dispatchEvent(new Event('input'));
  while (Number(document.body.dataset.updates) === n0) await new Promise(r => requestAnimationFrame(r));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('report')
    ap.add_argument('--moves', type=int, default=30)
    ap.add_argument('--controls', nargs='+', default=['epoch', 'layer', 'head', 'image'])
    ap.add_argument('--seed', type=int, default=0)
    add_out_argument(ap)
    args = ap.parse_args()
    env = environment(packages=('playwright',))
    from playwright.sync_api import sync_playwright
    import random
    rng = random.Random(args.seed)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which('chromium') or '/usr/bin/chromium', args=ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        t0 = time.perf_counter()
        page.goto(Path(args.report).resolve().as_uri())
        page.wait_for_function('Number(document.body.dataset.updates) >= 1', timeout=120_000)
        load = time.perf_counter() - t0
        per = {}
        for control in args.controls:
            values = page.eval_on_selector(f'#{control}', "el => el.tagName === 'SELECT' ? [...el.options].map(o => o.value) : "
                                           "[...Array(Number(el.max) - Number(el.min) + 1).keys()].map(i => String(Number(el.min) + i))")
            current, times = page.eval_on_selector(f'#{control}', 'el => el.value'), []
            for _ in range(args.moves):
                value = rng.choice([v for v in values if v != current])
                times.append(page.evaluate(MOVE_JS, [control, value])); current = value
            times.sort()
            per[control] = dict(moves=len(times), median_ms=statistics.median(times), p90_ms=times[int(0.9 * (len(times) - 1))], max_ms=times[-1])
            print(control, json.dumps(per[control]), flush=True)
        browser.close()
    res = dict(report=args.report, load_s=load, controls=per, env=finish(env))
    print(json.dumps(res))
    write_json(args.out, res)


if __name__ == '__main__': main()
