"""AttributeDiffusionHead (CIEM + denoiser), training end to end, and the comparison baselines."""

import pytest
import torch

from amadeus.model import AttributeDiffusionHead, ModelConfig, NoteTransformer
from amadeus.model import diffusion as D
from amadeus.model.baselines import build_decoder
from amadeus.model.note_decoder import NoteDecoder

VOCAB = (6, 9, 11)


def cfg(**kw):
    base = dict(vocab_sizes=VOCAB, d_model=32, n_layers=2, n_heads=2, head_width=16, head_heads=2, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def head(**kw):
    torch.manual_seed(0)
    return AttributeDiffusionHead(cfg(**kw)).eval()


def tokens(*lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, lead, generator=g) for v in VOCAB], dim=-1)


def test_shapes_3d_and_flat():
    h = head()
    z = torch.randn(2, 5, 32)
    C = h.context(z)
    assert C.shape == (2, 5, 3, 16)
    masked = torch.rand(2, 5, 3) < 0.5
    logits = h.logits(C, tokens(2, 5), masked)
    assert [tuple(x.shape) for x in logits] == [(2, 5, v) for v in VOCAB]
    Cf = h.context(z.reshape(10, 32))
    assert Cf.shape == (10, 3, 16)
    torch.testing.assert_close(Cf, C.reshape(10, 3, 16))
    flat = h.logits(Cf, tokens(2, 5).reshape(10, 3), masked.reshape(10, 3))
    for a, b in zip(flat, logits):
        torch.testing.assert_close(a, b.reshape(10, -1))
    for a, b in zip(h(z, tokens(2, 5), masked), logits):
        torch.testing.assert_close(a, b)


def test_masked_slots_ignore_their_token_and_slots_see_each_other():
    h = head()
    C = h.context(torch.randn(4, 32))
    t1, t2 = tokens(4, seed=1), tokens(4, seed=2)
    masked = torch.tensor([[True, False, True]] * 4)
    t2[:, 1] = t1[:, 1]  # same revealed value, different values under the mask
    for a, b in zip(h.logits(C, t1, masked), h.logits(C, t2, masked)):
        torch.testing.assert_close(a, b)
    # bidirectional: revealing slot 2 changes the prediction of slot 0
    l_masked = h.logits(C, t1, torch.ones(4, 3, dtype=torch.bool))[0]
    reveal2 = torch.tensor([[True, True, False]] * 4)
    assert not torch.allclose(l_masked, h.logits(C, t1, reveal2)[0])


def test_prefix_per_sequence_and_padding_ignored():
    h = head(prefix_dim=7)
    z = torch.randn(2, 4, 32)
    prefix = torch.randn(2, 3, 7)
    pmask = torch.tensor([[True, True, False], [True, True, True]])
    C = h.context(z, prefix, pmask)
    other = prefix.clone()
    other[0, 2] = 100.0  # a padded token of row 0
    torch.testing.assert_close(h.context(z, other, pmask), C)
    other[1, 0] = 5.0  # a real token of row 1: row 1 changes, row 0 does not
    C2 = h.context(z, other, pmask)
    torch.testing.assert_close(C2[0], C[0])
    assert not torch.allclose(C2[1], C[1])
    # the flat form with the prefix repeated per note gives the same context
    Cf = h.context(z.reshape(8, 32), prefix.repeat_interleave(4, 0), pmask.repeat_interleave(4, 0))
    torch.testing.assert_close(Cf, C.reshape(8, 3, 16), atol=1e-6, rtol=1e-5)
    # a fully masked prefix still works (the null token is always there)
    assert torch.isfinite(h.context(z, prefix, torch.zeros(2, 3, dtype=torch.bool))).all()


def test_ciem_flag_removes_its_parameters():
    with_ciem, without = head(prefix_dim=7), head(prefix_dim=7, use_ciem=False)
    assert any(n.startswith("ciem.") for n, _ in with_ciem.named_parameters())
    assert not any(n.startswith("ciem.") for n, _ in without.named_parameters())
    n_with = sum(p.numel() for p in with_ciem.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_without < n_with
    z = torch.randn(3, 32)
    C = without.context(z)
    # without CIEM the context is proj(z) + slot embeddings
    torch.testing.assert_close(C, without.proj(z)[:, None] + without.slot)
    assert without.logits(C, tokens(3), torch.ones(3, 3, dtype=torch.bool))[2].shape == (3, 11)


def test_overfits_four_sequences(one_thread):
    """Backbone + head + diffusion loss: the loss on fixed masks falls when fitting 4 sequences."""
    torch.manual_seed(0)
    c = cfg(d_model=48, n_heads=4, head_width=32, head_heads=4)
    backbone, h = NoteTransformer(c), AttributeDiffusionHead(c)
    notes = tokens(4, 17, seed=3)
    inp, tgt = notes[:, :-1], notes[:, 1:]
    valid = torch.ones(4, 16, dtype=torch.bool)
    valid[3, 10:] = False  # some padding
    params = list(backbone.parameters()) + list(h.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    g_eval = torch.Generator().manual_seed(123)
    eval_masks = [D.corrupt(tgt.shape, g_eval) for _ in range(4)]

    def eval_loss():
        backbone.eval(), h.eval()
        with torch.no_grad():
            z = backbone(inp).z
            C = h.context(z)
            return sum(D.diffusion_loss(h.logits(C, tgt, m), tgt, m, p, valid)[0].item() for m, p in eval_masks) / 4

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        backbone.train(), h.train()
        masked, p = D.corrupt(tgt.shape, g)
        loss, _ = D.diffusion_loss(h(backbone(inp).z, tgt, masked), tgt, masked, p, valid)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_autoregressive_decoders_train_and_score_through_the_interface(one_thread):
    """flat, nested, parallel: `loss` falls, and `exact_nll` gives the loss's chain-rule terms per note."""
    notes = tokens(2, 7, seed=4)
    notes[:, 0] = torch.tensor([1, 0, 0])  # an SOS-like first row
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    valid = mask[:, 1:] & mask[:, :-1]
    for name in ("flat", "nested", "parallel"):
        torch.manual_seed(0)
        backbone, dec = build_decoder(cfg(), name)
        assert dec.name == name and dec.autoregressive and isinstance(dec, NoteDecoder)
        opt = torch.optim.AdamW([*backbone.parameters(), *dec.parameters()], lr=1e-2)
        first = None
        for _ in range(30):
            out = dec.loss(backbone, notes, valid)
            assert out.per_attribute.shape == (3,) and torch.isfinite(out.loss) and out.scored.all()
            first = out.loss.item() if first is None else first
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        assert out.loss.item() < 0.7 * first, (name, first, out.loss.item())
        with torch.no_grad():
            terms = dec.exact_nll(backbone, notes, valid)  # [valid notes, K]
            loss = dec.loss(backbone, notes, valid).loss
        assert terms.shape == (int(valid.sum()), 3) and dec.elbo_nll(backbone, notes, valid) is None
        assert float(terms.sum(1).mean()) == pytest.approx(float(loss) * 3, rel=1e-5)


def test_flat_decoder_steps_and_greedy_memorises(one_thread):
    """Flat: K backbone steps per note (`step`, as the sampler feeds them); after fitting one sequence,
    greedy decoding through the KV cache reproduces it."""
    torch.manual_seed(0)
    backbone, dec = build_decoder(cfg(), "flat")
    assert backbone.tokens_per_note == 3 and backbone.max_rows == cfg().max_notes
    notes = tokens(1, 5, seed=9)
    valid = torch.ones(1, 4, dtype=torch.bool)
    opt = torch.optim.AdamW([*backbone.parameters(), *dec.parameters()], lr=1e-2)
    for _ in range(80):
        loss = dec.loss(backbone, notes, valid).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.eval(), dec.eval()
    with torch.no_grad():
        cache = backbone.new_cache(1)
        z = backbone(notes[:, :1], cache=cache).z[:, -1]
        rows = []
        for _ in range(4):
            values = []
            for k in range(3):
                values.append(dec.attribute_logits(dec.context(z), None, k).argmax(-1))
                z = backbone.step(values[-1], k, cache)
            rows.append(torch.stack(values, -1))
    assert torch.equal(torch.stack(rows, 1), notes[:, 1:])
    assert cache.length == 5 * 3
