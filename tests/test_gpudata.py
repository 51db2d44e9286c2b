"""Checks of vitartifacts.gpudata that are too slow or too file-heavy for its notebook: the cache built by worker
processes and by `prepare_data_command`, both gather paths, the dense-matmul resampling, and the whole augmentation
pipeline against DeiT III's PIL pipeline in distribution."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vitartifacts.data import CheckedImageFolder, check_imagefolder
from vitartifacts.gpudata import (BatchAugment, BatchMixup, CachedLoader, ImageCache, pil_reference_transform,
                                  prepare_cache, prepare_data_command)
from vitartifacts.testing import smooth_image

SHAPES = [(375, 500), (500, 375), (256, 256), (200, 600), (333, 500), (480, 640), (240, 320), (600, 400)]


def image_folder(root, classes=('a', 'b', 'c'), per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            h, w = SHAPES[(k + len(c)) % len(SHAPES)]
            smooth_image(rng, h, w).save(root / c / f'{k}.jpg', quality=90)
    return root


def test_workers_build_the_same_cache(tmp_path):
    root = image_folder(tmp_path / 'train')
    a = ImageCache.load(prepare_cache(root, tmp_path / 'inline', num_workers=0))
    b = ImageCache.load(prepare_cache(root, tmp_path / 'pool', num_workers=2))
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    for k in ('labels', 'widths', 'transposed'): assert torch.equal(getattr(a, k), getattr(b, k))
    assert json.loads((tmp_path / 'pool' / 'files.json').read_text())[0] == 'a/0.jpg'


def test_overwrite_replaces_and_leaves_no_temporaries(tmp_path):
    root = image_folder(tmp_path / 'train')
    out = prepare_cache(root, tmp_path / 'cache', short_side=64, num_workers=0)
    with pytest.raises(ValueError, match='overwrite=True'): prepare_cache(root, out, short_side=96, num_workers=0)
    prepare_cache(root, out, short_side=96, num_workers=0, overwrite=True)
    assert ImageCache.load(out).short_side == 96
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'train']


def test_prepare_data_command(tmp_path):
    image_folder(tmp_path / 'data' / 'train')
    image_folder(tmp_path / 'data' / 'val', classes=('a', 'c'), per_class=2, seed=1)
    out = prepare_data_command(tmp_path / 'data', tmp_path / 'cache', img_size=112, num_workers=0)
    train, val = ImageCache.load(out / 'train'), ImageCache.load(out / 'val')
    assert (train.short_side, train.long_side) == (128, 160)
    assert val.classes == train.classes == ['a', 'b', 'c']
    assert val.labels.tolist() == [0, 0, 2, 2]               # indices of the training classes
    image_folder(tmp_path / 'bad' / 'train', classes=('a',))
    image_folder(tmp_path / 'bad' / 'val', classes=('a', 'z'))
    with pytest.raises(ValueError, match='training classes lack'): prepare_data_command(tmp_path / 'bad', tmp_path / 'c2', num_workers=0)
    with pytest.raises(FileNotFoundError, match='train/'): prepare_data_command(tmp_path / 'data' / 'train', tmp_path / 'c3')


def test_same_classes_and_samples_as_the_pil_path(tmp_path):
    "Hidden folders and files are skipped as `vitartifacts.data` skips them: the cache holds the PIL path's classes and (file, label) list."
    root = tmp_path / 'data'
    for split in ('train', 'val'): image_folder(root / split)
    (root / 'train' / '.ipynb_checkpoints').mkdir()                          # a hidden folder is no class
    (root / 'train' / 'a' / '._0.jpg').write_bytes(b'\x00\x05\x16\x07AppleDouble')  # macOS metadata, not an image
    (root / 'train' / 'b' / '.thumbs').mkdir()                               # images in a hidden folder are not samples
    smooth_image(np.random.default_rng(1), 64, 64).save(root / 'train' / 'b' / '.thumbs' / 'x.jpg')
    classes = check_imagefolder(root)
    pil = CheckedImageFolder(root / 'train', classes)
    out = prepare_cache(root / 'train', tmp_path / 'cache', num_workers=0)
    cache = ImageCache.load(out)
    assert cache.classes == classes == ['a', 'b', 'c']
    files = json.loads((out / 'files.json').read_text())
    assert [(str(root / 'train' / f), int(y)) for f, y in zip(files, cache.labels)] == pil.samples


def test_memory_map_and_device_copy_give_the_same_batches(tmp_path):
    cache = ImageCache.load(prepare_cache(image_folder(tmp_path / 'train'), tmp_path / 'cache', short_side=64, num_workers=0))
    on_device = cache.to('cpu')
    assert isinstance(cache.images, np.ndarray) and isinstance(on_device.images, torch.Tensor)
    kw = dict(batch_size=4, augment=BatchAugment(img_size=48), mixup=BatchMixup(num_classes=3), seed=3)
    for (x1, t1), (x2, t2) in zip(CachedLoader(cache, **kw), CachedLoader(on_device, **kw)):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)


def test_matmul_resampling_and_bf16_output(tmp_path):
    rng = np.random.default_rng(0)
    cache = ImageCache.from_images([smooth_image(rng, *s) for s in SHAPES], range(8))
    images, _, transposed = cache.batch(np.arange(8))
    h, w = cache.sizes(np.arange(8))
    params = BatchAugment().sample(np.random.default_rng(1), h, w)
    bag = BatchAugment(method='bag').apply(images, transposed, params)
    mm = BatchAugment(method='matmul').apply(images, transposed, params)
    torch.testing.assert_close(mm, bag, atol=1e-4, rtol=0)
    for dtype in (torch.float16, torch.bfloat16):      # half-precision resampling, as on a GPU's tensor cores
        half = BatchAugment(method='matmul', resample_dtype=dtype).apply(images, transposed, params)
        # float16 within half a grey level of float32 (seen: 0.24), bfloat16 (8-bit mantissa) within 3 (seen: 2.0)
        levels = 0.5 if dtype == torch.float16 else 3.0
        torch.testing.assert_close(half, bag, atol=levels / 255 / 0.224, rtol=0)
    bf = BatchAugment(out_dtype=torch.bfloat16).apply(images, transposed, params)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), bag, atol=0.05, rtol=0.01)


def test_resume_in_every_process(tmp_path):
    rng = np.random.default_rng(0)
    cache = ImageCache.from_images([smooth_image(rng, *SHAPES[k % 8]) for k in range(24)], [k % 3 for k in range(24)], short_side=48)
    make = lambda rank: CachedLoader(cache, 4, augment=BatchAugment(img_size=32), mixup=BatchMixup(num_classes=3),
                                     seed=5, rank=rank, world_size=2)
    for rank in (0, 1):
        straight = make(rank)
        list(straight); run = list(straight)                    # epochs 0 and 1
        interrupted = make(rank)
        list(interrupted); it = iter(interrupted); next(it)     # killed after one batch of epoch 1
        resumed = make(rank); resumed.load_state_dict(interrupted.state_dict())
        rest = list(resumed)
        assert len(rest) == len(run) - 1
        for (a, ta), (b, tb) in zip(rest, run[1:]): assert torch.equal(a, b) and torch.equal(ta, tb)
    with pytest.raises(ValueError, match='seed'): make(0).load_state_dict(dict(epoch=0, step=0, seed=6))


def per_image_stats(x):
    "Per-image channel means and stds in [0, 1] units, and whether the image is gray, from normalized batches."
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    x = x.float() * std + mean
    gray = ((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 0.02) & ((x[:, 1] - x[:, 2]).abs().amax((1, 2)) < 0.02)
    sharpness = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))     # small crops are upscaled more: smoother
    return x.mean((2, 3)).numpy(), x.std((2, 3)).numpy(), gray.numpy(), sharpness.numpy()


def test_same_distribution_as_the_pil_pipeline():
    """Whole pipeline, many draws: per-image colour statistics, sharpness and the gray share agree with DeiT III's PIL
    transform (KS tests; these reject the pipeline without ColorJitter, with jitter 0.6, without 3-Augment, or with
    crops of scale (0.08, 0.5))."""
    rng = np.random.default_rng(0)
    cache = ImageCache.from_images([smooth_image(rng, 375, 500) for _ in range(4)], range(4))
    sources = [Image.fromarray(np.ascontiguousarray(np.asarray(cache.images[k])[:, :, :int(cache.widths[k])].transpose(1, 2, 0)))
               for k in range(4)]       # PIL gets exactly the cached pixels
    n = 400
    idx = np.arange(n) % 4
    images, widths, transposed = cache.batch(idx)
    ours = torch.cat([BatchAugment(img_size=112)(images[s:s + 100], widths[s:s + 100], transposed[s:s + 100],
                                                 np.random.default_rng(s)) for s in range(0, n, 100)])
    tf = pil_reference_transform(112)
    torch.manual_seed(1)                             # the PIL reference draws from torch's generator
    ref = torch.stack([tf(sources[k]) for k in idx])
    (om, osd, og, osh), (rm, rsd, rg, rsh) = per_image_stats(ours), per_image_stats(ref)
    for c in range(3):
        assert stats.ks_2samp(om[:, c], rm[:, c]).pvalue > 1e-3, ('mean', c)
        assert stats.ks_2samp(osd[:, c], rsd[:, c]).pvalue > 1e-3, ('std', c)
    assert stats.ks_2samp(osh, rsh).pvalue > 1e-3
    assert abs(og.mean() - 1 / 3) < 0.07 and abs(rg.mean() - 1 / 3) < 0.07, (og.mean(), rg.mean())
