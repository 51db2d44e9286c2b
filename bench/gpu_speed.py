"""GPU training speed of DeiT III ViT-S/16 (224 px, batch 256, the full recipe) on one GPU.

Prints, in one run, images/s and MFU of
  1. reference, model only:   timm model, timm Lamb, timm Mixup, eager bf16 autocast, data already on the GPU
  2. ours, model only:        vitartifacts model + LAMB + the training loop (`train`), torch.compile, data on the GPU
  3. reference, end to end:   the same as 1, fed by a torchvision ImageFolder + PIL DataLoader with the recipe's transforms
  4. ours, end to end:        `train` with fast_data: uint8 cache (prepare-data) + batched on-device augmentation
plus the probe pass's cost at the default analysis_freq and the peak GPU memory of each.
The end-to-end data is the ImageNet-shaped synthetic JPEG preset (about 500x375, quality 90, 100 classes).
MFU counts 27.7 GFLOP per training image against 790 TFLOP/s of dense bf16 (an H100/H200's measured rate).

    python bench/gpu_speed.py --out bench/out/gpu_speed.json [--steps 40] [--images_per_class 100]
    python bench/gpu_speed.py --only ours_model,ours_e2e --set compile_mode=max-autotune-no-cudagraphs --set patch_embed=linear
"""
from __future__ import annotations
import argparse, json, os, statistics, tempfile, time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import add_out_argument, environment, finish, header, write_json

GFLOP_PER_IMAGE, PEAK_TFLOPS = 27.7, 790.0
IMAGENET100_TRAIN = 126_689   # training images of ImageNet-100


def mfu(images_per_s): return images_per_s * GFLOP_PER_IMAGE * 1e9 / (PEAK_TFLOPS * 1e12)


def reference_step_fn(model, opt, mixup):
    "The plain DeiT III step: eager bf16 autocast, timm Mixup, BCE, clip 1.0, timm Lamb."
    def step(images, labels):
        images, targets = mixup(images, labels)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(images).float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss
    return step


def reference_parts(num_classes=100):
    import timm
    from timm.data import Mixup
    from timm.optim import Lamb, param_groups_weight_decay
    model = timm.create_model('deit3_small_patch16_224', num_classes=num_classes, drop_path_rate=0.05,
                              init_values=1e-4).cuda().train()
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    opt = Lamb(groups, lr=4e-3, weight_decay=0.05, max_grad_norm=None)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode='elem', label_smoothing=0.1,
                  num_classes=num_classes)
    return model, opt, mixup


def timed(step, batches, warmup):
    "Median images/s over the batches after `warmup`, timing each window of 5 steps with a sync at its end."
    rates, n, t0 = [], 0, None
    for i, (images, labels) in enumerate(batches):
        if i == warmup: torch.cuda.synchronize(); t0 = time.perf_counter(); n = 0
        step(images.cuda(non_blocking=True), labels.cuda(non_blocking=True))
        if t0 is not None:
            n += len(images)
            if (i - warmup + 1) % 5 == 0:
                torch.cuda.synchronize(); t1 = time.perf_counter()
                rates.append(n / (t1 - t0)); t0, n = t1, 0
    return statistics.median(rates)


def gpu_batches(n_steps, batch=256, num_classes=100, img=224):
    g = torch.Generator(device='cuda').manual_seed(0)
    x = torch.randn(batch, 3, img, img, device='cuda', generator=g)
    y = torch.randint(0, num_classes, (batch,), device='cuda', generator=g)
    return [(x, y)] * n_steps


def peak_reset(): torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
def peak_gib(): return torch.cuda.max_memory_allocated() / 2**30


def reference_model_only(steps):
    peak_reset()
    model, opt, mixup = reference_parts()
    ips = timed(reference_step_fn(model, opt, mixup), gpu_batches(steps + 10), warmup=10)
    return dict(images_per_s=ips, mfu=mfu(ips), peak_gib=peak_gib())


def reference_end_to_end(root, steps, workers):
    from torchvision import datasets, transforms as T
    from torch.utils.data import DataLoader
    tf = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(),
                    T.RandomChoice([T.Grayscale(3), T.RandomSolarize(128, p=1.0), T.GaussianBlur(9, sigma=(0.1, 2.0))]),
                    T.ColorJitter(0.3, 0.3, 0.3), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = datasets.ImageFolder(Path(root) / 'train', tf)
    dl = DataLoader(ds, 256, shuffle=True, drop_last=True, num_workers=workers, pin_memory=True,
                    persistent_workers=True, prefetch_factor=4)
    def batches():
        k = 0
        while True:
            for b in dl:
                yield b; k += 1
                if k >= steps + 10: return
    peak_reset()
    model, opt, mixup = reference_parts(len(ds.classes))
    ips = timed(reference_step_fn(model, opt, mixup), batches(), warmup=10)
    return dict(images_per_s=ips, mfu=mfu(ips), peak_gib=peak_gib(), workers=workers)


def ours(run_root, name, steps_per_epoch_data, epochs=3, **settings):
    "Train with vitartifacts' own loop; images/s of the last epoch as the loop itself measured it."
    from vitartifacts.config import Config
    from vitartifacts.runs import read_metrics
    from vitartifacts.train import train
    cfg = Config(**{**dict(model='vanilla', size='small', epochs=epochs, batch_size=256, runs_dir=str(run_root), run_name=name,
                           wandb_mode='disabled', analysis_freq=0, save_freq=0, compile=True, num_workers=8), **settings})
    peak_reset()
    run_dir = train(cfg, data=steps_per_epoch_data)
    m = read_metrics(run_dir)
    ips = m[-1]['images_per_s']
    return dict(images_per_s=ips, mfu=mfu(ips), peak_gib=peak_gib(), per_epoch=[l['images_per_s'] for l in m])


def ours_model_only(run_root, steps, overrides):
    from vitartifacts.data import Data
    from vitartifacts.gpudata import BatchMixup
    data = Data(gpu_batches(steps), gpu_batches(2), 100, BatchMixup(num_classes=100))
    return ours(run_root, 'model_only', data, **overrides)


def fast_data_cache(root, cache_root, workers=None):
    "`vitartifacts prepare-data`: the uint8 cache `train` reads with fast_data (decoded once; the time is reported)."
    from vitartifacts.gpudata import prepare_data_command, ImageCache
    t0 = time.perf_counter()
    out = prepare_data_command(root, Path(cache_root) / 'uint8', img_size=224, num_workers=workers)
    return out, time.perf_counter() - t0, len(ImageCache.load(out / 'train'))


def probe_cost(run_root, epoch_seconds, analysis_freq):
    "Seconds of one probe pass (64 images, summary attention, store append) against `analysis_freq` epochs."
    from vitartifacts.models import create_model
    from vitartifacts.train import on_probe
    from vitartifacts.config import Config
    model = create_model('vanilla', 'small').cuda()
    images = torch.randn(64, 3, 224, 224, device='cuda')
    cfg = Config(size='small', wandb_mode='disabled')
    times = []
    for i in range(5):
        run_dir = Path(run_root) / f'probe{i}'; run_dir.mkdir(parents=True)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        on_probe(run_dir, 0, model, images, cfg)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
    t = statistics.median(times[1:])
    return dict(probe_seconds=t, analysis_freq=analysis_freq, epoch_seconds=epoch_seconds,
                overhead=t / (analysis_freq * epoch_seconds))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_out_argument(ap, default='bench/out/gpu_speed.json', help='the results as JSON, rewritten after every part')
    ap.add_argument('--steps', type=int, default=40, help='timed steps (model only)')
    ap.add_argument('--images_per_class', type=int, default=100, help='synthetic JPEGs per class (100 classes)')
    ap.add_argument('--workers', type=int, default=os.cpu_count())
    ap.add_argument('--only', default='', help='comma list of parts: ref_model,ours_model,ref_e2e,ours_e2e,probe')
    ap.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                    help="a training setting for our runs, e.g. compile_mode=max-autotune or augment_kernel=matmul-fp16 (repeatable)")
    args = ap.parse_args()
    from vitartifacts.config import Config
    overrides = dict(kv.split('=', 1) for kv in args.set)
    Config(**{k: v for k, v in overrides.items()})   # fail now, not after the reference runs, on a bad name or value
    parts = set(args.only.split(',')) if args.only else {'ref_model', 'ours_model', 'ref_e2e', 'ours_e2e', 'probe'}
    import timm, torchvision   # their versions go into the header
    env = environment('cuda', packages=('torchvision',))
    res = dict(device=env['gpu'], torch=env['torch'], torchvision=env['torchvision'],
               timm=env['timm'], batch=256, cpus=env['cpus'], command=env['command'], settings=overrides, env=env)
    def save(): write_json(args.out, res); print(json.dumps(res), flush=True)
    print(header(env), flush=True)
    print("parts:", sorted(parts), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix='gpu_speed_'))
    if 'ref_model' in parts: res['reference_model_only'] = reference_model_only(args.steps); save()
    if 'ours_model' in parts: res['ours_model_only'] = ours_model_only(tmp / 'runs', args.steps, overrides); save()
    if parts & {'ref_e2e', 'ours_e2e'}:
        from vitartifacts.data import synthetic_root
        t0 = time.perf_counter()
        root = synthetic_root(cache_dir=tmp / 'cache', preset='imagenet', train_per_class=args.images_per_class,
                              val_per_class=2)
        res['jpeg_write_seconds'] = time.perf_counter() - t0; save()
        if 'ref_e2e' in parts: res['reference_end_to_end'] = reference_end_to_end(root, args.steps, args.workers); save()
        if 'ours_e2e' in parts:
            cache, prepare_s, n = fast_data_cache(root, tmp / 'cache', workers=args.workers)
            res['prepare_data'] = dict(seconds=prepare_s, images=n, images_per_s=n / prepare_s); save()
            res['ours_end_to_end'] = ours(tmp / 'runs', 'e2e', None, fast_data=True, data_path=str(cache), **overrides); save()
    if 'probe' in parts:
        from vitartifacts.config import Config
        ips = (res.get('ours_end_to_end') or res.get('ours_model_only') or {}).get('images_per_s', 10_000)
        res['probe'] = probe_cost(tmp / 'probe', IMAGENET100_TRAIN / ips, Config().analysis_freq); save()
    finish(env); save()


if __name__ == '__main__': main()
