"""AttributeDiffusionHead (CIEM + denoiser), training end to end, and the comparison baselines."""

import torch

from amadeus.model import AttributeDiffusionHead, ModelConfig, NoteTransformer
from amadeus.model import diffusion as D
from amadeus.model.baselines import FlatBaseline, NestedHead, ParallelHead

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


def test_baselines_train_and_generate(one_thread):
    notes = tokens(2, 7, seed=4)
    notes[:, 0] = torch.tensor([1, 0, 0])  # an SOS-like first row
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for cls in (FlatBaseline, NestedHead, ParallelHead):
        torch.manual_seed(0)
        model = cls(cfg())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        first = None
        for _ in range(30):
            loss, per_attr = model.loss(notes, mask)
            assert per_attr.shape == (3,) and torch.isfinite(loss)
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.7 * first, (cls.__name__, first, loss.item())
        model.eval()
        state = model.start(notes[:, :3])
        g = torch.Generator().manual_seed(0)
        generated = torch.stack([model.generate_note(state, 1.0, g) for _ in range(3)], 1)  # [2, 3, K]
        assert generated.shape == (2, 3, 3)
        for k, v in enumerate(VOCAB):
            assert generated[..., k].min() >= 0 and generated[..., k].max() < v
        # the cached state continues the prompt exactly as a full forward would
        full = torch.cat([notes[:, :3], generated], 1)
        ref = model.backbone(full).z[:, -1]
        assert (state.z - ref).abs().max() < 1e-5


def test_flat_baseline_steps_and_greedy_memorises(one_thread):
    """Flat: K backbone steps per note; after fitting one sequence, greedy decoding reproduces it."""
    torch.manual_seed(0)
    model = FlatBaseline(cfg())
    notes = tokens(1, 5, seed=9)
    mask = torch.ones(1, 5, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss, _ = model.loss(notes, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    state = model.start(notes[:, :1])
    out = torch.stack([model.generate_note(state, temperature=0.0) for _ in range(4)], 1)
    assert torch.equal(out, notes[:, 1:])
    assert state.cache.length == 5 * 3
