"""The probe on a tiny variant of every timm ViT family, at the model's own resolution, random weights (nothing downloaded).

Usage: python bench/family_probe_speed.py [--images 64] [--out FILE]
Prints a markdown table: family, model, whether the probe reads it, the largest difference between its attention and
the independent recomputation of tests/test_families.py (from q, k and the family's rope or bias), the precision and
recall of the bimodal detector on high-norm tokens planted at known patches from block 2 on, whether a probe-only store
of it opens in the report, and the seconds a probe of the images takes (`attention='summary'`, what `vitartifacts probe`
stores). Swin, PVT-v2 and CrossViT are measured stage by stage (`probe_stages`): the error is the largest over every
stage's layers, the outliers are planted in the first stage (CrossViT: each branch) at its block 1, and every stage's
store goes into the report. A family the probe does not read shows its one-sentence refusal.

Usage for some families only: python bench/family_probe_speed.py --families Swin PVT-v2 CrossViT
"""
import argparse, sys, tempfile, time
from pathlib import Path

import numpy as np
import timm
import torch

from vitartifacts import analysis as A
from vitartifacts.probe import StagedAdapter, UnsupportedModel, model_adapter, probe, probe_stages
from vitartifacts.probing import probe_in_batches, probe_stages_in_batches
from vitartifacts.report import write_report
from vitartifacts.testing import plant_outliers, smooth_images
from _common import add_out_argument, environment, footer, header, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))   # the recomputations the tests check the probe with
from test_families import (attention_modules, plant_staged, planted_layer, probe_rows, reference_attention,   # noqa: E402
                           staged_reference, write_probe_store, write_stage_stores)

TINY = dict(embed_dim=192, num_heads=3)          # ViT-Tiny's width, for families whose smallest timm model is a base
FAMILIES = [  # family, its reference recomputation in test_families, timm name, overrides
    ('DeiT distilled', 'distilled', 'deit_tiny_distilled_patch16_224', {}),
    ('SigLIP (no CLS)', 'siglip', 'vit_base_patch16_siglip_224', TINY),
    ('EVA-02', 'eva', 'eva02_tiny_patch14_224', {}),
    ('BEiT', 'beit', 'beit_base_patch16_224', TINY),
    ('CaiT', 'cait', 'cait_xxs24_224', {}),
    ('Swin', 'swin', 'swin_tiny_patch4_window7_224', {}),
    ('PVT-v2', 'pvt', 'pvt_v2_b0', {}),
    ('CrossViT', 'crossvit', 'crossvit_tiny_240', {}),
]


def planted_scores(name, m, x, layer=2):
    "Precision and recall of the bimodal detector, over the layers from `layer` on, for 2 planted patches per image."
    r0 = probe(m, x[:1], attention=False)
    lay, K = r0.layout, len(x)
    n = lay.grid[0] * lay.grid[1]
    where = torch.zeros(K, lay.n_tokens, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for i in range(K): where[i, lay.n_prefix + torch.randperm(n, generator=g)[:2]] = True
    handle = plant_outliers(m, layer, where[:, 1:] if name == 'cait' else where)
    try: r = probe(m, x, attention=False)
    finally: handle.remove()
    found, truth = A.detect_outliers(r.norms, lay).mask[layer:r.depth], where[None, :, lay.n_prefix:].numpy()
    tp = (found & truth).sum()
    return tp / max(found.sum(), 1), tp / (truth.sum() * (r.depth - layer))


def staged_planted_scores(name, m, x):
    "Precision and recall of the bimodal detector in the stages planted (the first; CrossViT: each branch), from the planted layer on."
    clean = probe_stages(m, x[:1], attention=False)
    tp = n_found = n_true = 0
    g = torch.Generator().manual_seed(1)
    for k in (list(clean) if name == 'crossvit' else list(clean)[:1]):
        lay, K = clean[k].layout, len(x)
        n = lay.grid[0] * lay.grid[1]
        where = torch.zeros(K, n, dtype=torch.bool)
        for i in range(K): where[i, torch.randperm(n, generator=g)[:2]] = True
        handle = plant_staged(name, m, k, 1, where)
        try: r = probe_stages(m, x, attention=False)[k]
        finally: handle.remove()
        layer = planted_layer(m, k)
        found, truth = A.detect_outliers(r.norms, lay).mask[layer:r.depth], where[None].numpy()
        tp, n_found, n_true = tp + (found & truth).sum(), n_found + found.sum(), n_true + truth.sum() * (r.depth - layer)
    return tp / max(n_found, 1), tp / n_true


def staged_row(family, ref, shown, m, x, work):
    "A row for a staged family: every stage probed, checked and reported."
    t = time.perf_counter()
    probe_stages_in_batches(m, x, batch_size=64)
    seconds = time.perf_counter() - t
    full, refs = probe_stages(m, x[:2]), staged_reference(ref, m, x[:2])
    err = max(float((full[k].attn[i] - p).nan_to_num().abs().max()) for k in full for i, p in enumerate(refs[k]))
    precision, recall = staged_planted_scores(ref, m, x[:32])
    dirs = write_stage_stores(ref, m, x, work / ref)
    try: write_report(dirs, work / f'{ref}.html'); report = f'yes ({len(dirs)} stores)'
    except Exception as e: report = f'no: {type(e).__name__}: {e}'
    return [family, shown, 'yes', f'{err:.1e}', f'{precision:.2f} / {recall:.2f}', report, f'{seconds:.1f}']


def row(family, ref, timm_name, overrides, n_images, work):
    torch.manual_seed(0)
    m = timm.create_model(timm_name, pretrained=False, **overrides).eval()
    size = m.pretrained_cfg['input_size'][-1]
    x = smooth_images(n_images, size=size)
    shown = timm_name + (f" ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else '')
    try: staged = isinstance(model_adapter(m), StagedAdapter)
    except UnsupportedModel as e: return [family, shown, f'no: {e}', '', '', '', '']
    if staged: return staged_row(family, ref, shown, m, x, work)
    with torch.no_grad():
        for mod in m.modules():                  # BEiT's bias tables start at zero: random ones make the bias matter
            if getattr(mod, 'relative_position_bias_table', None) is not None: mod.relative_position_bias_table.normal_()
    t = time.perf_counter()
    result = probe_in_batches(m, x, batch_size=64)
    seconds = time.perf_counter() - t
    xs = x[:2]
    full = probe(m, xs)
    err = max(float((probe_rows(ref, full, i, p) - p).abs().max()) for i, p in enumerate(reference_attention(ref, m, xs)))
    precision, recall = planted_scores(ref, m, x[:32])
    run = work / ref
    store = write_probe_store(m, x, run, ref)
    try: write_report([run], work / f'{ref}.html'); report = 'yes'
    except Exception as e: report = f'no: {type(e).__name__}: {e}'
    del store, result
    return [family, shown, 'yes', f'{err:.1e}', f'{precision:.2f} / {recall:.2f}', report, f'{seconds:.1f}']


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--images', type=int, default=64, help='probe images per family (default: %(default)s)')
    p.add_argument('--families', nargs='*', default=None, metavar='FAMILY', help='only these families (default: all)')
    add_out_argument(p)
    args = p.parse_args()
    env = environment('cpu')
    print(header(env))
    cols = ['family', 'model', 'probe ok', 'attention check max error', 'planted precision / recall', 'report ok',
            f'seconds for {args.images} images']
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in FAMILIES:
            if args.families is None or fam[0] in args.families: rows.append(row(*fam, args.images, Path(tmp)))
    print('| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
    for r in rows: print('| ' + ' | '.join(r) + ' |')
    print(footer(env))
    if args.out: write_json(args.out, dict(env=env, results=[dict(zip(cols, r)) for r in rows]))


if __name__ == '__main__':
    main()
