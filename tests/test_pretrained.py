"""`vitartifacts probe --model NAME --pretrained` loads timm's pretrained weights through timm and the Hugging Face hub,
tested offline on a local hub cache this test builds (the standard models--timm--NAME/snapshots/REV/ layout, random
weights), with HF_HUB_OFFLINE=1 as a machine without network runs it."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

NAME = 'vit_tiny_patch16_224.augreg_in21k'           # a small ViT whose weights timm takes from the hub
REV = '0123456789abcdef0123456789abcdef01234567'


def command():
    exe = shutil.which('vitartifacts', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'vitartifacts.cli']


def hub_cache(root: Path, name: str = NAME) -> Path:
    "A Hugging Face hub cache holding `name`'s weights (random, seeded) as timm would have downloaded them."
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    repo = root / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    snap = repo / 'snapshots' / REV
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snap / 'model.safetensors')
    (snap / 'config.json').write_text(json.dumps(dict(architecture=name.split('.')[0], num_classes=model.num_classes,
                                                      pretrained_cfg=dict(model.pretrained_cfg))))
    (repo / 'refs').mkdir(); (repo / 'refs' / 'main').write_text(REV)
    return snap / 'model.safetensors'


def test_pretrained_by_name_from_the_local_hub_cache(tmp_path):
    weights = hub_cache(tmp_path / 'hub')
    images = tmp_path / 'imgs'; images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2): Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(images / f'{i}.png')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'hub'), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    res = subprocess.run(command() + ['probe', '--model', NAME, '--pretrained', '--images', str(images), '--n_images', '2',
                                      '--out', str(tmp_path / 'out')], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    from vitartifacts.store import ProbeStore
    store = ProbeStore(tmp_path / 'out')
    info = store.meta['model']
    assert info['weights'] == f'hf-hub:timm/{NAME}' and info['img_size'] == 224 and store.layout.grid == (14, 14)
    # the norms are those of the cached weights, on images through the model's own transform (crop 0.9, mean 0.5)
    import timm
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config
    from vitartifacts.probe import probe
    model = timm.create_model(NAME, pretrained=False); model.load_state_dict(load_file(weights)); model.eval()
    tf = create_transform(**resolve_data_config({}, model=model))
    x = torch.stack([tf(Image.open(images / f'{i}.png').convert('RGB')) for i in range(2)])
    ref = probe(model, x, attention=False).norms.numpy()
    np.testing.assert_allclose(np.sort(store.load(0)['norms'], axis=1), np.sort(ref, axis=1), rtol=2e-3)


def test_pretrained_without_network_or_cache_is_one_sentence(tmp_path):
    (tmp_path / 'imgs').mkdir(); Image.new('RGB', (64, 64)).save(tmp_path / 'imgs' / 'a.png')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'empty'), HF_HUB_OFFLINE='1')
    res = subprocess.run(command() + ['probe', '--model', NAME, '--pretrained', '--images', str(tmp_path / 'imgs'),
                                      '--out', str(tmp_path / 'out')], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and 'Traceback' not in res.stderr and res.stderr.count('\n') == 1, res.stderr
    assert f"not in the local hub cache {tmp_path / 'empty'}" in res.stderr and 'HF_HUB_OFFLINE is set' in res.stderr
    assert 'pass --weights FILE' in res.stderr and not (tmp_path / 'out').exists()
    res = subprocess.run(command() + ['probe', '--images', str(tmp_path / 'imgs'), '--out', str(tmp_path / 'out')],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and 'probe needs --weights FILE, or --model NAME --pretrained' in res.stderr, res.stderr


def test_the_pretrained_notebook_runs_under_papermill_on_the_local_cache(tmp_path):
    "nbs/workflows/pretrained.ipynb, as a user runs it headless: two timm families from the hub cache, side by side."
    import nbformat
    names = [NAME, 'deit_tiny_distilled_patch16_224.fb_in1k']          # a ViT and a distilled DeiT (its dist token)
    for n in names: hub_cache(tmp_path / 'hub', n)
    images = tmp_path / 'imgs'; images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3): Image.fromarray(rng.integers(0, 255, (240, 250, 3), dtype=np.uint8)).save(images / f'{i}.png')
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'hub'), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'pretrained.ipynb'
    res = subprocess.run([sys.executable, '-m', 'papermill', str(repo / 'nbs' / 'workflows' / 'pretrained.ipynb'), str(out),
                          '-y', json.dumps(dict(models=names, images=str(images), n_images=3, out_dir=str(tmp_path / 'runs'))),
                          '--cwd', str(repo), '--no-progress-bar'], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    from vitartifacts.store import ProbeStore
    stores = [ProbeStore(tmp_path / 'runs' / n) for n in names]
    assert [s.meta['model']['weights'] for s in stores] == [f'hf-hub:timm/{n}' for n in names]
    assert stores[1].layout.prefix_names == ['cls', 'dist']
    nb = nbformat.read(out, as_version=4)
    figures = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
               if 'application/vnd.plotly.v1+json' in o.get('data', {})]
    titles = [f['data']['application/vnd.plotly.v1+json']['layout'].get('title', {}).get('text', '') for f in figures]
    assert len(figures) == 2 and 'outlier ratio' in titles[0], titles
    norm_maps = figures[1]['data']['application/vnd.plotly.v1+json']['data']
    assert len(norm_maps) == 3 * len(names) and all(t['type'] == 'heatmap' for t in norm_maps)   # 3 images x 2 models
