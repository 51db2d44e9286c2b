"""The probe on every ViT family it reads (DeiT distilled, SigLIP, EVA-02, BEiT, CaiT; and stage by stage Swin, PVT-v2 and
CrossViT), checked against timm and against attention recomputed here from q, k and each family's rope, bias, windows or
reduced keys; planted outliers found; each family's store reported, and each stage's opened by the widgets."""
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
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer

from vitartifacts import analysis as A
from vitartifacts.probe import UnsupportedModel, probe, probe_stages
from vitartifacts.probing import model_normalization, probe_in_batches, probe_stages_in_batches
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
    out = write_report([tmp_path / name], tmp_path / 'report.html')
    page = out.read_text()
    assert page.startswith('<!doctype html>') or page.lower().startswith('<!doctype html>')
    assert f'"name": "{name}"' in page or f'"name":"{name}"' in page


# ---- the staged families: one token sequence per stage (Swin, PVT-v2) or branch (CrossViT), measured by probe_stages ----

STAGED = {
    'swin': lambda: SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4),
                                    num_classes=10),
    'pvt': lambda: PyramidVisionTransformerV2(depths=(2, 2, 2, 2), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 2, 4),
                                              sr_ratios=(4, 2, 1, 1), mlp_ratios=2, num_classes=10),
    'pvt_linear': lambda: PyramidVisionTransformerV2(depths=(2, 2, 2, 2), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 2, 4),
                                                     mlp_ratios=2, linear=True, num_classes=10),
    'crossvit': lambda: CrossVit(img_size=48, patch_size=[8, 16], embed_dim=[16, 32], depth=[[1, 2, 0], [1, 2, 0]], num_heads=[2, 2],
                                 mlp_ratio=[1, 1, 1], num_classes=10),
}
STAGED_SIZE = dict(swin=64, pvt=64, pvt_linear=64, crossvit=48)
STAGES = dict(swin={'stage0': (16, 16), 'stage1': (8, 8), 'stage2': (4, 4)},
              pvt={'stage0': (16, 16), 'stage1': (8, 8), 'stage2': (4, 4), 'stage3': (2, 2)},
              pvt_linear={'stage0': (16, 16), 'stage1': (8, 8), 'stage2': (4, 4), 'stage3': (2, 2)},
              crossvit={'patch8': (6, 6), 'patch16': (3, 3)})


def branch_names(m):
    "CrossViT's branches, named after their patch sizes."
    return [f'patch{pe.patch_size[0]}' for pe in m.patch_embed]


def make_staged(name):
    torch.manual_seed(0)
    return STAGED[name]().eval()


def staged_images(name, n=4):
    return smooth_images(n, size=STAGED_SIZE[name])


def by_hand(name, m, x):
    "Per stage: every layer's tokens [B, T, C] and the final entry, from the model's own modules run here one by one."
    out = {}
    with torch.no_grad():
        if name == 'swin':
            h = m.patch_embed(x)                                             # B, H, W, C
            for s, stage in enumerate(m.layers):
                h, layers = stage.downsample(h), []
                for blk in stage.blocks: h = blk(h); layers.append(h.flatten(1, 2))
                final = m.norm(h).flatten(1, 2) if s == len(m.layers) - 1 else layers[-1]
                out[f'stage{s}'] = layers + [final]
        elif name.startswith('pvt'):
            h = m.patch_embed(x)                                             # B, H, W, C
            for s, stage in enumerate(m.stages):
                if stage.downsample is not None: h = stage.downsample(h)     # NCHW in, NHWC out
                B, H, W, C = h.shape
                t, layers = h.reshape(B, -1, C), []
                for blk in stage.blocks: t = blk(t, (H, W)); layers.append(t)
                t = stage.norm(t)
                out[f'stage{s}'] = layers + [t]
                h = t.reshape(B, H, W, C).permute(0, 3, 1, 2)
        else:
            xs, layers = m._embed(x), {b: [] for b in range(2)}
            for msb in m.blocks:
                for b in range(2):
                    t = xs[b]
                    for blk in msb.blocks[b]: t = blk(t); layers[b].append(t)
                xs = msb(xs)
                for b in range(2): layers[b].append(xs[b])
            out = {name: layers[b] + [m.norm[b](xs[b])] for b, name in enumerate(branch_names(m))}
    return out


@pytest.mark.parametrize('name', list(STAGED))
def test_staged_norms_equal_the_familys_own_intermediates(name):
    m, x = make_staged(name), staged_images(name)
    rs = probe_stages(m, x, features=[1])
    assert {k: r.layout.grid for k, r in rs.items()} == STAGES[name]
    hand = by_hand(name, m, x)
    with torch.no_grad():
        logits = m(x)
        inter = m.forward_intermediates(x, output_fmt='NLC' if name == 'crossvit' else 'NCHW', intermediates_only=True)
    for k, r in rs.items():
        assert r.depth == len(hand[k]) - 1 and r.layout.n_tokens == r.norms.shape[-1]
        torch.testing.assert_close(r.norms, torch.stack(hand[k]).norm(dim=-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.features[1], hand[k][1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.logits, logits, atol=1e-5, rtol=1e-5)
        assert r.massive.values.shape == (r.depth, 3) and not r.massive.values.isnan().any()
    if name == 'crossvit':                                   # the patches after each multi-scale block, branch by branch
        for b, (k, fusions) in enumerate((('patch8', [1, 3]), ('patch16', [2, 5]))):
            torch.testing.assert_close(rs[k].norms[fusions, :, 1:], torch.stack(inter[2 * b:2 * b + 2]).norm(dim=-1), atol=1e-5, rtol=1e-5)
    else:                                                    # the stage outputs: PVT-v2's after its norm, Swin's before the final one
        for (k, r), t in zip(rs.items(), inter):
            torch.testing.assert_close(r.norms[-1 if name.startswith('pvt') else -2], t.flatten(2).norm(dim=1), atol=1e-5, rtol=1e-5)


# ---- independent recomputations of the staged families' attention ----

def _shifted_region(n, window, shift):
    "timm's labels of the sub-windows a shifted window's mask keeps apart, for one axis of the rolled grid."
    return torch.tensor([0 if r < n - window else 1 if r < n - shift else 2 for r in range(n)]) if shift else torch.zeros(n, dtype=torch.long)


def ref_swin(blk, x):
    "A Swin block's attention on the grid [B, heads, T, T] from its qkv, bias and mask, window by window; and its attention branch rebuilt."
    a, (wh, ww), (sh, sw) = blk.attn, blk.window_size, blk.shift_size
    B, H, W, C = x.shape
    y = torch.roll(blk.norm1(x), (-sh, -sw), (1, 2))
    label = _shifted_region(H, wh, sh)[:, None] * 3 + _shifted_region(W, ww, sw)[None, :]
    bias = a.relative_position_bias_table[a.relative_position_index.view(-1)].view(wh * ww, wh * ww, -1).permute(2, 0, 1)
    full, rebuilt = torch.zeros(B, a.num_heads, H * W, H * W), torch.zeros(B, H, W, C)
    for r0 in range(0, H, wh):
        for c0 in range(0, W, ww):
            rr, cc = torch.meshgrid(torch.arange(r0, r0 + wh), torch.arange(c0, c0 + ww), indexing='ij')
            rr, cc = rr.flatten(), cc.flatten()
            q, k, v = (_heads(t, a.num_heads) for t in a.qkv(y[:, rr, cc]).chunk(3, -1))
            lab = label[rr, cc]
            logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias - 100.0 * (lab[:, None] != lab[None, :])
            p = logits.softmax(-1)
            rebuilt[:, rr, cc] = a.proj(_merge(p @ v))
            where = ((rr + sh) % H) * W + (cc + sw) % W                # the roll undone
            full[:, :, where[:, None], where[None, :]] = p
    return full, torch.roll(rebuilt, (sh, sw), (1, 2))


def _pool_matrix(attn, hw):
    "[S, T]: average pooling of one-hot patches, with the pool the attention reduces its keys by (None: keys are the patches)."
    h, w = hw
    if attn.pool is not None: pool = torch.nn.AdaptiveAvgPool2d(attn.pool.output_size)
    elif attn.sr is not None: pool = torch.nn.AvgPool2d(attn.sr.kernel_size, attn.sr.stride)
    else: return None
    return pool(torch.eye(h * w).view(h * w, 1, h, w)).flatten(1).T


def ref_pvt(attn, x, feat_size):
    "A PVT-v2 attention's probabilities over its reduced keys [B, H, T, S] from q, kv and its reduction; and its output rebuilt."
    B, N, C = x.shape
    H, W = feat_size
    q = _heads(attn.q(x), attn.num_heads)
    r = x.transpose(1, 2).reshape(B, C, H, W)
    if attn.pool is not None: r = attn.act(attn.norm(attn.sr(attn.pool(r)).flatten(2).transpose(1, 2)))
    elif attn.sr is not None: r = attn.norm(attn.sr(r).flatten(2).transpose(1, 2))
    else: r = x
    k, v = (_heads(t, attn.num_heads) for t in attn.kv(r).chunk(2, -1))
    p = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return p, attn.proj(_merge(p @ v))


def ref_cross(attn, x):
    "A CrossViT fusion's CLS row over [own CLS, the other branch's patches] [B, H, 1, 1+N'], and its output rebuilt."
    q, k, v = (_heads(lin(t), attn.num_heads) for lin, t in ((attn.wq, x[:, :1]), (attn.wk, x), (attn.wv, x)))
    p = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return p, attn.proj(_merge(p @ v))


def staged_reference(name, m, x):
    "Per stage, per layer: the attention maps [B, H, T, S] in the probe's layout, recomputed here, each reference first checked to rebuild the module's own output."
    calls, hooks = [], []
    if name == 'swin':
        for s, stage in enumerate(m.layers):
            for blk in stage.blocks:
                hooks.append(blk.register_forward_pre_hook(lambda mod, args, s=s: calls.append((f'stage{s}', mod, args[0]))))
    elif name.startswith('pvt'):
        for s, stage in enumerate(m.stages):
            for blk in stage.blocks:
                hooks.append(blk.attn.register_forward_hook(lambda mod, args, out, s=s: calls.append((f'stage{s}', mod, args, out))))
    else:
        for msb in m.blocks:
            for b, k in enumerate(branch_names(m)):
                for blk in msb.blocks[b]:
                    hooks.append(blk.attn.register_forward_hook(lambda mod, args, out, k=k: calls.append((k, 'own', mod, args[0], out))))
                hooks.append(msb.fusion[b].attn.register_forward_hook(lambda mod, args, out, k=k: calls.append((k, 'fusion', mod, args[0], out))))
    try:
        with torch.no_grad(): m(x)
    finally:
        for h in hooks: h.remove()
    refs = {}
    with torch.no_grad():
        for call in calls:
            if name == 'swin':
                stage, blk, xin = call
                full, rebuilt = ref_swin(blk, xin)
                torch.testing.assert_close(rebuilt, blk._attn(blk.norm1(xin)), atol=1e-5, rtol=1e-5)
            elif name.startswith('pvt'):
                stage, attn, args, out = call
                p, rebuilt = ref_pvt(attn, *args)
                torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)
                pool = _pool_matrix(attn, args[1])
                full = p if pool is None else p @ pool
            else:
                stage, kind, attn, xin, out = call
                if kind == 'own':
                    p, rebuilt = ref_vit(attn, xin)
                    full = F.pad(p, (0, 1))                          # the other branch's slot: nothing
                else:
                    p, rebuilt = ref_cross(attn, xin)
                    T = 1 + m.patch_embed[branch_names(m).index(stage)].num_patches
                    cls = torch.cat([p[..., :1], torch.zeros(*p.shape[:2], 1, T - 1), p[..., 1:].sum(-1, keepdim=True)], -1)
                    full = torch.cat([cls, torch.full((*p.shape[:2], T - 1, T + 1), float('nan'))], 2)
                torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)
            refs.setdefault(stage, []).append(full)
    return refs


@pytest.mark.parametrize('name', list(STAGED))
def test_staged_attention_equals_an_independent_recomputation(name):
    m, x = make_staged(name), staged_images(name)
    attns = [mod for mod in m.modules() if hasattr(mod, 'fused_attn')]
    flags = [a.fused_attn for a in attns]
    rs = probe_stages(m, x)
    assert [a.fused_attn for a in attns] == flags                     # the fused kernel is back where it was
    refs = staged_reference(name, m, x)
    assert list(refs) == list(rs)
    for k, r in rs.items():
        assert len(refs[k]) == r.depth == r.attn.shape[0]
        for i, expected in enumerate(refs[k]):
            got = r.attn[i]
            present = ~got[..., 0].isnan()                            # CrossViT's fusion: only the CLS row
            torch.testing.assert_close(got[present].sum(-1), torch.ones(int(present.sum())), atol=1e-5, rtol=0)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, equal_nan=True)
        torch.testing.assert_close(r.attn_prefix, r.attn[:, :, :, :r.layout.n_prefix], equal_nan=True)
        torch.testing.assert_close(r.attn_received, r.attn.nanmean(3), atol=1e-6, rtol=0)
        summary = probe_stages(m, x, attention='summary')[k]
        assert summary.attn is None
        torch.testing.assert_close(summary.attn_received, r.attn_received, atol=1e-7, rtol=0)


def test_swin_maps_show_the_windows_and_their_shift():
    m, x = make_staged('swin'), staged_images('swin', 1)
    a = probe_stages(m, x)['stage0'].attn[:, 0, 0]                    # layer, query, key on the 16x16 grid
    seen = lambda layer, token: (a[layer, token] > 1e-30).view(16, 16)
    assert seen(0, 0)[:4, :4].all() and seen(0, 0).sum() == 16         # the first window
    assert seen(1, 0)[:2, :2].all() and seen(1, 0).sum() == 4          # shifted: the wrapped corner window, masked apart
    assert seen(1, 2 * 16 + 2)[2:6, 2:6].all() and seen(1, 2 * 16 + 2).sum() == 16   # an inner shifted window, offset by 2


def plant_staged(name, m, stage, layer, where):
    "High-norm tokens at `where` (bool [K, N] patches) in the output of `layer` of `stage` (CrossViT: a branch's own block)."
    if name == 'swin': blk, shape = m.layers[int(stage[5:])].blocks[layer], lambda w, out: w.view(*out.shape[:3])
    elif name.startswith('pvt'): blk, shape = m.stages[int(stage[5:])].blocks[layer], lambda w, out: w
    else:
        b = branch_names(m).index(stage)
        blk = [blk for msb in m.blocks for blk in msb.blocks[b]][layer]
        shape = lambda w, out: F.pad(w, (1, 0))                         # the CLS token stays as it is
    v = torch.randn(blk.norm1.normalized_shape[0], generator=torch.Generator().manual_seed(0))
    def hook(mod, inp, out):
        return out + shape(where, out)[..., None] * (v / v.norm() * 10 * out.norm(dim=-1).median())
    return blk.register_forward_hook(hook)


def planted_layer(m, stage):
    "Where the planted block (a stage's block 1; CrossViT: a branch's own block 1) sits among the stage's layers."
    if not isinstance(m, CrossVit): return 1
    return 1 if len(m.blocks[0].blocks[branch_names(m).index(stage)]) > 1 else 2   # one own block per multi-scale block: after a fusion


@pytest.mark.parametrize('name', list(STAGED))
def test_staged_planted_outliers_are_found_exactly(name):
    m, x = make_staged(name), staged_images(name, 32)
    clean = probe_stages(m, x, attention=False)
    for k, r in clean.items():                                        # the clean model has none, in any stage
        np.testing.assert_array_equal(A.detect_outliers(r.norms, r.layout).ratio, np.zeros(r.depth + 1), err_msg=k)
    g = torch.Generator().manual_seed(1)
    for k, r in clean.items():
        K, N = 32, math.prod(r.layout.grid)
        where = torch.zeros(K * N, dtype=torch.bool)
        where[torch.randperm(K * N, generator=g)[:max(2, K * N // 25)]] = True   # about 4% of the patches
        where = where.view(K, N)
        layer = planted_layer(m, k)                                     # from the planted block on, through the stage's last layer
        handle = plant_staged(name, m, k, 1, where)
        try: art = probe_stages(m, x, attention=False)[k]
        finally: handle.remove()
        for detector in ('bimodal', 'sigma'):
            o = A.detect_outliers(art.norms, art.layout, detector)
            for l in range(layer, art.depth):
                np.testing.assert_array_equal(o.mask[l], where.numpy(), err_msg=f'{k}, {detector}, layer {l}')
        assert A.detect_outliers(art.norms, art.layout).ratio[:layer].sum() == 0     # none before the planted block


def write_stage_stores(name, m, x, out):
    "One probe-only run folder per stage, out/STAGE, as `vitartifacts probe` writes them."
    mean, std = model_normalization(m)
    dirs = []
    for k, r in probe_stages_in_batches(m, x, batch_size=4).items():
        ProbeStore(out / k, attn_dtype='float16').append(0, r, images=x, labels=None, mean=mean, std=std,
                                                         model_info=dict(weights='random', timm_name=type(m).__name__, family=name, stage=k))
        dirs.append(out / k)
    return dirs


@pytest.mark.parametrize('name', list(STAGED))
def test_a_probe_only_store_of_each_stage_makes_a_report(name, tmp_path):
    dirs = write_stage_stores(name, make_staged(name), staged_images(name), tmp_path / name)
    assert [ProbeStore(d).layout.grid for d in dirs] == list(STAGES[name].values())
    page = write_report(dirs, tmp_path / 'report.html').read_text()
    assert page.lower().startswith('<!doctype html>')
    for d in dirs: assert f'"name": "{d.name}"' in page or f'"name":"{d.name}"' in page


@pytest.mark.parametrize('name', list(STAGED))
def test_the_explorer_and_the_comparison_open_each_stage(name, tmp_path):
    from vitartifacts.widgets import Comparison, Explorer
    dirs = write_stage_stores(name, make_staged(name), staged_images(name), tmp_path / name)
    for d in dirs:
        ex = Explorer(d)
        ex.set(epoch=0, layer=0, head=0, image=1)                    # every panel follows, on this stage's grid
    cmp = Comparison(dirs)
    cmp.layer.value, cmp.image.value = 0, 1


def test_probe_names_probe_stages_and_back():
    with pytest.raises(UnsupportedModel, match=r'runs 3 token sequences, each on its own grid \(stage0, stage1, stage2\); probe_stages'):
        probe(make_staged('swin'), staged_images('swin'))
    with pytest.raises(UnsupportedModel, match=r'runs one token sequence; probe\(model, images\) measures it'):
        probe_stages(make('distilled'), smooth_images(1, size=SIZE))


def test_unsupported_families_get_one_sentence():
    swin2 = SwinTransformerV2(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=10)
    padded = SwinTransformer(img_size=40, patch_size=4, window_size=4, embed_dim=16, depths=(2,), num_heads=(1,), num_classes=10)
    for m, says, size in ((swin2, 'SwinTransformerV2 is not one of them.', 32),
                          (padded, 'has a 10x10 grid that its 4x4 windows do not tile', 40)):
        for fn in (probe, probe_stages):
            with pytest.raises(UnsupportedModel, match=says) as e:
                fn(m, torch.randn(1, 3, size, size))
            assert str(e.value).count('. ') == 0 and str(e.value).endswith('.')   # one sentence


def _probe_cli(tmp_path, name, *args, build=None):
    "Exit code of `vitartifacts probe ARGS` on a random timm `name` (10 classes; built with `build`) and two images."
    import timm
    from safetensors.torch import save_file
    from vitartifacts.cli import main
    from vitartifacts.testing import smooth_image
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, **(build or {}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / f'{name}.safetensors')
    (tmp_path / 'imgs').mkdir(exist_ok=True)
    for i in range(2): smooth_image(np.random.default_rng(i), 64, 64).save(tmp_path / 'imgs' / f'{i}.png')
    return main(['probe', '--weights', str(tmp_path / f'{name}.safetensors'), '--model', name, '--images', str(tmp_path / 'imgs'),
                 '--out', str(tmp_path / name), '--n_images', '2', *map(str, args)])


def test_the_probe_command_writes_a_store_per_stage(tmp_path, capsys):
    code = _probe_cli(tmp_path, 'swin_tiny_patch4_window7_224', '--img_size', 112, build=dict(img_size=112))   # stage grids 28, 14, 7, 4 (windows 7, 7, 7, 4)
    printed = capsys.readouterr().out
    assert code == 0
    stages = ['stage0', 'stage1', 'stage2', 'stage3']
    stores = [ProbeStore(tmp_path / 'swin_tiny_patch4_window7_224' / s) for s in stages]
    assert printed.splitlines() == [f'probe store {s}: {st.root}' for s, st in zip(stages, stores)]   # a line per stage
    assert [st.layout.grid for st in stores] == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert [st.meta['n_heads'] for st in stores] == [3, 6, 12, 24] and [st.meta['depth'] for st in stores] == [2, 2, 6, 2]
    assert stores[3].meta['model']['stages'] == stages and stores[3].meta['model']['img_size'] == 112
    assert stores[3].meta['model']['num_classes'] == 10                # read off head.fc.weight: no --num_classes
    out = write_report([st.run_dir for st in stores], tmp_path / 'report.html')
    assert out.exists()


def test_the_probe_command_reads_crossvits_classifier_and_keeps_features(tmp_path, capsys):
    "CrossViT's heads (head.0, head.1) give its classes; --features keeps a layer in each branch."
    build = dict(img_size=120)                                         # branches of 10x10 and 7x7 patches (the second at 112 px)
    code = _probe_cli(tmp_path, 'crossvit_tiny_240', '--img_size', 120, '--features', 1, build=build)
    assert code == 0, capsys.readouterr().err
    names = [l.split(':')[0].removeprefix('probe store ') for l in capsys.readouterr().out.splitlines()]
    stores = [ProbeStore(tmp_path / 'crossvit_tiny_240' / n) for n in names]
    assert names == ['patch12', 'patch16'] and [st.meta['model']['num_classes'] for st in stores] == [10, 10]
    assert [st.features(0, 1).shape for st in stores] == [(2, 101, 96), (2, 50, 192)]


def test_the_probe_command_runs_pvt_at_the_size_asked(tmp_path, capsys):
    "timm's PVT-v2 takes no img_size, and needs none (no position table): --img_size 112 probes at 112 px."
    code = _probe_cli(tmp_path, 'pvt_v2_b0', '--img_size', 112)
    assert code == 0, capsys.readouterr().err
    stores = [ProbeStore(tmp_path / 'pvt_v2_b0' / f'stage{i}') for i in range(4)]
    assert [st.layout.grid for st in stores] == [(28, 28), (14, 14), (7, 7), (4, 4)]
    assert stores[0].meta['model']['img_size'] == 112 and stores[0].images().shape == (2, 112, 112, 3)


def test_swins_classes_come_from_the_file_or_num_classes(tmp_path):
    """Swin's classes are read off head.fc.weight, or given; a backbone file (no classifier) builds a model without a head;
    weights of another Swin fail in one sentence naming the first keys that do not fit."""
    import timm
    from safetensors.torch import save_file
    from vitartifacts.models import build_probe_model
    name = 'swin_tiny_patch4_window7_224'
    sd = timm.create_model(name, num_classes=10, img_size=112).state_dict()
    save_file(sd, tmp_path / 'swin.safetensors')
    save_file({k: v for k, v in sd.items() if not k.startswith('head.')}, tmp_path / 'backbone.safetensors')
    for given in (None, 10):
        net, info = build_probe_model(tmp_path / 'swin.safetensors', name, img_size=112, num_classes=given)
        assert info['num_classes'] == net.num_classes == 10
    net, info = build_probe_model(tmp_path / 'backbone.safetensors', name, img_size=112)
    assert info['num_classes'] == net.num_classes == 0
    with pytest.raises(ValueError, match=r"does not fit timm's swin_small_patch4_window7_224: missing layers\.2\.blocks\.10\.attn\.proj\.bias, .* and 152 more; name the architecture"):
        build_probe_model(tmp_path / 'swin.safetensors', 'swin_small_patch4_window7_224', img_size=112)


def test_the_probe_command_refuses_an_unsupported_family_in_one_sentence(tmp_path, capsys):
    code = _probe_cli(tmp_path, 'mobilevit_xxs', '--num_classes', 10)
    err = capsys.readouterr().err.strip()
    assert code == 2 and '\n' not in err and 'Traceback' not in err
    assert 'ByobNet is not one of them' in err
    assert not (tmp_path / 'mobilevit_xxs').exists()                 # refused before anything was written
