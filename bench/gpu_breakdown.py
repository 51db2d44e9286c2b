"""Where a DeiT III ViT-S/16 training step spends its GPU time: forward, backward, LAMB, and the batched augmentation.

    python bench/gpu_breakdown.py      (CUDA only; prints medians of 20 steps and two profiler tables)
"""
import sys, os, time, statistics, torch, tempfile
import torch.nn.functional as F
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from vitartifacts.models import create_model
from vitartifacts.optim import Lamb, param_groups
from vitartifacts.gpudata import BatchAugment, BatchMixup, CachedLoader, ImageCache
def med(fn, n=20, w=5):
    for _ in range(w): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000
raw = create_model('vanilla', 'small').cuda().train(); model = torch.compile(raw)
opt = Lamb(param_groups(raw, 0.05), lr=4e-3, weight_decay=0.05)
x = torch.randn(256, 3, 224, 224, device='cuda', dtype=torch.bfloat16); t = torch.rand(256, 100, device='cuda')
def fb():
    with torch.autocast('cuda', dtype=torch.bfloat16): loss = F.binary_cross_entropy_with_logits(model(x).float(), t)
    loss.backward()
def full():
    fb(); opt.step(); opt.zero_grad(set_to_none=True)
def fwd():
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16): model(x)
print(f'forward only (no grad)   {med(fwd):6.1f} ms', flush=True)
print(f'forward+backward         {med(lambda: (fb(), opt.zero_grad(set_to_none=True))):6.1f} ms', flush=True)
print(f'+ LAMB step (clip inside) {med(full):6.1f} ms', flush=True)
def ostep(): opt.step()
fb()
print(f'LAMB step alone          {med(ostep):6.1f} ms', flush=True)
import numpy as np
imgs = (torch.rand(2048, 3, 256, 320, device='cuda') * 255).to(torch.uint8)
cache = ImageCache(imgs, torch.randint(0, 100, (2048,)), torch.full((2048,), 320), torch.zeros(2048, dtype=torch.bool), [str(i) for i in range(100)])
aug, mix = BatchAugment(224, out_dtype=torch.bfloat16), BatchMixup(num_classes=100)
loader = CachedLoader(cache, 256, 'cuda', aug, mix, out_dtype=torch.bfloat16)
k = iter(range(10**6))
print(f'augment+mixup batch 256  {med(lambda: loader.batch(0, next(k) % 8)):6.1f} ms', flush=True)
rng = np.random.default_rng(0)
idx = np.arange(256); h, w = cache.sizes(idx); im, wd, tr = cache.batch(idx, 'cuda')
p = aug.sample(rng, h, w)
print(f'host param sampling      {med(lambda: aug.sample(rng, h, w)):6.1f} ms', flush=True)
print(f'augment apply only       {med(lambda: aug.apply(im, wd, tr, p)):6.1f} ms', flush=True)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as pr:
    for _ in range(3): aug.apply(im, wd, tr, p)
    torch.cuda.synchronize()
print(pr.key_averages().table(sort_by='cuda_time_total', row_limit=12, max_name_column_width=60))
with profile(activities=[ProfilerActivity.CUDA]) as pr:
    for _ in range(3): full()
    torch.cuda.synchronize()
print(pr.key_averages().table(sort_by='cuda_time_total', row_limit=25, max_name_column_width=60))
