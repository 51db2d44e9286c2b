"""Probe store and analysis cost at ViT-S size (depth 12, 6 heads, 14x14 patches, K = 64 probe images).

Usage: python bench/store_speed.py [--epochs 20] [--repeat 3] [--out FILE]
Prints a markdown table: bytes per probe epoch, append and load times, and the per-epoch cost of the
analysis functions that read a store (outliers per detector, sinks, massive activations, compare_runs first and
again, when `outliers_over_epochs` reads its cache).
"""
import argparse, tempfile, time
from pathlib import Path

import numpy as np
import torch

from vitartifacts.probe import MassiveActivations, ProbeResult, TokenLayout
from vitartifacts.store import ProbeStore, epoch_nbytes
from vitartifacts import analysis as A
from _common import add_out_argument, environment, footer, header, write_json


def vit_s_result(n_reg: int, K: int = 64, depth: int = 12, H: int = 6, seed: int = 0) -> ProbeResult:
    "A ViT-S-shaped probe result with lognormal norms, 2% of patch tokens at 10x, and peaky attention."
    g = torch.Generator().manual_seed(seed)
    lay = TokenLayout(1 + n_reg + 196, 0, list(range(1, 1 + n_reg)), (14, 14))
    T, P = lay.n_tokens, lay.n_prefix
    norms = torch.exp(torch.randn(depth + 1, K, T, generator=g) * 0.2 + 4)
    norms[4:, :, P:] *= torch.where(torch.rand(K, T - P, generator=g) < 0.02, 10.0, 1.0)
    att = lambda *s: (torch.randn(*s, generator=g) * 3).softmax(-1)
    mass = MassiveActivations(torch.rand(depth, 3) * 100, torch.randint(0, 384, (depth, 3)),
                              torch.randint(0, T, (depth, 3)), torch.rand(depth))
    return ProbeResult(norms=norms, layout=lay, massive=mass, logits=torch.randn(K, 100),
                       attn_prefix=att(depth, K, H, P, T), attn_received=att(depth, K, H, T))


def timed(fn, repeat):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=20)
    ap.add_argument('--repeat', type=int, default=3)
    add_out_argument(ap)
    args = ap.parse_args()
    env = environment('cpu')
    print(header(env))
    print(f"best of {args.repeat}\n")
    rows = []
    for n_reg, dtype in ((0, 'float16'), (4, 'float16'), (4, 'log8')):
        r = vit_s_result(n_reg)
        root = Path(tempfile.mkdtemp())
        store = ProbeStore(root, attn_dtype=dtype)
        store.append(0, r, images=torch.randn(64, 3, 224, 224), labels=torch.arange(64))
        t_append, path = timed(lambda: store.append(1, r), args.repeat)
        for e in range(2, args.epochs): store.append(e, r)
        t_load, _ = timed(lambda: store.load(1), args.repeat)
        t_norms, _ = timed(lambda: store.read('norms'), args.repeat)
        per = {}
        for det in A.DETECTORS:
            per[det], _ = timed(lambda: A.outliers_over_epochs(store, det, epochs=[1], cache=False), args.repeat)
        per['sinks'], _ = timed(lambda: A.sinks_over_epochs(store, epochs=[1]), args.repeat)
        per['massive'], _ = timed(lambda: A.massive_table(store, epochs=[1]), args.repeat)
        t_cmp, table = timed(lambda: A.compare_runs([root]), 1)           # first call: fits every epoch, fills the cache
        t_cmp2, table2 = timed(lambda: A.compare_runs([root]), args.repeat)  # later calls read the cache
        assert table2.equals(table)
        assert abs(table.iloc[0].peak_outlier_ratio - 0.02) < 0.005, table.iloc[0].peak_outlier_ratio
        rows.append((f"{'vanilla' if n_reg == 0 else f'{n_reg} registers'}, {dtype}",
                     path.stat().st_size / 1e6, epoch_nbytes(12, 64, r.layout.n_tokens, 6, r.layout.n_prefix, dtype) / 1e6,
                     t_append, t_load, t_norms, per, t_cmp, t_cmp2))
    print(f"| store ({args.epochs} epochs) | MB/epoch (arrays) | append s | load s | read norms, all epochs s | "
          "bimodal s/epoch | sigma s/epoch | cutoff s/epoch | sinks s/epoch | massive s/epoch | compare_runs s, first | again (cached) s |")
    print('|---' * 12 + '|')
    for name, mb, mb_arr, ta, tl, tn, per, tc, tc2 in rows:
        print(f"| {name} | {mb:.2f} ({mb_arr:.2f}) | {ta:.3f} | {tl:.3f} | {tn:.3f} | {per['bimodal']:.3f} | {per['sigma']:.3f} | "
              f"{per['cutoff']:.3f} | {per['sinks']:.3f} | {per['massive']:.3f} | {tc:.2f} | {tc2:.3f} |")
    print(footer(env))
    write_json(args.out, dict(env=env, epochs=args.epochs, repeat=args.repeat, rows=[
        dict(store=name, mb_per_epoch=mb, mb_arrays=mb_arr, append_s=ta, load_s=tl, read_norms_s=tn,
             per_epoch_s=per, compare_runs_first_s=tc, compare_runs_again_s=tc2)
        for name, mb, mb_arr, ta, tl, tn, per, tc, tc2 in rows]))


if __name__ == '__main__':
    main()
