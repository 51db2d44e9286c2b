"""Does the batched pipeline (fast_data) train to the same accuracy as the PIL pipeline? (issue 6, correctness)

Trains the same tiny ViT on the embedded synthetic dataset (the demo preset: 10 classes, 1,600 train and 400 val JPEGs)
with the full DeiT III recipe twice per seed: once through the PIL path (`vitartifacts.data`: ImageFolder, per-image
RandomResizedCrop/flip/3-Augment/ColorJitter, timm Mixup/CutMix) and once through the fast path (`fast_data`: the uint8
cache written by `prepare-data`, `gpudata.BatchAugment` + `BatchMixup` a batch at a time). Everything else is the same
Config. Prints each run's top-1 curve, then the mean and spread of the final top-1 per path, the difference of the means,
and Welch's t statistic; "same within noise" means |t| < 2 (about a 5% two-sided test).

    python bench/fast_vs_pil.py --seeds 0 1 2 --epochs 15 --out bench/results/fast_vs_pil_cpu.json
"""
from __future__ import annotations
import argparse, json, math, statistics, tempfile, time
from dataclasses import replace
from pathlib import Path

from _common import add_out_argument, environment, finish, header, write_json


def welch_t(a: list[float], b: list[float]) -> float:
    "Welch's t statistic of mean(a) - mean(b) (nan with fewer than two values on a side)."
    if len(a) < 2 or len(b) < 2: return float('nan')
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (statistics.mean(a) - statistics.mean(b)) / se if se > 0 else float('inf') * (statistics.mean(a) - statistics.mean(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--epochs', type=int, default=15)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--threads', type=int, default=1, help='torch threads (one is fastest on a shared 2-core machine)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--work', default='', help='folder for the dataset, the cache and the runs (default: a new temporary one)')
    add_out_argument(ap, default='bench/out/fast_vs_pil.json', help='the results as JSON, rewritten after every run')
    ap.add_argument('--previous', nargs='*', default=[],
                    help='JSON outputs of earlier runs with the same settings (other seeds) to include in the summary')
    args = ap.parse_args()
    import torch, timm, torchvision   # timm, torchvision: their versions go into the header
    torch.set_num_threads(args.threads)
    env = environment(args.device, packages=('torchvision',))
    print(header(env), flush=True)
    from vitartifacts.config import demo_config
    from vitartifacts.data import synthetic_root
    from vitartifacts.gpudata import prepare_data_command
    from vitartifacts.runs import read_metrics
    from vitartifacts.train import train

    work = Path(args.work or tempfile.mkdtemp(prefix='fast_vs_pil_'))
    base = demo_config(epochs=args.epochs, lr=args.lr, analysis_freq=0, save_freq=0, wandb_mode='disabled',
                       probe_weights=False, device=args.device, num_workers=1, runs_dir=str(work / 'runs'))
    jpeg_root = synthetic_root(cache_dir=work / 'cache', preset='demo', image_size=base.img_size)
    t0 = time.perf_counter()
    cache_root = prepare_data_command(jpeg_root, work / 'uint8', img_size=base.img_size, num_workers=1)
    res = dict(command=env['command'], machine=env['cpu'], cpus=env['cpus'],
               torch=env['torch'], torchvision=env['torchvision'], timm=env['timm'], env=env,
               threads=args.threads, epochs=args.epochs, lr=args.lr, seeds=args.seeds, prepare_seconds=time.perf_counter() - t0,
               config={k: getattr(base, k) for k in ('size', 'img_size', 'patch_size', 'batch_size', 'warmup_epochs',
                                                      'mixup_alpha', 'cutmix_alpha', 'color_jitter', 'three_augment',
                                                      'drop_path_rate', 'smoothing')},
               runs=[])
    paths = dict(pil=dict(data_path=str(jpeg_root), dataset='imagefolder'),
                 fast=dict(data_path=str(cache_root), fast_data=True))
    for seed in args.seeds:
        for path, settings in paths.items():  # alternate, so machine load drifts hit both paths alike
            cfg = replace(base, seed=seed, run_name=f'{path}-seed{seed}', **settings)
            t0 = time.perf_counter()
            m = read_metrics(train(cfg))
            run = dict(path=path, seed=seed, seconds=time.perf_counter() - t0, acc1=[l['val_acc1'] for l in m],
                       val_loss=[l['val_loss'] for l in m], train_loss=[l['train_loss'] for l in m],
                       images_per_s=statistics.median(l['images_per_s'] for l in m))
            res['runs'].append(run)
            print(f"{path:4s} seed {seed}: top-1 by epoch {' '.join(f'{a:.3f}' for a in run['acc1'])}  "
                  f"({run['seconds']:.0f} s, {run['images_per_s']:.0f} img/s)", flush=True)
            write_json(args.out, res)
    runs = list(res['runs'])
    for f in args.previous:
        old = json.loads(Path(f).read_text())
        if (old['epochs'], old['lr'], old['config']) != (args.epochs, args.lr, res['config']):
            raise SystemExit(f"{f} was run with other settings; only runs of the same settings can be pooled.")
        if set(old['seeds']) & set(args.seeds): raise SystemExit(f"{f} repeats seeds of this run.")
        runs += old['runs']
    res['pooled_from'] = args.previous
    final = {p: [r['acc1'][-1] for r in runs if r['path'] == p] for p in paths}
    last3 = {p: [statistics.mean(r['acc1'][-3:]) for r in runs if r['path'] == p] for p in paths}
    res['summary'] = {p: dict(final_mean=statistics.mean(v), final_sd=statistics.stdev(v) if len(v) > 1 else float('nan'),
                              final=v, last3_mean=statistics.mean(last3[p])) for p, v in final.items()}
    res['summary']['difference_fast_minus_pil'] = statistics.mean(final['fast']) - statistics.mean(final['pil'])
    res['summary']['welch_t'] = welch_t(final['fast'], final['pil'])
    res['summary']['welch_t_last3'] = welch_t(last3['fast'], last3['pil'])
    finish(env)
    write_json(args.out, res)
    s = res['summary']
    for p in paths:
        print(f"{p:4s}: final top-1 {s[p]['final_mean']:.3f} ± {s[p]['final_sd']:.3f} (sd over {len(final[p])} seeds: "
              f"{', '.join(f'{a:.3f}' for a in final[p])})")
    print(f"fast - pil = {s['difference_fast_minus_pil']:+.3f}; Welch t = {s['welch_t']:.2f} "
          f"(last-3-epoch mean: t = {s['welch_t_last3']:.2f}); same within noise: {abs(s['welch_t']) < 2}")


if __name__ == '__main__': main()
