"""Training images/s of our loop (`vitartifacts.train.train`) against a plain timm training loop, in one run.

Both train the same model (the tiny ViT at 64 px, patch 8, 10 classes) with the same batch, the same in-memory data
(one TensorDataset behind a DataLoader with num_workers=0), timm's Mixup/CutMix and BCE-with-logits. The plain loop
is what a timm user writes: forward, loss, backward, clip_grad_norm_, step with timm's Lamb, nothing else. Ours is the
whole `train()` (LAMB of vitartifacts.optim, per-step schedule, NaN check, progress bar, metrics); its images/s are the
epochs of `train_epoch` (the loop `train` runs) after `setup_run`, timed the same way as the plain loop. The two
alternate, `--repeats` times, so both see the same machine load; the first epoch of each is warm-up. Rates are given
by wall clock and by this process's CPU time: on a shared machine, with one thread, the CPU-time rate is the one that
other people's jobs do not move.

    .venv/bin/python bench/train_speed.py                 # CPU, one thread
    .venv/bin/python bench/train_speed.py --device cuda --size small --img_size 224 --patch_size 16 --batch_size 256
"""
import argparse, json, statistics, tempfile, time

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vitartifacts.config import Config
from vitartifacts.models import create_model
from vitartifacts.data import Data, mixup_fn
from _common import add_out_argument, environment, finish, header, write_json


def dataset(n: int, img_size: int, num_classes: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, img_size, img_size, generator=g), torch.arange(n) % num_classes)


def timed(epoch_fn, device) -> tuple[float, float]:
    "(images/s by wall clock, images/s by this process's CPU time) of one epoch; `epoch_fn` returns the images seen."
    if device.type == 'cuda': torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    n = epoch_fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return n / (time.perf_counter() - w), n / (time.process_time() - c)


def plain_timm_loop(cfg: Config, data: TensorDataset, num_classes: int, device: torch.device, epochs: int) -> list:
    "Rates of each epoch of a plain timm training loop."
    from timm.optim import Lamb, param_groups_weight_decay
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, size=cfg.size, num_classes=num_classes, img_size=cfg.img_size,
                         patch_size=cfg.patch_size, drop_path_rate=cfg.drop_path_rate).to(device).train()
    opt = Lamb(param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=model.no_weight_decay()),
               lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=None)
    mixup = mixup_fn(cfg, num_classes)
    loader = DataLoader(data, cfg.batch_size, shuffle=True, drop_last=True, num_workers=0)
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' else torch.autocast('cpu', enabled=False)

    def epoch():
        n = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x, target = mixup(x, y)
            with amp: logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            n += len(x)
        return n
    return [timed(epoch, device) for _ in range(epochs)]


def our_loop(cfg: Config, data: TensorDataset, num_classes: int, device: torch.device, epochs: int) -> list:
    "Rates of each epoch of our loop: `train_epoch` of a run set up by `setup_run`, exactly as `train` runs it."
    from vitartifacts.train import Device, set_determinism, setup_run, train_epoch
    loader = DataLoader(data, cfg.batch_size, shuffle=True, drop_last=True, num_workers=0)
    val = DataLoader(TensorDataset(*(t[:cfg.batch_size] for t in data.tensors)), cfg.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(**{**cfg.__dict__, 'epochs': epochs, 'runs_dir': tmp, 'run_name': 'bench'}).resolved()
        set_determinism(cfg)
        run, data, raw_model, model, progress, _ = setup_run(cfg, Device(device), Data(loader, val, num_classes,
                                                                                      mixup_fn(cfg, num_classes)))
        def epoch():
            n0 = progress.step
            train_epoch(model, data, run, progress)
            progress.next_epoch()
            return (progress.step - n0) * cfg.batch_size
        try: return [timed(epoch, device) for _ in range(epochs)]
        finally: run.trackers.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', default='tiny'); ap.add_argument('--img_size', type=int, default=64)
    ap.add_argument('--patch_size', type=int, default=8); ap.add_argument('--batch_size', type=int, default=64)
    ap.add_argument('--images', type=int, default=1024, help='images per epoch')
    ap.add_argument('--epochs', type=int, default=3, help='epochs per measurement; the first is warm-up')
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads (0: torch default)')
    ap.add_argument('--device', default='cpu')
    add_out_argument(ap)
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    env = environment(args.device)
    print(header(env), flush=True)
    device, num_classes = torch.device(args.device), 10
    cfg = Config(size=args.size, img_size=args.img_size, patch_size=args.patch_size, batch_size=args.batch_size,
                 num_workers=0, wandb_mode='disabled', analysis_freq=0, save_freq=0, warmup_epochs=1, lr=4e-3,
                 device=args.device)
    data = dataset(args.images, args.img_size, num_classes)
    plain, ours = [], []
    for r in range(args.repeats):
        for rates, loop in ((plain, plain_timm_loop), (ours, our_loop)):
            per_epoch = loop(cfg, data, num_classes, device, args.epochs)[1:]   # the first epoch warms up
            rates.append([statistics.median(x) for x in zip(*per_epoch)])     # [wall, cpu]
        print(f'repeat {r + 1}/{args.repeats}: wall img/s plain {plain[-1][0]:.1f} ours {ours[-1][0]:.1f} '
              f'({ours[-1][0] / plain[-1][0]:.3f}); CPU-time img/s plain {plain[-1][1]:.1f} ours {ours[-1][1]:.1f} '
              f'({ours[-1][1] / plain[-1][1]:.3f})', flush=True)
    med = lambda xs: round(statistics.median(xs), 3)
    result = dict(device=f"cpu ({env['machine']}), {torch.get_num_threads()} thread(s)" if device.type == 'cpu'
                  else env['gpu'], torch=env['torch'], timm=env['timm'],
                  model=f'{args.size} {args.img_size}px/{args.patch_size}', batch_size=args.batch_size,
                  wall=dict(plain=med([p[0] for p in plain]), ours=med([o[0] for o in ours]),
                            ratio=med([o[0] / p[0] for o, p in zip(ours, plain)])),
                  cpu_time=dict(plain=med([p[1] for p in plain]), ours=med([o[1] for o in ours]),
                                ratio=med([o[1] / p[1] for o, p in zip(ours, plain)])),
                  env=finish(env))
    print(json.dumps(result, indent=1))
    write_json(args.out, result)
    return result


if __name__ == '__main__':
    main()
