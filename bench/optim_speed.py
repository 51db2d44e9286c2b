"""Step time of our LAMB (vitartifacts.optim.Lamb) against timm's Lamb on ViT-S/16 parameters.

    .venv/bin/python bench/optim_speed.py                      # CPU, eager variants
    .venv/bin/python bench/optim_speed.py --compile            # also the torch.compile'd update (minutes on a CPU)
    .venv/bin/python bench/optim_speed.py --device cuda --compile [--out FILE]

Gradients are fixed random tensors (the optimizer step is timed, not the backward pass). The variants are timed
interleaved, `--reps` rounds of `--steps` steps each, and the median step time per variant is printed, so a
machine whose load changes during the run biases no variant. Both optimizers use DeiT III's parameter groups
(`param_groups`) and clip inside the step (max_grad_norm=1.0), as apex FusedLAMB did.
"""
import argparse, statistics, time

import torch
import timm
from timm.optim import Lamb as TimmLamb

from vitartifacts.optim import Lamb, param_groups
from _common import add_out_argument, environment, finish, header, write_json


def vit_small():
    try:
        from vitartifacts.models import create_model
        return create_model('vanilla', size='small', num_classes=100), "vitartifacts create_model('vanilla', 'small')"
    except ImportError:
        return timm.create_model('deit3_small_patch16_224', num_classes=100), 'timm deit3_small_patch16_224'


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--steps', type=int, default=3, help='steps per timed round')
    ap.add_argument('--reps', type=int, default=5, help='timed rounds per variant (median reported)')
    ap.add_argument('--compile', action='store_true', help='also time the torch.compile variant')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    add_out_argument(ap)
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model, name = vit_small()
    n_params = sum(p.numel() for p in model.parameters())
    variants = {
        'timm Lamb (default path)': lambda ps: TimmLamb(ps, lr=4e-3, max_grad_norm=1.0),
        'timm Lamb foreach=True': lambda ps: TimmLamb(ps, lr=4e-3, max_grad_norm=1.0, foreach=True),
        'ours foreach=False (per tensor)': lambda ps: Lamb(ps, lr=4e-3, max_grad_norm=1.0, foreach=False),
        'ours foreach=True': lambda ps: Lamb(ps, lr=4e-3, max_grad_norm=1.0, foreach=True),
    }
    if args.compile:
        fe = device.type == 'cuda'
        variants[f'ours compiled (foreach={fe})'] = lambda ps: Lamb(ps, lr=4e-3, max_grad_norm=1.0, foreach=fe, compile=True)

    runs = {}
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]
    for label, make in variants.items():
        params = [torch.nn.Parameter(p.detach().clone().to(device)) for p in model.parameters()]
        for p, gr in zip(params, grads): p.grad = gr.to(device)
        # DeiT III's groups of the model, over this variant's own copy of the parameters
        index = {id(p): i for i, p in enumerate(model.parameters())}
        groups = [dict(g, params=[params[index[id(p)]] for p in g['params']]) for g in param_groups(model)]
        opt = make(groups)
        t = time.perf_counter()
        opt.step(); opt.step(); sync(device)  # state allocation, compilation
        runs[label] = dict(opt=opt, times=[], warmup_s=time.perf_counter() - t)

    env = environment(device)               # the load average from here to the end covers the timed rounds
    for _ in range(args.reps):
        for label, r in runs.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps): r['opt'].step()
            sync(device)
            r['times'].append((time.perf_counter() - t) / args.steps)
    finish(env)

    ref = statistics.median(runs['timm Lamb (default path)']['times'])
    print(f"# LAMB step time, {name}, {n_params / 1e6:.1f}M parameters")
    print(header(env, prefix='# '))
    print("| variant | median ms/step | min ms/step | vs timm default | first 2 steps s |")
    print("|---|---|---|---|---|")
    for label, r in runs.items():
        med = statistics.median(r['times'])
        print(f"| {label} | {med * 1e3:.1f} | {min(r['times']) * 1e3:.1f} | {ref / med:.2f}x | {r['warmup_s']:.1f} |")
    write_json(args.out, dict(env=env, model=name, parameters=n_params, steps=args.steps, reps=args.reps,
                              variants={label: dict(median_ms=statistics.median(r['times']) * 1e3, min_ms=min(r['times']) * 1e3,
                                                    vs_timm_default=ref / statistics.median(r['times']),
                                                    warmup_s=r['warmup_s'], times_s=r['times'])
                                        for label, r in runs.items()}))


if __name__ == '__main__':
    main()
