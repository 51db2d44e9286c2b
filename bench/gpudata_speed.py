"""Training-data throughput: DeiT III's PIL pipeline against the batched pipeline of vitartifacts.gpudata.

    .venv/bin/python bench/gpudata_speed.py                       # this CPU, both cores
    .venv/bin/python bench/gpudata_speed.py --device cuda         # batched pipeline on the GPU (cache in GPU memory)
    .venv/bin/python bench/gpudata_speed.py --out FILE            # also the figures as JSON

Data: ImageNet-shaped synthetic JPEGs (500x375 landscape and 375x500 portrait, quality 90), written to a temporary
ImageFolder. Every variant produces what the training step consumes: normalized 224 px images and Mixup/CutMix soft
targets for a batch. Variants:
  pil_jpeg     torchvision ImageFolder (full JPEG decode) + DeiT III's per-image PIL transforms
               (`pil_reference_transform`, i.e. vitartifacts.data.train_transform without draft decoding) in a
               DataLoader with --workers processes, then timm's Mixup on the batch; the standard path
  pil_decoded  the same transforms on images already decoded in memory (decoding not counted against PIL)
  data_jpeg    the project's PIL path, vitartifacts.data.train_transform with JPEG draft decoding at reduced size where
               the crop allows, same DataLoader and Mixup
  batched      vitartifacts CachedLoader over the uint8 cache (memory-mapped on CPU, copied to the GPU with --device
               cuda): batched RandomResizedCrop, flip, 3-Augment, ColorJitter, normalization, BatchMixup
plus the one-time cost of building the cache. Images/s is the median over `--reps` timed passes of `--batches` batches.
"""
import argparse, functools, os, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torchvision
import timm
from timm.data import Mixup

from vitartifacts.gpudata import (BatchAugment, BatchMixup, CachedLoader, ImageCache, pil_reference_transform,
                                  prepare_cache)
from vitartifacts.testing import smooth_image
from _common import add_out_argument, environment, finish, header, write_json


class Decoded(torch.utils.data.Dataset):
    "Images held decoded in memory, transformed per item."
    def __init__(self, images, labels, transform): self.images, self.labels, self.transform = images, labels, transform
    def __len__(self): return len(self.images)
    def __getitem__(self, i): return self.transform(self.images[i]), self.labels[i]


def write_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        d = root / f'c{k % classes:03d}'
        d.mkdir(parents=True, exist_ok=True)
        h, w = (375, 500) if k % 4 else (500, 375)        # a quarter portrait, as in ImageNet
        smooth_image(rng, h, w).save(d / f'{k:06d}.jpg', quality=90)


def rate(run_batches, n_images, reps):
    "Median images/s of `run_batches()` over `reps` passes (the first pass is a warm-up and not counted)."
    run_batches()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); run_batches(); times.append(time.perf_counter() - t)
    return n_images / statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--batch_size', type=int, default=256)
    ap.add_argument('--batches', type=int, default=2, help='batches per timed pass')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--workers', type=int, default=os.cpu_count(), help='DataLoader processes of the PIL pipeline')
    ap.add_argument('--threads', type=int, default=None, help='torch threads of the batched pipeline (default: all cores)')
    add_out_argument(ap)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    env = environment(device, packages=('torchvision',), pil_workers=args.workers)
    n = args.batch_size * args.batches
    mixup_kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode='elem', label_smoothing=0.1, num_classes=10)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'train'
        write_jpegs(root, n)
        results = {}

        ds = torchvision.datasets.ImageFolder(str(root), transform=pil_reference_transform())
        mix = Mixup(**mixup_kw)
        def pil_pass(loader):
            def run():
                for x, y in loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    mix(x, y)
                if device.type == 'cuda': torch.cuda.synchronize()
            return run
        loader = torch.utils.data.DataLoader(ds, args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                                             persistent_workers=args.workers > 0, pin_memory=device.type == 'cuda')
        results['pil_jpeg'] = rate(pil_pass(loader), n, args.reps)
        decoded = [ds.loader(p) for p, _ in ds.samples]
        loader = torch.utils.data.DataLoader(Decoded(decoded, [y for _, y in ds.samples], pil_reference_transform()),
                                             args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                                             persistent_workers=args.workers > 0, pin_memory=device.type == 'cuda')
        results['pil_decoded'] = rate(pil_pass(loader), n, args.reps)
        del decoded, loader
        try:
            from vitartifacts.data import open_image, train_transform
            ds = torchvision.datasets.ImageFolder(str(root), transform=train_transform(),
                                                  loader=functools.partial(open_image, lazy_jpeg=True))
            loader = torch.utils.data.DataLoader(ds, args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                                                 persistent_workers=args.workers > 0, pin_memory=device.type == 'cuda')
            results['data_jpeg'] = rate(pil_pass(loader), n, args.reps)
            del loader
        except ImportError: pass

        t = time.perf_counter()
        cache_dir = prepare_cache(root, Path(tmp) / 'cache', num_workers=args.workers)
        results['cache_build'] = n / (time.perf_counter() - t)
        cache = ImageCache.load(cache_dir, device=device if device.type == 'cuda' else None)
        loader = CachedLoader(cache, args.batch_size, device, augment=BatchAugment(), mixup=BatchMixup(**mixup_kw))
        def batched():
            for x, y in loader: pass
            if device.type == 'cuda': torch.cuda.synchronize()
        results['batched'] = rate(batched, n, args.reps)

    print(f"# training-data throughput, batch {args.batch_size}, {n} images per pass, "
          f"PIL workers {args.workers}, batched threads {torch.get_num_threads()}")
    print(header(finish(env), prefix='# '))
    print("| pipeline | images/s | batched / this |")
    print("|---|---|---|")
    for k in [k for k in ('pil_jpeg', 'pil_decoded', 'data_jpeg', 'batched') if k in results]:
        print(f"| {k} | {results[k]:.0f} | {results['batched'] / results[k]:.2f}x |")
    print(f"| cache build (one-time, {args.workers} workers) | {results['cache_build']:.0f} | |")
    write_json(args.out, dict(env=env, batch_size=args.batch_size, images_per_pass=n, reps=args.reps,
                              images_per_s=results,
                              batched_over={k: results['batched'] / results[k] for k in ('pil_jpeg', 'pil_decoded', 'data_jpeg')
                                            if k in results}))


if __name__ == '__main__':
    main()
