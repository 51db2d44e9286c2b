"""Images per second per loader worker: our train pipeline against plain torchvision, on ImageNet-shaped JPEGs.

Both read the same files (the synthetic 'imagenet' preset: ~500x375 JPEGs at quality 90, written once to the cache) with
the same DeiT III train transform (RandomResizedCrop bicubic, flip, 3-Augment, ColorJitter 0.3, normalized tensor):
- torchvision: `ImageFolder` (PIL decode at full size, convert to RGB) + a v2.Compose of the stock transforms;
- ours: `vitartifacts.data.CheckedImageFolder` + `train_transform`, which decodes JPEGs at reduced size (PIL draft) when
  the crop allows it, crops and resizes in one PIL call, and converts to a normalized tensor in one pass.

Per-worker speed is measured in one process with one torch thread (what a DataLoader worker runs), the variants taking
turns every 20 images so that changing load on the machine hits both alike; medians over several passes are reported. A
DataLoader pass with several workers checks that the gain survives in a real loader.

    .venv/bin/python bench/data_speed.py                 # img sizes 224 and 64, 5 repeats
    .venv/bin/python bench/data_speed.py --img-size 224 --images 300 --repeats 7 --loader-workers 2 --loader-images 1200
    .venv/bin/python bench/data_speed.py ... --out FILE    # also as JSON (--json FILE is the same)
"""
import argparse, json, random, statistics, time

import PIL, PIL.features, torch, torchvision, timm   # torchvision, timm: their versions go into the header
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from vitartifacts import data as vd
from _common import add_out_argument, environment, finish, header, write_json


def torchvision_pipeline(img_size, scale=(0.08, 1.0), color_jitter=0.3):
    "The same train transform written with torchvision's stock ops only."
    return v2.Compose([
        v2.RandomResizedCrop(img_size, scale=scale, interpolation=InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        vd.three_augment_transform(),
        v2.ColorJitter(color_jitter, color_jitter, color_jitter),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(vd.IMAGENET_DEFAULT_MEAN, vd.IMAGENET_DEFAULT_STD)])


def datasets(root, img_size):
    classes = vd.check_imagefolder(root)
    return {
        'torchvision': ImageFolder(root / 'train', torchvision_pipeline(img_size)),
        'ours': vd.CheckedImageFolder(root / 'train', classes, vd.train_transform(img_size), lazy_jpeg=True),
    }


def interleaved_rates(dss, indices, repeats, chunk=20):
    """Images/s of each variant in one process with one thread, per repeat. Within a repeat the variants take turns every
    `chunk` images (and swap who goes first), so a change in the machine's load hits all of them alike."""
    names = list(dss)
    rates = {k: [] for k in names}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for c, start in enumerate(range(0, len(indices), chunk)):
            for k in (names if (c + r) % 2 == 0 else names[::-1]):
                torch.manual_seed(1000 * r + c)  # the same crops and augmentations for both
                t = time.perf_counter()
                for i in indices[start:start + chunk]: dss[k][i]
                spent[k] += time.perf_counter() - t
        for k in names: rates[k].append(len(indices) / spent[k])
    return rates


def loader_rate(ds, indices, workers, batch_size=64):
    "Images/s of a DataLoader with `workers` processes (worker start-up excluded: the first batch is not timed)."
    dl = DataLoader(Subset(ds, indices), batch_size=batch_size, num_workers=workers, shuffle=False, prefetch_factor=4)
    it = iter(dl); next(it)
    t, n = time.perf_counter(), 0
    for x, _ in it: n += len(x)
    return n / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--img-size', type=int, nargs='+', default=[224, 64])
    p.add_argument('--images', type=int, default=300, help='images per timed pass')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--loader-workers', type=int, default=2, help='workers of the DataLoader check (0: skip it)')
    p.add_argument('--loader-images', type=int, default=1200, help='images per pass of the DataLoader check')
    p.add_argument('--cache-dir', default='~/.cache/vitartifacts')
    add_out_argument(p, '--json')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    env = environment('cpu', packages=('torchvision', 'PIL'), libjpeg_turbo=PIL.features.check_feature('libjpeg_turbo'))
    print(header(env), flush=True)
    t = time.time()
    root = vd.synthetic_root(a.cache_dir, 'imagenet')
    print(f"data: {root} ({time.time() - t:.0f} s to find or write)", flush=True)
    results = []
    for img_size in a.img_size:
        dss = datasets(root, img_size)
        n = len(dss['ours'])
        indices = random.Random(0).sample(range(n), min(a.images, n))
        rates = interleaved_rates(dss, indices, a.repeats)
        ratios = [o / t for o, t in zip(rates['ours'], rates['torchvision'])]
        row = dict(img_size=img_size, images=len(indices), repeats=a.repeats,
                   per_worker={k: statistics.median(v) for k, v in rates.items()},
                   per_worker_all={k: [round(x, 1) for x in v] for k, v in rates.items()},
                   ratio=statistics.median(ratios), ratio_all=[round(x, 3) for x in ratios])
        if a.loader_workers:
            lr = {k: [] for k in ('torchvision', 'ours')}
            loader_indices = random.Random(1).sample(range(n), min(a.loader_images, n))
            for r in range(3):
                for k in (('torchvision', 'ours') if r % 2 == 0 else ('ours', 'torchvision')):
                    lr[k].append(loader_rate(dss[k], loader_indices, a.loader_workers))
            row['loader'] = {k: statistics.median(v) for k, v in lr.items()}
            row['loader_all'] = {k: [round(x, 1) for x in v] for k, v in lr.items()}
            row['loader_workers'], row['loader_images'] = a.loader_workers, len(loader_indices)
        results.append(row)
        print(f"\nimg_size {img_size}: images/s per worker (median of {a.repeats} passes of {len(indices)} images)")
        for k, v in row['per_worker'].items(): print(f"  {k:12s} {v:7.1f}  {row['per_worker_all'][k]}")
        print(f"  ours / torchvision: x{row['ratio']:.2f} (median of the passes' ratios {row['ratio_all']})")
        if a.loader_workers:
            print(f"  DataLoader, {a.loader_workers} workers, {len(loader_indices)} images (median of 3): "
                  + ', '.join(f"{k} {v:.1f} img/s {row['loader_all'][k]}" for k, v in row['loader'].items()))
    finish(env)
    print('\n' + json.dumps(env))
    write_json(a.out, dict(env=env, results=results))
    return results


if __name__ == '__main__':
    main()
