"""NoteTransformer: shapes, causality, prefix handling, KV-cache equivalence, errors, init."""

import math

import pytest
import torch

from amadeus.model import ModelConfig, NoteTransformer

VOCAB = (6, 9, 11)


def make(prefix_dim=0, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_sizes=VOCAB, d_model=32, n_layers=3, n_heads=4, dropout=0.0, prefix_dim=prefix_dim, **kw)
    return NoteTransformer(cfg).eval()


def random_notes(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (B, T), generator=g) for v in VOCAB], dim=-1)


def test_shapes_and_mid_layer():
    model = make()
    out = model(random_notes(2, 5))
    assert out.z.shape == (2, 5, 32) and out.mid.shape == (2, 5, 32)
    assert out.cache is None
    assert torch.isfinite(out.z).all()
    # mid = residual stream after layer round(depth * n_layers), clamped to [1, n_layers]
    assert ModelConfig(vocab_sizes=VOCAB, n_layers=6).mid_layer == 2
    assert ModelConfig(vocab_sizes=VOCAB, n_layers=20).mid_layer == 7
    assert ModelConfig(vocab_sizes=VOCAB, n_layers=1).mid_layer == 1
    assert ModelConfig(vocab_sizes=VOCAB, n_layers=4, mlsdes_depth=0.0).mid_layer == 1
    assert not torch.allclose(out.mid, out.z)


def test_mid_is_output_of_the_chosen_layer():
    model = make()  # 3 layers -> mid after layer 1
    notes = random_notes(1, 4)
    seen = []
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o))
    out = model(notes)
    torch.testing.assert_close(out.mid, seen[0])


def test_causal():
    model = make()
    a = random_notes(1, 6)
    b = a.clone()
    b[0, 4:] = 0  # change the future
    za, zb = model(a).z, model(b).z
    torch.testing.assert_close(za[:, :4], zb[:, :4])
    assert not torch.allclose(za[:, 4:], zb[:, 4:])


def test_kv_cache_matches_full_forward_without_prefix():
    model = make()
    notes = random_notes(2, 9)
    full = model(notes).z
    cache = model.new_cache(2, capacity=2)  # forces the cache to grow
    zs = [model(notes[:, :3], cache=cache).z]
    zs.append(model(notes[:, 3:5], cache=cache).z)  # several positions at once
    for t in range(5, 9):
        zs.append(model(notes[:, t : t + 1], cache=cache).z)
    assert cache.length == 9 and cache.n_notes == 9
    assert (torch.cat(zs, 1) - full).abs().max() < 1e-5


def test_kv_cache_matches_full_forward_with_padded_prefix():
    model = make(prefix_dim=5)
    notes = random_notes(2, 8)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randn(2, 4, 5, generator=g)
    prefix_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    full = model(notes, prefix, prefix_mask)
    assert full.z.shape == (2, 8, 32) and full.mid.shape == (2, 8, 32)  # prefix positions removed
    out = model(notes[:, :2], prefix, prefix_mask, use_cache=True)
    cache, zs = out.cache, [out.z]
    assert cache.n_prefix == 4 and cache.n_notes == 2
    for t in range(2, 8):
        zs.append(model(notes[:, t : t + 1], cache=cache).z)
    assert (torch.cat(zs, 1) - full.z).abs().max() < 1e-5


def test_padded_prefix_equals_unpadded():
    model = make(prefix_dim=5)
    notes = random_notes(1, 6)
    g = torch.Generator().manual_seed(4)
    real = torch.randn(1, 2, 5, generator=g)
    junk = torch.randn(1, 3, 5, generator=g) * 100
    ref = model(notes, real).z
    right = model(notes, torch.cat([real, junk], 1), torch.tensor([[1, 1, 0, 0, 0]]).bool()).z
    left = model(notes, torch.cat([junk, real], 1), torch.tensor([[0, 0, 0, 1, 1]]).bool()).z
    assert (right - ref).abs().max() < 1e-5
    assert (left - ref).abs().max() < 1e-5
    # the prefix matters when it is real
    assert (model(notes, real * 2).z - ref).abs().max() > 1e-3


def test_fully_masked_prefix_equals_no_text():
    """A caption dropped by masking its whole prefix gives the unconditional model (for CFG)."""
    model = make(prefix_dim=5)
    notes = random_notes(2, 5)
    prefix = torch.randn(2, 3, 5)
    dropped = model(notes, prefix, torch.zeros(2, 3, dtype=torch.bool)).z
    assert torch.isfinite(dropped).all()
    assert (dropped - model(notes).z).abs().max() < 1e-5


def test_left_padded_prompts_and_select():
    """notes_mask hides padded notes; cache.select drops finished rows and generation continues."""
    model = make()
    long, short = random_notes(1, 6, seed=5), random_notes(1, 4, seed=6)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 2, 3, dtype=torch.long), short], 1)], 0)
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    out = model(batch, notes_mask=mask, use_cache=True)
    assert (out.z[1, 2:] - model(short).z[0]).abs().max() < 1e-5
    nxt = random_notes(2, 1, seed=7)
    step = model(nxt, cache=out.cache).z
    assert (step[1] - model(torch.cat([short, nxt[1:]], 1)).z[0, -1:]).abs().max() < 1e-5
    cache = out.cache.select(torch.tensor([1]))  # row 0 finished
    assert cache.batch_size == 1
    nxt2 = random_notes(1, 1, seed=8)
    z = model(nxt2, cache=cache).z
    ref = model(torch.cat([short, nxt[1:], nxt2], 1)).z[0, -1:]
    assert (z[0] - ref).abs().max() < 1e-5


def test_clear_errors():
    model = make()
    with pytest.raises(ValueError, match="vocabulary size"):
        model(torch.full((1, 2, 3), 50))
    with pytest.raises(ValueError, match="prefix_dim is 0"):
        model(random_notes(1, 2), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="attributes"):
        model(torch.zeros(1, 2, 5, dtype=torch.long))
    cache = model.new_cache(3)
    with pytest.raises(ValueError, match="3 rows"):
        model(random_notes(2, 2), cache=cache)
    small = make(max_notes=4)
    with pytest.raises(ValueError, match="max_notes"):
        small(random_notes(1, 5))
    with pytest.raises(ValueError, match="vocab_sizes is empty"):
        NoteTransformer(ModelConfig())
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(vocab_sizes=VOCAB, d_model=30, n_heads=4)
    pmodel = make(prefix_dim=5)
    out = pmodel(random_notes(1, 2), torch.randn(1, 2, 5), use_cache=True)
    with pytest.raises(ValueError, match="first call"):
        pmodel(random_notes(1, 1), torch.randn(1, 2, 5), cache=out.cache)


def test_gpt2_init_and_config_roundtrip():
    cfg = ModelConfig(vocab_sizes=VOCAB, d_model=256, n_layers=8, n_heads=4)
    model = NoteTransformer(cfg)
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 2e-3
    resid = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.proj.weight.std().item() - resid) < 1e-3
    assert abs(model.blocks[0].ffn.w2.weight.std().item() - resid) < 1e-3
    assert cfg.ffn_hidden % 64 == 0 and cfg.ffn_hidden == 704  # int(2/3 * 4 * 256) = 682 -> 704
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = NoteTransformer(ModelConfig(vocab_sizes=VOCAB, d_model=32, n_layers=2, n_heads=2, dropout=0.5))
    notes = random_notes(1, 5)
    model.train()
    assert not torch.allclose(model(notes).z, model(notes).z)
    model.eval()
    torch.testing.assert_close(model(notes).z, model(notes).z)


def test_kv_cache_takes_the_compute_dtype_under_autocast():
    """Under bf16 autocast the cache holds bf16 keys and values (the residual stream stays fp32)."""
    torch.manual_seed(0)
    model = NoteTransformer(ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, vocab_sizes=[8] * 9)).eval()
    notes = torch.randint(0, 8, (2, 5, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(notes, use_cache=True)
        step = model(notes[:, -1:], cache=out.cache)
    assert out.cache.k.dtype == out.cache.v.dtype == torch.bfloat16
    assert torch.isfinite(step.z).all()
    assert model(notes, use_cache=True).cache.k.dtype == torch.float32  # no autocast: fp32
