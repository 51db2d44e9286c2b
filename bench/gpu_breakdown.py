"""Where a DeiT III ViT-S/16 training step spends its GPU time, and what each speed option buys.

    python bench/gpu_breakdown.py --out bench/out/gpu_breakdown.json                     # the default sweep (CUDA)
    python bench/gpu_breakdown.py --modes default max-autotune-no-cudagraphs --patch_embeds conv linear
    python bench/gpu_breakdown.py --device cpu --size tiny --img_size 64 --patch_size 8 --batch_size 16 --modes eager
                                                                                         # a CPU smoke test of the script

For every (compile mode, patch embedding) pair: forward only, forward + backward, and the whole step with the LAMB update
(clipping inside), in ms per batch (median of --steps after --warmup). Then the LAMB step alone (foreach, and compiled),
and the batched augmentation + Mixup of one batch from a uint8 cache on the device for every resampling kernel, with and
without torch.compile of the pixel ops; and the first configuration's step fed by that loader, with and without
prefetching the next batch on a side stream. --profile adds profiler tables of the first configuration's step and of the
augmentation. Every figure is printed as it is measured and saved to --out, so a run cut short keeps what it measured.
"""
from __future__ import annotations
import argparse, statistics, time

import numpy as np
import torch
import torch.nn.functional as F

from vitartifacts.models import create_model
from vitartifacts.optim import Lamb, param_groups
from vitartifacts.gpudata import BatchAugment, BatchMixup, CachedLoader, ImageCache
from _common import add_out_argument, environment, finish, header, write_json

GFLOP_PER_IMAGE, PEAK_TFLOPS = 27.7, 790.0   # ViT-S/16 at 224 px, training; H100/H200 dense bf16 as measured


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def median_ms(fn, device, steps=20, warmup=5):
    for _ in range(warmup): fn()
    sync(device); times = []
    for _ in range(steps):
        t0 = time.perf_counter(); fn(); sync(device); times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def model_parts(args, device, mode, patch_embed):
    "ms of forward, forward+backward and the full step of one compiled (or eager) model."
    torch.manual_seed(0)
    raw = create_model('vanilla', args.size, img_size=args.img_size, patch_size=args.patch_size,
                       patch_embed=patch_embed).to(device).train()
    model = raw if mode == 'eager' else torch.compile(raw, mode=None if mode == 'default' else mode)
    opt = Lamb(param_groups(raw, 0.05), lr=4e-3, weight_decay=0.05, max_grad_norm=1.0)
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device, dtype=dtype)
    t = torch.rand(args.batch_size, 100, device=device)
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda')
    def fb(xx=x, tt=t):
        with amp(): loss = F.binary_cross_entropy_with_logits(model(xx).float(), tt)
        loss.backward()
    def step(xx=x, tt=t): fb(xx, tt); opt.step(); opt.zero_grad(set_to_none=True)
    def fwd():
        with torch.no_grad(), amp(): model(x)
    t0 = time.perf_counter(); step(); sync(device); first = time.perf_counter() - t0     # the compile, mostly
    out = dict(mode=mode, patch_embed=patch_embed, first_step_s=first,
               forward_ms=median_ms(fwd, device, args.steps, args.warmup),
               forward_backward_ms=median_ms(lambda: (fb(), opt.zero_grad(set_to_none=True)), device, args.steps, args.warmup),
               step_ms=median_ms(step, device, args.steps, args.warmup))
    out['images_per_s'] = args.batch_size / out['step_ms'] * 1000
    out['mfu'] = out['images_per_s'] * GFLOP_PER_IMAGE * 1e9 / (PEAK_TFLOPS * 1e12)
    return out, step


def lamb_parts(args, device):
    raw = create_model('vanilla', args.size, img_size=args.img_size, patch_size=args.patch_size).to(device)
    for p in raw.parameters(): p.grad = torch.randn_like(p) * 1e-3
    out = {}
    for name, kw in (('lamb_foreach', dict(foreach=True)), ('lamb_compiled', dict(foreach=True, compile=True))):
        if 'compile' in kw and args.modes == ['eager']: continue
        opt = Lamb(param_groups(raw, 0.05), lr=4e-3, weight_decay=0.05, max_grad_norm=1.0, **kw)
        out[name + '_ms'] = median_ms(opt.step, device, args.steps, args.warmup)
    return out


def augment_parts(args, device):
    "ms per batch of augmentation + Mixup from a uint8 cache on the device (short side 256/224 of img_size)."
    short = round(args.img_size * 256 / 224)
    n = 8 * args.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, short, round(1.25 * short)), dtype=torch.uint8, generator=g).to(device)
    cache = ImageCache(images, torch.randint(0, 100, (n,)), torch.full((n,), round(1.25 * short)),
                       torch.zeros(n, dtype=torch.bool), [str(i) for i in range(100)])
    out_dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    rows = []
    for kernel in args.augment_kernels:
        for compiled in ([False, True] if args.modes != ['eager'] else [False]):
            kw = dict(method='bag' if kernel == 'bag' else 'matmul',
                      resample_dtype=torch.float16 if kernel == 'matmul-fp16' else torch.float32)
            aug = BatchAugment(args.img_size, out_dtype=out_dtype, compile=compiled, **kw)
            loader = CachedLoader(cache, args.batch_size, device, aug, BatchMixup(num_classes=100, compile=compiled),
                                  img_size=args.img_size, out_dtype=out_dtype)
            k = iter(range(10 ** 9))
            ms = median_ms(lambda: loader.batch(0, next(k) % 8), device, args.steps, args.warmup)
            rows.append(dict(kernel=kernel, compile=compiled, ms=ms, images_per_s=args.batch_size / ms * 1000))
            print(f"augment+mixup {kernel:12s} compile={compiled!s:5s} {ms:7.2f} ms/batch", flush=True)
    return rows, (cache, out_dtype)


def overlap_parts(args, device, step, cache, out_dtype):
    "ms per training step fed by the loader (default kernel), with and without prefetching on a side stream."
    rows = []
    for prefetch in (False, True):
        loader = CachedLoader(cache, args.batch_size, device, BatchAugment(args.img_size, out_dtype=out_dtype),
                              BatchMixup(num_classes=100), img_size=args.img_size, out_dtype=out_dtype, prefetch=prefetch)
        def epoch():
            for xx, tt in loader: step(xx, tt)
        epoch(); sync(device)                        # warm-up: one pass of len(loader) steps
        times = []
        for _ in range(max(1, args.steps // len(loader))):
            t0 = time.perf_counter(); epoch(); sync(device); times.append((time.perf_counter() - t0) / len(loader))
        ms = statistics.median(times) * 1000
        rows.append(dict(prefetch=prefetch, step_with_data_ms=ms, images_per_s=args.batch_size / ms * 1000))
        print(f"step fed by the loader, prefetch={prefetch!s:5s} {ms:7.2f} ms/step {args.batch_size / ms * 1000:7.0f} img/s", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--size', default='small')
    ap.add_argument('--img_size', type=int, default=224)
    ap.add_argument('--patch_size', type=int, default=16)
    ap.add_argument('--batch_size', type=int, default=256)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--modes', nargs='+', default=['default'],
                    help="compile modes: eager, default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs")
    ap.add_argument('--patch_embeds', nargs='+', default=['conv', 'linear'])
    ap.add_argument('--augment_kernels', nargs='+', default=['bag', 'matmul', 'matmul-fp16'])
    ap.add_argument('--skip', nargs='*', default=[], help='parts to leave out: model, lamb, augment')
    ap.add_argument('--profile', action='store_true')
    add_out_argument(ap, default='bench/out/gpu_breakdown.json', help='the results as JSON, rewritten after every part')
    args = ap.parse_args()
    device = torch.device(args.device)
    import timm   # its version goes into the header
    env = environment(device)
    res = dict(device=env['gpu'] if device.type == 'cuda' else 'cpu', torch=env['torch'],
               timm=env['timm'], command=env['command'], batch_size=args.batch_size, size=args.size,
               img_size=args.img_size, model=[], lamb={}, augment=[], env=env)
    save = lambda: write_json(args.out, res)
    print(header(env), flush=True)
    print(f"{res['device']}, batch {args.batch_size}, ViT-{args.size} {args.img_size} px", flush=True)
    first_step = None
    if 'model' not in args.skip:
        for mode in args.modes:
            for pe in args.patch_embeds:
                r, step = model_parts(args, device, mode, pe)
                first_step = first_step or step
                res['model'].append(r); save()
                print(f"{mode:28s} {pe:6s} compile {r['first_step_s']:6.1f} s | forward {r['forward_ms']:6.2f} | "
                      f"fwd+bwd {r['forward_backward_ms']:6.2f} | step {r['step_ms']:6.2f} ms | {r['images_per_s']:7.0f} img/s "
                      f"| MFU {r['mfu']:.1%}", flush=True)
    if 'lamb' not in args.skip:
        res['lamb'] = lamb_parts(args, device); save()
        print('LAMB alone: ' + ', '.join(f'{k} {v:.2f}' for k, v in res['lamb'].items()), flush=True)
    aug_state = None
    if 'augment' not in args.skip:
        res['augment'], aug_state = augment_parts(args, device); save()
        if first_step is not None: res['overlap'] = overlap_parts(args, device, first_step, *aug_state); save()
    if args.profile and device.type == 'cuda':
        from torch.profiler import profile, ProfilerActivity
        if first_step is not None:
            with profile(activities=[ProfilerActivity.CUDA]) as pr:
                for _ in range(3): first_step()
                torch.cuda.synchronize()
            print(pr.key_averages().table(sort_by='cuda_time_total', row_limit=25, max_name_column_width=60))
        if aug_state is not None:
            cache, out_dtype = aug_state
            aug = BatchAugment(args.img_size, out_dtype=out_dtype)
            idx = np.arange(args.batch_size); h, w = cache.sizes(idx); im, _, tr = cache.batch(idx, device)
            p = aug.sample(np.random.default_rng(0), h, w)
            with profile(activities=[ProfilerActivity.CUDA]) as pr:
                for _ in range(3): aug.apply(im, tr, p)
                torch.cuda.synchronize()
            print(pr.key_averages().table(sort_by='cuda_time_total', row_limit=12, max_name_column_width=60))
    finish(env); save()


if __name__ == '__main__': main()
