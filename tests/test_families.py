"""The probe on every ViT family it reads (DeiT distilled, SigLIP, EVA-02, BEiT, CaiT), checked against timm and against
attention recomputed here from q, k and each family's rope or bias; planted outliers found; each family's store reported."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.crossvit import CrossVit
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from vitartifacts import analysis as A
from vitartifacts.probe import UnsupportedModel, probe
from vitartifacts.probing import model_normalization, probe_in_batches
from vitartifacts.report import write_report
from vitartifacts.store import ProbeStore
from vitartifacts.testing import plant_outliers, smooth_images

SIZE, PATCH = 48, 8
GRID = SIZE // PATCH
TINY = dict(img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=4, num_heads=2, num_classes=10)


def _randomize_bias_tables(m):
    "BEiT's relative position bias tables start at zero; random ones make the bias matter."
    with torch.no_grad():
        for mod in m.modules():
            if getattr(mod, 'relative_position_bias_table', None) is not None: mod.relative_position_bias_table.normal_()
    return m


FAMILIES = {
    'distilled': lambda: VisionTransformerDistilled(**TINY),
    'siglip': lambda: VisionTransformer(class_token=False, global_pool='map', **TINY),
    'eva': lambda: Eva(use_rot_pos_emb=True, ref_feat_shape=(GRID, GRID), swiglu_mlp=True, scale_mlp=True, **TINY),
    'eva_separate_qkv_reg': lambda: Eva(use_rot_pos_emb=True, qkv_fused=False, num_reg_tokens=2, qk_norm=True, **TINY),
    'eva_attention_rope': lambda: Eva(use_rot_pos_emb=True, attn_type='rope', **TINY),
    'beit': lambda: _randomize_bias_tables(Beit(use_rel_pos_bias=True, init_values=0.1, **TINY)),
    'beit_shared_bias': lambda: _randomize_bias_tables(Beit(use_shared_rel_pos_bias=True, **TINY)),
    'cait': lambda: Cait(img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=4, depth_token_only=2, num_heads=2,
                         num_classes=10, init_values=1.0),
}
PREFIX = dict(distilled=['cls', 'dist'], siglip=[], eva=['cls'], eva_separate_qkv_reg=['cls', 'reg0', 'reg1'], eva_attention_rope=['cls'], beit=['cls'],
              beit_shared_bias=['cls'], cait=['cls'])


@pytest.fixture(autouse=True)
def one_thread():
    "The suite shares two cores."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(name):
    torch.manual_seed(0)
    return FAMILIES[name]().eval()


def attention_modules(m):
    "Every block's attention module in the order the blocks run (both of CaiT's block lists)."
    return [b.attn for b in list(m.blocks) + list(getattr(m, 'blocks_token_only', None) or [])]


# ---- independent recomputations: q and k from the module's own projections, then each family's rope or bias ----

def _heads(t, H):                                        # B, N, H*D -> B, H, N, D
    return t.reshape(t.shape[0], t.shape[1], H, -1).transpose(1, 2)


def _merge(t):                                           # B, H, N, D -> B, N, H*D
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def ref_vit(attn, x, attn_mask=None, is_causal=False):
    assert attn_mask is None and not is_causal           # the probe's images are never masked
    q, k, v = attn.qkv(x).chunk(3, -1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return p, attn.proj(attn.norm(_merge(p @ v)))


def _rotate(t, rope):
    "Rotary embedding in timm's 'cat' layout (sin and cos halves of `rope`), pairs of neighbouring features rotated."
    sin, cos = rope.chunk(2, -1)
    pairs = torch.stack([-t[..., 1::2], t[..., ::2]], -1).reshape(t.shape)
    return t * cos + pairs * sin


def ref_eva(attn, x, rope=None, attn_mask=None, is_causal=False):
    assert attn_mask is None and not is_causal
    H = attn.num_heads
    if attn.qkv is not None:                             # EvaAttention: q and v biases, none for k; AttentionRope: the Linear's
        q_bias = getattr(attn, 'q_bias', None)
        bias = attn.qkv.bias if q_bias is None else torch.cat([q_bias, torch.zeros_like(q_bias), attn.v_bias])
        q, k, v = (_heads(t, H) for t in F.linear(x, attn.qkv.weight, bias).chunk(3, -1))
    else:
        q, k, v = (_heads(proj(x), H) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = attn.q_norm(q), attn.k_norm(k)
    n = attn.num_prefix_tokens                           # prefix tokens are not rotated
    q, k = (torch.cat([t[:, :, :n], _rotate(t[:, :, n:], rope)], 2) for t in (q, k))
    p = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return p, attn.proj(attn.norm(_merge(p @ v)))


def ref_beit(attn, x, shared_rel_pos_bias=None):
    H, N = attn.num_heads, x.shape[1]
    bias = None if attn.q_bias is None else torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    q, k, v = (_heads(t, H) for t in F.linear(x, attn.qkv.weight, bias).chunk(3, -1))
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn.relative_position_bias_table is not None:   # one learned bias per head and relative offset (CLS: 3 extra entries)
        logits = logits + attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(N, N, H).permute(2, 0, 1)
    if shared_rel_pos_bias is not None: logits = logits + shared_rel_pos_bias
    p = logits.softmax(-1)
    return p, attn.proj(_merge(p @ v))


def ref_talking_heads(attn, x):
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(x).chunk(3, -1))
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mix = lambda lin, a: torch.einsum('gh,bhij->bgij', lin.weight, a) + lin.bias[:, None, None]   # mixes the heads
    p = mix(attn.proj_l, logits).softmax(-1)             # the probabilities: after the softmax, before proj_w
    return p, attn.proj(_merge(mix(attn.proj_w, p) @ v))


def ref_class_attn(attn, x):
    q, k, v = (_heads(lin(t), attn.num_heads) for lin, t in ((attn.q, x[:, :1]), (attn.k, x), (attn.v, x)))
    p = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)                 # B, H, 1, T: the CLS row
    return p, attn.proj(_merge(p @ v))


REFERENCES = dict(distilled=[ref_vit], siglip=[ref_vit], eva=[ref_eva], eva_separate_qkv_reg=[ref_eva], eva_attention_rope=[ref_eva], beit=[ref_beit],
                  beit_shared_bias=[ref_beit], cait=[ref_talking_heads, ref_class_attn])


def reference_attention(name, m, x):
    "Per block: the probabilities recomputed here, each checked first to rebuild the module's own (fused) output."
    calls, hs = [], [a.register_forward_hook(lambda mod, args, kw, out: calls.append((mod, args, kw, out)), with_kwargs=True)
                     for a in attention_modules(m)]
    try:
        with torch.no_grad(): m(x)
    finally:
        for h in hs: h.remove()
    refs, n_self = REFERENCES[name], len(m.blocks)
    probs = []
    with torch.no_grad():
        for i, (mod, args, kw, out) in enumerate(calls):
            p, rebuilt = refs[min(i // n_self, len(refs) - 1)](mod, *args, **kw)
            torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)   # the reference is the model's own computation
            probs.append(p)
    return probs


def probe_rows(name, r, i, p):
    "The probe's rows for reference probabilities p of block i (CaiT: the patches' square, or the CLS row)."
    if name != 'cait': return r.attn[i]
    return r.attn[i][:, :, 1:, 1:] if i < r.layout.cls_joins else r.attn[i][:, :, :1]


# ---- the checks ----

@pytest.fixture(scope='module')
def images():
    return smooth_images(4, size=SIZE)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_norms_equal_the_familys_own_intermediates(name, images):
    m = make(name)
    r = probe(m, images, features=[1])
    lay = r.layout
    assert lay.prefix_names == PREFIX[name] and lay.n_tokens == lay.n_prefix + GRID * GRID
    with torch.no_grad():
        if name == 'cait':                                   # timm returns the self-attention blocks' patch tokens ...
            inter = torch.stack(m.forward_intermediates(images, output_fmt='NLC', intermediates_only=True))
            torch.testing.assert_close(r.norms[:4, :, 1:], inter.norm(dim=-1), atol=1e-5, rtol=1e-5)
            x, cls, cls_norms = m.blocks(m.pos_drop(m.patch_embed(images) + m.pos_embed)), m.cls_token.expand(4, -1, -1), []
            for blk in m.blocks_token_only:                  # ... and the class-attention blocks run on them by hand
                cls = blk(x, cls); cls_norms.append(cls.norm(dim=-1)[:, 0])
            torch.testing.assert_close(r.norms[4:6, :, 0], torch.stack(cls_norms), atol=1e-5, rtol=1e-5)
            assert r.norms[:4, :, 0].isnan().all() and not r.norms[4:].isnan().any()
            assert (r.norms[4:6, :, 1:] == r.norms[3:4, :, 1:]).all()
            assert r.features[1][:, 0].isnan().all()
        else:
            with_prefix = m.num_prefix_tokens > 0
            inter = m.forward_intermediates(images, output_fmt='NLC', intermediates_only=True, return_prefix_tokens=with_prefix)
            blocks = torch.stack([torch.cat(t[::-1], 1) if with_prefix else t for t in inter])   # depth, B, T, C
            torch.testing.assert_close(r.norms[:-1], blocks.norm(dim=-1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r.features[1], blocks[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.norms[-1], m.forward_features(images).norm(dim=-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.logits, m(images), atol=1e-5, rtol=1e-5)
    assert r.massive.values.shape == (r.depth, 3) and not r.massive.values.isnan().any()


@pytest.mark.parametrize('name', list(FAMILIES))
def test_attention_equals_an_independent_recomputation(name, images):
    m = make(name)
    flags = [getattr(a, 'fused_attn', None) for a in attention_modules(m)]
    r = probe(m, images)
    assert [getattr(a, 'fused_attn', None) for a in attention_modules(m)] == flags   # the fused kernel is back
    refs = reference_attention(name, m, images)
    assert len(refs) == r.depth == r.attn.shape[0]
    for i, p in enumerate(refs):
        got = probe_rows(name, r, i, p)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.attn_prefix, r.attn[:, :, :, :r.layout.n_prefix], equal_nan=True)
    mean = r.attn.nanmean(3) if name == 'cait' else r.attn.mean(3)
    torch.testing.assert_close(r.attn_received, mean, atol=1e-6, rtol=0)


def test_cait_shows_where_the_cls_token_is_absent(images):
    r = probe(make('cait'), images)
    j = r.layout.cls_joins
    assert j == 4 and r.depth == 6 and r.attn.shape == (6, 4, 2, 1 + GRID * GRID, 1 + GRID * GRID)
    assert r.attn[:j, :, :, 0].isnan().all() and (r.attn[:j, :, :, 1:, 0] == 0).all()   # no CLS row, nobody attends to it
    assert r.attn[j:, :, :, 1:].isnan().all() and not r.attn[j:, :, :, 0].isnan().any()   # class attention: the CLS row only
    assert not r.attn_received.isnan().any()


def test_cait_rollout_passes_absent_tokens_through(images):
    m = make('cait')
    r = probe(m, images)
    j, T = r.layout.cls_joins, r.layout.n_tokens
    roll = A.attention_rollout(r.attn)
    assert np.isfinite(roll).all()
    np.testing.assert_allclose(roll.sum(-1), np.ones((4, T)), atol=1e-9)
    one = A.attention_rollout(r.attn[j:j + 1], residual=False)          # one class-attention block: the CLS row is its attention,
    np.testing.assert_allclose(one[:, 0], r.attn[j, :, :, 0].double().mean(1).numpy(), atol=1e-7)
    np.testing.assert_array_equal(one[:, 1:], np.broadcast_to(np.eye(T)[1:], (4, T - 1, T)))   # the patches pass it unchanged
    first = A.attention_rollout(r.attn[:1], residual=False)             # a self-attention block: the absent CLS token is itself
    np.testing.assert_array_equal(first[:, 0], np.broadcast_to(np.eye(T)[0], (4, T)))
    assert A.rollout_maps(m, images).shape == (4, GRID, GRID) and np.isfinite(A.rollout_maps(m, images)).all()


def test_the_distillation_token_is_a_sink_of_its_own(images):
    r = probe(make('distilled'), images, attention='summary')
    assert A.prefix_tokens(r.layout) == {'cls': 0, 'dist': 1}
    shares = A.sink_share(r.attn_received, r.layout)
    np.testing.assert_allclose(shares['dist'], r.attn_received[..., 1].mean(1).numpy(), atol=1e-6)
    total = shares['cls'] + shares['dist'] + shares['patches']
    np.testing.assert_allclose(total, np.ones_like(total), atol=1e-5)
    assert A.prefix_maps(r.attn_prefix, r.layout, 'dist').shape == (4, 4, 2, GRID, GRID)


def test_views_that_need_a_cls_token_say_so(images):
    m = make('siglip')
    r = probe(m, images, attention='summary')
    assert r.layout.cls_index is None and r.layout.n_prefix == 0
    with pytest.raises(ValueError, match="token='cls' is not a prefix token of this model; it has none"):
        A.cls_maps(r.attn_prefix, r.layout)
    with pytest.raises(ValueError, match='this model has no CLS token'):
        A.rollout_maps(m, images)
    assert A.register_maps(r.attn_prefix, r.layout).shape == (4, 4, 2, 0, GRID, GRID)
    assert 'cls' not in A.sink_share(r.attn_received, r.layout)


def plant(name, m, where):
    "High-norm tokens at `where` (bool [K, T]) from block 1 on; CaiT's self-attention blocks carry the patches only."
    return plant_outliers(m, 1, where[:, 1:] if name == 'cait' else where)


@pytest.mark.parametrize('name', list(FAMILIES))
def test_planted_outliers_are_found_exactly(name):
    m, x = make(name), smooth_images(32, size=SIZE)
    clean = probe(m, x, attention=False)
    lay = clean.layout
    where = torch.zeros(32, lay.n_tokens, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for i in range(32): where[i, lay.n_prefix + torch.randperm(GRID * GRID, generator=g)[:2]] = True
    handle = plant(name, m, where)
    try: art = probe(m, x, attention=False)
    finally: handle.remove()
    truth = where[:, lay.n_prefix:].numpy()
    for detector in ('bimodal', 'sigma'):
        o = A.detect_outliers(art.norms, lay, detector)
        for layer in range(1, art.depth):                    # from the planted block on (CaiT: its class-attention blocks too)
            np.testing.assert_array_equal(o.mask[layer], truth, err_msg=f'{detector}, layer {layer}')
    assert A.detect_outliers(art.norms, lay).ratio[0] == 0
    np.testing.assert_array_equal(A.detect_outliers(clean.norms, lay).ratio, np.zeros(clean.depth + 1))   # clean: nothing


def write_probe_store(m, x, run_dir, name):
    "A probe-only run folder, written as `vitartifacts probe` writes one."
    mean, std = model_normalization(m)
    store = ProbeStore(run_dir, attn_dtype='float16')
    store.append(0, probe_in_batches(m, x, batch_size=4), images=x, labels=None, mean=mean, std=std,
                 model_info=dict(weights='random', timm_name=type(m).__name__, img_size=SIZE, family=name))
    return store


@pytest.mark.parametrize('name', list(FAMILIES))
def test_a_probe_only_store_of_each_family_makes_a_report(name, images, tmp_path):
    store = write_probe_store(make(name), images, tmp_path / name, name)
    assert store.layout.prefix_names == PREFIX[name]
    out = write_report([tmp_path / name], tmp_path / 'report.html', gif=False)
    page = out.read_text()
    assert page.startswith('<!doctype html>') or page.lower().startswith('<!doctype html>')
    assert f'"name": "{name}"' in page or f'"name":"{name}"' in page


def test_unsupported_families_get_one_sentence():
    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=10)
    cross = CrossVit(img_size=[32, 32], patch_size=[8, 16], embed_dim=[16, 32], depth=[[1, 1, 0]], num_heads=[2, 2],
                     mlp_ratio=[1, 1, 1], num_classes=10)
    for m, family in ((swin, 'SwinTransformer'), (cross, 'CrossVit')):
        with pytest.raises(UnsupportedModel, match=f'{family} is not one of them; hierarchical and multi-branch models') as e:
            probe(m, torch.randn(1, 3, 32, 32))
        assert str(e.value).count('. ') == 0 and str(e.value).endswith('.')   # one sentence


def test_the_probe_command_refuses_an_unsupported_family_in_one_sentence(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file
    from vitartifacts.cli import main
    from vitartifacts.testing import smooth_image
    pvt = timm.create_model('pvt_v2_b0', num_classes=10)
    save_file(pvt.state_dict(), tmp_path / 'pvt.safetensors')
    (tmp_path / 'imgs').mkdir()
    smooth_image(np.random.default_rng(0), 64, 64).save(tmp_path / 'imgs' / 'a.png')
    code = main(['probe', '--weights', str(tmp_path / 'pvt.safetensors'), '--model', 'pvt_v2_b0', '--images', str(tmp_path / 'imgs'),
                 '--out', str(tmp_path / 'run'), '--n_images', '1'])
    err = capsys.readouterr().err.strip()
    assert code != 0 and '\n' not in err and 'Traceback' not in err
    assert 'PyramidVisionTransformerV2 is not one of them' in err
    assert not (tmp_path / 'run').exists()                      # refused before anything was written
