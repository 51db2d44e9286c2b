"""Integration tests of vitartifacts.data: bad input through `build_data`, corrupt files in worker processes, the
synthetic dataset's determinism and atomic writes, distributed sharding, and two short trainings (the embedded dataset
and Fashion-MNIST) that must end well above chance."""
import logging, math, shutil, time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from vitartifacts import data as vd
from vitartifacts import synthetic as synth
from vitartifacts.config import Config, setting_names
from vitartifacts.data import synthetic_root
from vitartifacts.data import build_data as build_from_config


def build_data(dataset='', **kw):
    "`data.build_data` with the settings and the options given together by name, as these tests spell them."
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in kw.items() if k in setting_names()}
    settings.setdefault('patch_size', 7 if settings.get('img_size', 224) % 8 else 8)   # the settings check img_size % patch_size
    options = {k: v for k, v in kw.items() if k not in setting_names()}
    return build_from_config(Config(dataset=dataset, **settings), **options)

SMALL = dict(synthetic_train_per_class=8, synthetic_val_per_class=4, photo_names=(), probe_size=8, num_workers=0)


def make_root(root: Path, train=('n01', 'n02'), val=('n01', 'n02'), n=3) -> Path:
    "An ImageFolder root of real JPEGs, n per class."
    for split, classes in (('train', train), ('val', val)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n): Image.new('RGB', (48, 36), (70 * i, 120, 200)).save(root / split / c / f'{c}_{i}.JPEG')
    return root


def folder(root, **kw):
    return build_data(data_path=root, img_size=32, batch_size=2, cache_dir=root.parent / 'cache', photo_names=(), probe_size=2,
                      num_workers=0, **kw)


# ---------------------------------------------------------------- bad roots: one sentence naming the path
def test_good_root(tmp_path):
    data = folder(make_root(tmp_path / 'in100'))
    assert (data.dataset, data.classes, len(data.train_set), len(data.val_set)) == ('imagefolder', ['n01', 'n02'], 6, 6)
    x, y = next(iter(data.train_loader))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32


def one_sentence(msg: str):
    assert msg.count('. ') == 0 and msg.endswith('.'), msg


def test_root_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist') as e: folder(tmp_path / 'nowhere')
    assert str(tmp_path / 'nowhere') in str(e.value); one_sentence(str(e.value))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_split_missing(tmp_path, split):
    root = make_root(tmp_path / 'in100')
    shutil.rmtree(root / split)
    with pytest.raises(FileNotFoundError, match=f'has no {split}/ folder') as e: folder(root)
    assert str(root) in str(e.value); one_sentence(str(e.value))


def test_class_folder_empty(tmp_path):
    root = make_root(tmp_path / 'in100')
    for f in (root / 'val' / 'n02').iterdir(): f.unlink()
    with pytest.raises(FileNotFoundError, match='holds no readable images') as e: folder(root)
    assert str(root / 'val' / 'n02') in str(e.value)


def test_class_sets_differ(tmp_path):
    root = make_root(tmp_path / 'in100', train=('n01', 'n02', 'n03'), val=('n01', 'n02', 'n04'))
    with pytest.raises(ValueError, match='n03 only in train/; n04 only in val/') as e: folder(root)
    assert str(root / 'train') in str(e.value); one_sentence(str(e.value))


def test_no_images_at_all(tmp_path):
    root = tmp_path / 'in100'
    for split in ('train', 'val'):
        for c in ('n01', 'n02'): (root / split / c).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no images at all') as e: folder(root)
    assert str(root / 'train') in str(e.value)


def test_no_class_folders(tmp_path):
    root = tmp_path / 'in100'
    (root / 'train').mkdir(parents=True); (root / 'val').mkdir()
    Image.new('RGB', (8, 8)).save(root / 'train' / 'loose.jpg')
    with pytest.raises(FileNotFoundError, match='holds no class folders'): folder(root)


def test_dataset_names(tmp_path):
    with pytest.raises(ValueError, match="dataset='cifar10' is not one of"): build_data('cifar10')
    with pytest.raises(ValueError, match='needs data_path'): build_data('imagefolder')
    with pytest.raises(ValueError, match='does not read data_path'): build_data('synthetic', data_path=str(tmp_path))


# ---------------------------------------------------------------- corrupt files
def test_non_image_file(tmp_path, caplog):
    root = make_root(tmp_path / 'in100')
    (root / 'train' / 'n01' / 'Thumbs.db').write_bytes(b'\x00' * 100)
    (root / 'train' / 'n02' / 'empty.JPEG').write_bytes(b'')
    (root / 'train' / 'n02' / '.DS_Store').write_bytes(b'junk')  # hidden files are not part of a dataset
    with pytest.raises(ValueError, match='Thumbs.db') as e: folder(root)
    assert 'skip_corrupt=True' in str(e.value)
    with caplog.at_level(logging.WARNING, logger='vitartifacts.data'):
        data = folder(root, skip_corrupt=True)
    assert len(data.train_set) == 6 and len(data.train_set.skipped) == 2
    assert 'Skipped 2 unreadable files' in caplog.text


def test_truncated_jpeg_in_worker(tmp_path, caplog):
    "A JPEG whose header is fine but whose data is cut: an error naming it from inside a loader worker, or skipped and counted."
    root = make_root(tmp_path / 'in100', n=4)
    bad = root / 'train' / 'n01' / 'n01_2.JPEG'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:2000])
    data = build_data(data_path=root, img_size=32, batch_size=8, num_workers=1, cache_dir=tmp_path / 'c', photo_names=(), probe_size=2,
                      mixup_alpha=0, cutmix_alpha=0)
    with pytest.raises(ValueError, match='n01_2.JPEG'): next(iter(data.train_loader))
    with caplog.at_level(logging.WARNING, logger='vitartifacts.data'):
        data = build_data(data_path=root, img_size=32, batch_size=8, num_workers=0, cache_dir=tmp_path / 'c', photo_names=(),
                          probe_size=2, mixup_alpha=0, cutmix_alpha=0, skip_corrupt=True)
        x, y = next(iter(data.train_loader))
    assert x.shape == (8, 3, 32, 32) and data.train_set.decode_failures == 1
    assert 'n01_2.JPEG' in caplog.text
    # labels still belong to their images: the replacement for n01_2 is n01_3, of class 0
    ds = data.train_set
    assert ds[2][1] == ds.targets[3] == 0


# ---------------------------------------------------------------- the synthetic dataset
def test_synthetic_same_seed_same_bytes(tmp_path):
    kw = dict(num_classes=3, train_per_class=4, val_per_class=2, image_size=40)
    a, b = synthetic_root(tmp_path / 'a', seed=3, **kw), synthetic_root(tmp_path / 'b', seed=3, **kw)
    fa = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    assert fa == sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file()) and len(fa) == 3 * 6 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)
    c = synthetic_root(tmp_path / 'a', seed=4, **kw)
    assert (a / fa[0]).read_bytes() != (c / fa[0]).read_bytes()


def test_synthetic_write_is_atomic(tmp_path, monkeypatch):
    calls = []
    real = synth._write_class
    def crash(args):
        calls.append(args)
        if len(calls) == 3: raise OSError('disk full')
        real(args)
    monkeypatch.setattr(synth, '_write_class', crash)
    kw = dict(num_classes=2, train_per_class=3, val_per_class=2, image_size=32)
    with pytest.raises(OSError, match='disk full'): synthetic_root(tmp_path, **kw)
    assert list((tmp_path / 'synthetic').iterdir()) == []  # neither a half-written dataset nor a temporary folder
    monkeypatch.setattr(synth, '_write_class', real)
    root = synthetic_root(tmp_path, **kw)
    assert synth._synthetic_complete(root)
    (root / 'val' / synth.synthetic_classes(2)[1] / f'{synth.synthetic_classes(2)[1]}_00001.JPEG').unlink()  # damaged by hand
    assert not synth._synthetic_complete(root)
    assert synthetic_root(tmp_path, **kw) == root and synth._synthetic_complete(root)  # rebuilt


def test_imagenet_preset_shapes(tmp_path):
    root = synthetic_root(tmp_path, 'imagenet', num_classes=2, train_per_class=4, val_per_class=1)
    sizes = {Image.open(p).size for p in root.rglob('*.JPEG')}
    assert sizes <= {(500, 375), (375, 500)} and (500, 375) in sizes
    assert len(vd.check_imagefolder(root)) == 2


# ---------------------------------------------------------------- transforms, probe set, seeds
def test_transform_outputs(tmp_path):
    root = synthetic_root(tmp_path, 'imagenet', num_classes=2, train_per_class=6, val_per_class=2)
    classes = vd.check_imagefolder(root)
    lo = (-torch.tensor(vd.IMAGENET_DEFAULT_MEAN) / torch.tensor(vd.IMAGENET_DEFAULT_STD)).view(3, 1, 1)
    hi = ((1 - torch.tensor(vd.IMAGENET_DEFAULT_MEAN)) / torch.tensor(vd.IMAGENET_DEFAULT_STD)).view(3, 1, 1)
    for size in (224, 96, 40):
        for tf in (vd.train_transform(size), vd.val_transform(size)):
            ds = vd.CheckedImageFolder(root / 'train', classes, tf, lazy_jpeg=True)
            for i in range(len(ds)):
                x, _ = ds[i]
                assert x.shape == (3, size, size) and x.dtype == torch.float32
                assert (x >= lo - 1e-4).all() and (x <= hi + 1e-4).all()


def test_draft_crop_boxes_match_torchvision(tmp_path):
    "With the same seed our crop samples exactly torchvision's boxes, and the drafted pixels stay close to full decoding."
    root = synthetic_root(tmp_path, 'imagenet', num_classes=1, train_per_class=8, val_per_class=1)
    paths = sorted(root.rglob('train/*/*.JPEG'))
    diffs = []
    for seed, p in enumerate(paths * 3):
        crop = vd.RandomResizedCropDraft(64)
        torch.manual_seed(seed); fast = np.asarray(crop(Image.open(p)), float)
        torch.manual_seed(seed); slow = np.asarray(vd.RandomResizedCropDraft(64, draft=False)(Image.open(p)), float)
        torch.manual_seed(seed); t, l, h, w = vd.tv1.RandomResizedCrop.get_params(Image.open(p), [0.08, 1.0], [3 / 4, 4 / 3])
        ref = np.asarray(Image.open(p).convert('RGB').crop((l, t, l + w, t + h)).resize((64, 64), Image.Resampling.BICUBIC), float)
        assert np.array_equal(slow, ref)  # without draft: exactly torchvision's crop-then-resize, edges included
        diffs.append(np.abs(fast - slow).mean())
    assert np.mean(diffs) < 2.0, diffs  # of 255, on noisy images: draft changes the resampling, not the content


def test_probe_set_fixed_across_runs(tmp_path):
    a = build_data(cache_dir=tmp_path, img_size=32, batch_size=8, seed=0, **SMALL)
    b = build_data(cache_dir=tmp_path, img_size=32, batch_size=8, seed=1, repeated_aug=True, **{**SMALL, 'num_workers': 1})
    assert torch.equal(a.probe_indices, b.probe_indices) and torch.equal(a.probe_images, b.probe_images)
    assert torch.equal(a.probe_labels, torch.tensor([a.val_set.targets[i] for i in a.probe_indices]))
    assert a.probe_images.shape == (8, 3, 32, 32)


def test_augmentations_reproducible_with_workers(tmp_path):
    def first_batch(seed):
        d = build_data(cache_dir=tmp_path, img_size=32, batch_size=8, seed=seed, **{**SMALL, 'num_workers': 2})
        return next(iter(d.train_loader))
    (x1, y1), (x2, y2), (x3, _) = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)


def test_real_photos_offline():
    pics, names = vd.photos(48)
    assert pics.shape == (len(vd.PHOTOS), 3, 48, 48) and names == list(vd.PHOTOS)
    assert pics.std() > 0.3  # real content, not blank


# ---------------------------------------------------------------- torch.distributed
def test_single_process_group(tmp_path):
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        data = build_data(cache_dir=tmp_path, img_size=32, batch_size=8, **SMALL)
        assert isinstance(data.train_loader.sampler.sampler, torch.utils.data.DistributedSampler)
        assert list(data.val_loader.sampler) == list(range(len(data.val_set)))  # one process: every val image, in order
    finally:
        dist.destroy_process_group()


def _rank(rank, world, tmp):
    dist.init_process_group('gloo', init_method=f'file://{tmp}/pg', rank=rank, world_size=world)
    try:
        for repeated in (False, True):
            data = build_data(cache_dir=tmp, img_size=16, batch_size=4, repeated_aug=repeated, val_subset=39, **SMALL)
            torch.save(dict(train=list(data.train_loader.sampler), val=list(data.val_loader.sampler), n=len(data.train_set)),
                       f'{tmp}/rank{rank}-{repeated}.pt')
    finally:
        dist.destroy_process_group()


def test_two_ranks_shard_the_data(tmp_path):
    "Two processes: rank 0 writes the synthetic set, both read it; train and val are split between them."
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f'rank{r}-False.pt') for r in (0, 1))
    assert not set(r0['train']) & set(r1['train']) and len(set(r0['train']) | set(r1['train'])) == r0['n'] == 80
    # 39 val images over 2 ranks: each exactly once (no padding with repeats, which would bias the metrics)
    assert sorted(r0['val'] + r1['val']) == list(range(39)) and len(r0['val']) == 20
    a0, a1 = (torch.load(tmp_path / f'rank{r}-True.pt') for r in (0, 1))
    assert len(a0['train']) == len(a1['train']) == 40  # RepeatAugSampler: each rank an epoch's share
    assert len(set(a0['train']) & set(a1['train'])) > 0  # the repeats of an image go to different ranks


# ---------------------------------------------------------------- short trainings: well above chance
def train_tiny_vit(data, img_size, patch_size, epochs=1, lr=3e-3, seed=0):
    "Train the tiny ViT (AdamW, warmup then cosine, soft-target cross-entropy); return top-1 on the val set and seconds."
    from vitartifacts.models import create_model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core for the model, one for the loader worker; robust on a shared 2-core machine
    try:
        torch.manual_seed(seed)
        t0 = time.time()
        model = create_model('vanilla', size='tiny', num_classes=data.num_classes, img_size=img_size, patch_size=patch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        total = epochs * len(data.train_loader); warm = max(1, total // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        for _ in range(epochs):
            for x, y in data.train_loader:
                x, t = data.mixup_fn(x, y)
                loss = -(t * model(x).log_softmax(-1)).sum(-1).mean()
                opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sched.step()
        model.eval(); correct = n = 0
        with torch.no_grad():
            for x, y in data.val_loader: correct += (model(x).argmax(1) == y).sum().item(); n += len(y)
        return correct / n, time.time() - t0
    finally:
        torch.set_num_threads(threads)


def test_tiny_vit_learns_fashion_mnist(tmp_path):
    "Fashion-MNIST from Debian's package (.ci/run installs it): 24,000 training images once, all 10,000 test images."
    data = build_data('fashion-mnist', cache_dir=tmp_path, img_size=28, batch_size=64, num_workers=1, mixup_alpha=0, cutmix_alpha=0,
                      three_augment=False, color_jitter=0, crop_scale=(1.0, 1.0), train_subset=24000, photo_names=(), probe_size=16)
    assert (len(data.train_set), len(data.val_set), data.num_classes) == (24000, 10000, 10)
    acc, seconds = train_tiny_vit(data, img_size=28, patch_size=7)
    print(f"Fashion-MNIST: tiny ViT top-1 {acc:.3f} after {len(data.train_loader)} steps, {seconds:.0f} s")
    assert acc > 0.65, acc  # chance is 0.10


def test_tiny_vit_learns_synthetic(tmp_path):
    "The embedded default, light augmentation, three epochs: far above the 0.10 of chance."
    data = build_data(cache_dir=tmp_path, img_size=32, batch_size=64, num_workers=1, mixup_alpha=0, cutmix_alpha=0,
                      three_augment=False, crop_scale=(0.35, 1.0), photo_names=(), probe_size=16)
    acc, seconds = train_tiny_vit(data, img_size=32, patch_size=4 * 2, epochs=3)
    print(f"synthetic: tiny ViT top-1 {acc:.3f} after {3 * len(data.train_loader)} steps, {seconds:.0f} s")
    assert acc > 0.4, acc


if __name__ == '__main__':
    # The longer Fashion-MNIST record run of BENCHMARKS.md: .venv/bin/python tests/test_data.py EPOCHS PATCH_SIZE
    import sys, tempfile
    epochs, patch = (int(a) for a in (sys.argv[1:] + ['5', '7'])[:2])
    data = build_data('fashion-mnist', cache_dir=tempfile.mkdtemp(), img_size=28, batch_size=64, num_workers=1, mixup_alpha=0,
                      cutmix_alpha=0, three_augment=False, color_jitter=0, crop_scale=(1.0, 1.0), photo_names=(), probe_size=16)
    acc, seconds = train_tiny_vit(data, img_size=28, patch_size=patch, epochs=epochs)
    print(f"Fashion-MNIST, all 60,000 training images x {epochs} epochs, patch {patch}: "
          f"top-1 {acc:.4f} on the 10,000 test images, {seconds:.0f} s, {epochs * len(data.train_loader)} steps")
