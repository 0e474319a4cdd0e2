"""TextEncoder: offline loading, masks, padding invariance, frozen, dtype rules, clear errors."""

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from torch import nn

from amadeus.model.text import TextEncoder, TextEncoderError, bundled_minilm_path

LONG = "A slow melancholic piano piece in G minor with a 3/4 time signature at 80 bpm, built on Gm, Cm and D7."


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return TextEncoder()  # bundled all-MiniLM-L6-v2, HF_HUB_OFFLINE=1


def test_loads_offline_and_shapes(enc):
    assert enc.dim == 384
    states, mask = enc(["a short caption", LONG])
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    assert states.shape[:2] == mask.shape and states.shape[0] == 2 and states.shape[2] == 384
    assert mask[1].all() and not mask[0].all()  # the short one is padded
    assert (states[0][~mask[0]] == 0).all()  # padding positions carry nothing


def test_padded_caption_matches_alone(enc):
    enc._cache.clear()
    alone, m_alone = enc(["a short caption"])
    enc._cache.clear()
    batched, m_batched = enc(["a short caption", LONG])
    n = int(m_alone[0].sum())
    assert int(m_batched[0].sum()) == n
    torch.testing.assert_close(batched[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_cache_returns_same_states(enc):
    enc._cache.clear()
    a, _ = enc([LONG])
    assert LONG in enc._cache
    b, _ = enc([LONG])
    torch.testing.assert_close(a, b)
    old = enc.cache_size
    enc.cache_size = 2
    try:
        enc([LONG, "one"])  # LONG hit (most recent), then "one" stored
        enc(["two"])  # over the limit: the least recently used (LONG) goes
        assert list(enc._cache) == ["one", "two"]
    finally:
        enc.cache_size = old


def test_empty_caption_is_fully_masked(enc):
    states, mask = enc(["", LONG, "   "])
    assert not mask[0].any() and not mask[2].any() and mask[1].any()
    assert (states[0] == 0).all()
    states, mask = enc(["", ""])  # all unconditional: no encoder call, a 1-position dummy prefix
    assert mask.shape == (2, 1) and not mask.any()


def test_frozen_eval_and_not_in_state_dict(enc):
    parent = nn.Module()
    parent.text = enc
    parent.proj = nn.Linear(enc.dim, 8)
    parent.train()
    assert not enc.training and not enc.encoder.training
    assert all(not p.requires_grad for p in enc.encoder.parameters())
    assert list(parent.state_dict()) == ["proj.weight", "proj.bias"]
    assert sum(1 for _ in parent.parameters()) == 2  # never reaches the optimizer
    states, _ = enc([LONG])
    assert not states.requires_grad
    parent.proj(states).sum().backward()
    assert all(p.grad is None for p in enc.encoder.parameters())
    parent.load_state_dict(parent.state_dict(), strict=True)  # strict load works without encoder keys


def test_autocast_cannot_change_precision(enc):
    ref, _ = enc([LONG])
    enc._cache.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = enc([LONG])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    enc.half()  # a trainer casting the parent to fp16 cannot push the encoder there
    assert next(enc.encoder.parameters()).dtype == torch.float32


def test_fp16_refused_bf16_allowed(tmp_path):
    with pytest.raises(TextEncoderError, match="float16"):
        TextEncoder(dtype="float16")
    with pytest.raises(TextEncoderError, match="unknown"):
        TextEncoder(dtype="int8")
    bf = TextEncoder(dtype="bfloat16")
    assert next(bf.encoder.parameters()).dtype == torch.bfloat16
    states, mask = bf(["in C major"])
    assert states.dtype == torch.float32 and mask.all()


def test_missing_or_bad_path(tmp_path):
    with pytest.raises(TextEncoderError, match="no such directory"):
        TextEncoder(str(tmp_path / "nope"))
    with pytest.raises(TextEncoderError, match="not a Hugging Face model directory"):
        TextEncoder(str(tmp_path))


def test_local_t5_directory_uses_encoder_only(tmp_path):
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)  # a full enc-dec checkpoint on disk
    src = bundled_minilm_path()  # reuse a local tokenizer: no sentencepiece file needed
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / f, tmp_path / f)
    t5 = TextEncoder(str(tmp_path), max_length=16)
    assert isinstance(t5.encoder, T5EncoderModel) and t5.dim == 32
    states, mask = t5(["slow piano", "", LONG])
    assert states.shape == (3, 16, 32) and mask[2].all() and not mask[1].any()
