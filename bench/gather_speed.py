"""Host side of a batch from a memory-mapped cache (`data_cache='host'`): `ImageCache.batch` against the plain numpy way.

    OMP_NUM_THREADS=1 .venv/bin/python bench/gather_speed.py --images 2048 --batch 256 --repeats 15

`ImageCache.batch` on a memory-mapped cache reads the batch's images front to back and writes each straight to its
place in the output (pinned memory on CUDA). The reference is what it replaced: `np.take` in sorted order, then a
second copy to restore the batch's order. The cache is random uint8 slots of 3x256x320 (ImageNet-100's layout) in a
temporary .npy, read once before timing so both read from the page cache. The two alternate; the ratio is the median
of the per-repeat ratios.
"""
import argparse, os, statistics, tempfile, time

import numpy as np
import torch

from vitartifacts.gpudata import GATHER_THREADS, ImageCache
from _common import add_out_argument, environment, finish, header, write_json


def take_then_reorder(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    order = np.argsort(idx, kind='stable')
    return torch.from_numpy(np.take(images, idx[order], axis=0))[torch.from_numpy(np.argsort(order))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--images', type=int, default=2048)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=15)
    add_out_argument(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment('cpu', gather_threads=GATHER_THREADS)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'images.npy')
        a = np.lib.format.open_memmap(path, mode='w+', dtype=np.uint8, shape=(args.images, 3, 256, 320))
        a[:] = np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8); a.flush(); del a
        images = np.load(path, mmap_mode='r')
        n = args.images
        cache = ImageCache(images, torch.zeros(n, dtype=torch.int64), torch.full((n,), 320), torch.zeros(n, dtype=torch.bool), ['0'])
        np.asarray(images).sum()                                  # into the page cache
        rng, times = np.random.default_rng(1), {'ImageCache.batch': [], 'take_then_reorder': []}
        for r in range(args.repeats + 1):
            idx = rng.permutation(n)[:args.batch]
            ours, ref = (lambda: cache.batch(idx)[0]), (lambda: take_then_reorder(images, idx))
            for name, fn in ((('ImageCache.batch', ours), ('take_then_reorder', ref)) if r % 2 else
                             (('take_then_reorder', ref), ('ImageCache.batch', ours))):
                t = time.perf_counter(); out = fn(); times[name].append(time.perf_counter() - t)
            assert torch.equal(ours(), ref())
        del cache, images
    print(header(finish(env)))
    for name, v in times.items(): print(f"{name:>18}: median {statistics.median(v[1:]) * 1e3:.1f} ms per batch of {args.batch}")
    ratios = [a / b for a, b in zip(times['ImageCache.batch'][1:], times['take_then_reorder'][1:])]
    print(f"ImageCache.batch / take_then_reorder: {statistics.median(ratios):.2f}")
    write_json(args.out, dict(env=env, images=args.images, batch=args.batch, repeats=args.repeats,
                              median_ms={k: statistics.median(v[1:]) * 1e3 for k, v in times.items()},
                              times_s={k: v[1:] for k, v in times.items()}, ratio=statistics.median(ratios), ratios=ratios))


if __name__ == '__main__':
    main()
