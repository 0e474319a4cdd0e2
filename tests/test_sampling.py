"""The sampler: KV cache == full recompute, frozen slots, S = 1..K, batching, seeds, limits, guards,
continuation, regeneration and classifier-free guidance."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amadeus.grammar import note_rows
from amadeus.syntax import SYNTAX_ERRORS, syntax_errors
from amadeus.model.config import ModelConfig
from amadeus.model.head import AttributeDiffusionHead
from amadeus.model.note_decoder import NoteDecoder
from amadeus.model.transformer import NoteTransformer
from amadeus.module import AmadeusModule
from amadeus.sampling import (
    DEFAULT_ORDER,
    DEFAULT_STEPS,
    TEXT_GUIDANCE,
    SamplingOptions,
    filter_probs,
    generate,
    guide,
    lane_keys,
    piece_keys,
    prompt_from_midi,
    regenerate,
    uniforms,
)
from amadeus.tokenizer import (
    COL_METRIC,
    COL_PITCH,
    COL_POSITION,
    COL_VELOCITY,
    METRIC_EOS,
    METRIC_SAME_ONSET,
    METRIC_SOS,
    METRIC_TS_OFFSET,
    NoteTokenizer,
)
from midi_factory import block_chords, make_score, part


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return AmadeusModule(network=ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                                             dropout=0.0)).eval()


def assert_well_formed(tokenizer: NoteTokenizer, tokens: np.ndarray) -> None:
    """SOS first, EOS last (once), NEW_BAR_TS after SOS, and every row decodes (nothing skipped)."""
    m = tokens[:, COL_METRIC]
    assert m[0] == METRIC_SOS and m[-1] == METRIC_EOS and (m == METRIC_EOS).sum() == 1
    assert (m[1:] != METRIC_SOS).all()
    if len(tokens) > 2:
        assert m[1] >= METRIC_TS_OFFSET
    _, stats = tokenizer.decode_with_stats(tokens)
    assert stats.skipped == 0, stats
    assert stats.notes == int((tokens[:, COL_PITCH] > 0).sum())
    flags, _ = syntax_errors(tokens, tokenizer)  # the evaluation's independent grammar check
    assert not flags.any(), [SYNTAX_ERRORS[k] for k in np.nonzero(flags.any(0))[0]]


def record_masks(model, monkeypatch) -> list:
    """The masked-slot tensor of every head pass of `model`, in order (the list fills as it samples)."""
    calls = []
    real = model.head.logits

    def spy(C, tokens, masked):
        calls.append(masked.clone())
        return real(C, tokens, masked)

    monkeypatch.setattr(model.head, "logits", spy)
    return calls


def test_cached_equals_uncached_reference(trained_tiny):
    model = copy.deepcopy(trained_tiny[0]).double()  # float64: no rounding-order differences between paths
    for steps in (2, 8):
        cached = generate(model, 2, max_notes=60, steps=steps, seed=3)
        full = generate(model, 2, max_notes=60, steps=steps, seed=3, use_cache=False)
        for a, b in zip(cached.tokens, full.tokens):
            np.testing.assert_array_equal(a, b)
    # and in float32, as used in practice
    model = trained_tiny[0]
    cached = generate(model, 2, max_notes=40, steps=4, seed=1)
    full = generate(model, 2, max_notes=40, steps=4, seed=1, use_cache=False)
    for a, b in zip(cached.tokens, full.tokens):
        np.testing.assert_array_equal(a, b)


def test_revealed_slots_stay_frozen(trained_tiny, monkeypatch):
    model = trained_tiny[0]
    calls = []
    real = model.head.logits

    def spy(C, tokens, masked):
        calls.append((tokens.clone(), masked.clone()))
        return real(C, tokens, masked)

    monkeypatch.setattr(model.head, "logits", spy)
    steps = 4
    result = generate(model, 1, max_notes=30, steps=steps, seed=0, reveal_threshold=2.0)  # no slot is sure
    tokens = result.tokens[0]
    assert len(calls) % steps == 0 and len(calls) // steps in (len(tokens) - 1, len(tokens) - 2)
    for n in range(len(calls) // steps):
        note = calls[n * steps:(n + 1) * steps]
        assert note[0][1].all()  # every slot starts masked
        assert not note[1][1][0, COL_METRIC]  # the metric (the row's kind) is decided in the first step
        # K=8, S=4: the metric alone, then the most confident 5 of 7, then one per step
        assert [int((m0 & ~m1).sum()) for (_, m0), (_, m1) in zip(note, note[1:])] == [1, 5, 1]
        for (t0, m0), (t1, m1) in zip(note, note[1:]):
            assert (m1 <= m0).all()  # a revealed slot is never masked again
            kept = ~m0
            assert torch.equal(t1[kept], t0[kept])  # ... and never re-sampled
        t_last, m_last = note[-1]
        row = torch.as_tensor(tokens[1 + n])
        assert torch.equal(row[~m_last[0]], t_last[0][~m_last[0]])  # returned as revealed


@pytest.mark.parametrize("order, groups", [
    ("columns", [[0], [1, 2, 3, 4, 5], [6], [7]]),
    ("harmony", [[0], [1, 2, 3, 4, 7], [5], [6]]),  # metric | position, instrument, chord, tempo, velocity | ...
    ("metric,pitch,position,chord,tempo,instrument,duration,velocity", [[0], [1, 2, 3, 4, 5], [6], [7]]),
])
def test_fixed_order_reveals_the_next_slots_of_the_order(trained_tiny, monkeypatch, order, groups):
    """A fixed order: each step reveals the next masked slots of the order, whatever the confidences;
    with S=4 and no sure slots a note row reveals the metric, then 5 slots, then one per step."""
    model = trained_tiny[0]
    calls = record_masks(model, monkeypatch)
    result = generate(model, 1, max_notes=30, steps=4, seed=0, order=order, reveal_threshold=2.0)
    assert result.settings["order"] == order
    notes = [calls[i:i + 4] + [torch.zeros_like(calls[0])] for i in range(0, len(calls) - 3, 4)]
    assert notes
    for note in notes:
        revealed = [(m0 & ~m1)[0].nonzero().flatten().tolist() for m0, m1 in zip(note, note[1:])]
        assert revealed == groups
    for bad in ("random", "metric,pitch"):
        with pytest.raises(ValueError, match="order must be"):
            generate(model, 1, max_notes=4, order=bad)


@pytest.mark.parametrize("steps", range(1, 9))
def test_every_step_count_decodes(trained_tiny, untrained, steps):
    tok = trained_tiny[0].tokenizer
    for model in (trained_tiny[0], untrained):
        plain = generate(model, 2, max_notes=48, steps=steps, seed=steps, reveal_threshold=2.0)
        assert plain.head_passes % steps == 0  # S passes per note (for the whole batch)
        result = generate(model, 2, max_notes=48, steps=steps, seed=steps)  # sure slots: at most S passes
        rows = max(len(t) for t in result.tokens) - 1  # generated rows, EOS included (the cut's EOS costs none)
        assert rows - 1 <= result.head_passes <= steps * rows
        for t in plain.tokens + result.tokens:
            assert_well_formed(tok, t)


def test_guards_make_untrained_output_decode(untrained):
    """Random weights break the grammar all the time: the guards intervene, output still decodes."""
    tok = untrained.tokenizer
    guarded = generate(untrained, 2, max_notes=64, min_notes=64, steps=2, seed=0)
    assert guarded.guard_interventions > 0 and guarded.conflicts > 0
    for t in guarded.tokens:
        assert_well_formed(tok, t)
    drums = generate(untrained, 1, max_notes=64, steps=8, seed=0, controls=["instrument=drums"]).tokens[0]
    pitches = drums[drums[:, COL_PITCH] > 0, COL_PITCH] - 1
    assert len(pitches) and pitches.min() >= 27 and pitches.max() <= 87
    for cap in (1, 3):  # at most `cap` notes start at one onset, from the prompt's last onset on
        prompt = tok.encode(make_score([part(block_chords([(60, 64, 67, 72)]))]))  # four notes at one onset
        capped = generate(untrained, 2, prompt=prompt, max_notes=64, min_notes=64, steps=2, seed=0,
                          max_onset_notes=cap)
        for t in capped.tokens:
            assert_well_formed(tok, t)
            metric = t[note_rows(t), COL_METRIC]
            onset = np.cumsum(metric != METRIC_SAME_ONSET)[4:]  # the generated notes' onsets
            assert len(onset) > 10 and np.bincount(onset).max() <= cap
    raw = generate(untrained, 2, max_notes=64, min_notes=64, steps=2, seed=0, guards=False)
    skipped = sum(tok.decode_with_stats(t)[1].skipped for t in raw.tokens)
    assert skipped > 0  # without guards the same model writes rows that cannot be decoded


def test_batched_equals_per_piece(trained_tiny):
    model = trained_tiny[0]
    batched = generate(model, 4, max_notes=50, steps=2, seed=10)
    assert batched.seeds == [10, 11, 12, 13]
    for i, t in enumerate(batched.tokens):
        single = generate(model, 1, max_notes=50, steps=2, seed=10 + i).tokens[0]
        np.testing.assert_array_equal(t, single)
    chunked = generate(model, 4, max_notes=50, steps=2, seed=10, batch_size=3)
    for a, b in zip(batched.tokens, chunked.tokens):
        np.testing.assert_array_equal(a, b)


def test_pieces_stop_on_their_own(trained_tiny):
    """Each piece ends at its own EOS / limit; finished pieces leave the batch without disturbing the rest."""
    model = trained_tiny[0]
    result = generate(model, 4, max_notes=200, max_bars=2, steps=2, seed=0)
    lengths = {len(t) for t in result.tokens}
    assert len(lengths) > 1
    for t in result.tokens:
        assert_well_formed(model.tokenizer, t)
        m = t[:, COL_METRIC]
        bars = ((m == 3) | (m == 6) | (m >= METRIC_TS_OFFSET)).sum()
        assert bars <= 2


def test_seeds_limits_and_greedy(trained_tiny):
    model = trained_tiny[0]
    a = generate(model, 1, max_notes=30, seed=1).tokens[0]
    b = generate(model, 1, max_notes=30, seed=1).tokens[0]
    c = generate(model, 1, max_notes=30, seed=2).tokens[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(generate(model, 1, max_notes=7, seed=0).tokens[0]) <= 7 + 2
    long = generate(model, 1, max_notes=40, min_notes=40, seed=0).tokens[0]
    assert len(long) == 40 + 2  # EOS forbidden before 40 rows, then the limit closes the piece
    g1 = generate(model, 1, max_notes=30, temperature=0.0, seed=1).tokens[0]
    g2 = generate(model, 1, max_notes=30, temperature=0.0, seed=2).tokens[0]
    k1 = generate(model, 1, max_notes=30, top_k=1, seed=3).tokens[0]
    np.testing.assert_array_equal(g1, g2)  # greedy does not depend on the seed
    np.testing.assert_array_equal(g1, k1)  # top-k 1 is greedy too
    # per-attribute: greedy velocity only, the rest sampled
    v1 = generate(model, 1, max_notes=30, temperature={"velocity": 0.0}, seed=1).tokens[0]
    assert v1.shape[1] == 8


def test_bad_settings_are_clear_errors(untrained):
    for kw, match in [({"steps": 0}, "steps must be an integer in 1..8"), ({"steps": 9}, "1..8"),
                      ({"top_p": 0.0}, "top_p"), ({"temperature": -1}, "temperature"),
                      ({"temperature": {"loudness": 1.0}}, "unknown attributes"), ({"max_notes": 0}, "max_notes"),
                      ({"guidance": 3.0}, "guidance needs"), ({"text": "a song"}, "no text encoder"),
                      ({"seed": [1, 2]}, "seeds")]:
        with pytest.raises(ValueError, match=match):
            generate(untrained, 1, **kw)


def test_filter_probs_top_p_top_k():
    raw = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    allowed = torch.ones(1, 1, 4, dtype=torch.bool)
    one = torch.ones(1)
    p = filter_probs(raw, allowed, one, torch.tensor([4]), torch.tensor([0.7]), False, True)
    np.testing.assert_allclose(p[0, 0].numpy(), [0.625, 0.375, 0, 0], atol=1e-6)
    p = filter_probs(raw, allowed, one, torch.tensor([3]), torch.tensor([1.0]), True, False)
    np.testing.assert_allclose(p[0, 0].numpy(), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=1e-6)
    allowed[..., 0] = False  # truncation applies to the allowed values only
    p = filter_probs(raw, allowed, one, torch.tensor([4]), torch.tensor([0.5]), False, True)
    np.testing.assert_allclose(p[0, 0].numpy(), [0, 1, 0, 0], atol=1e-6)


def test_counter_based_uniforms_are_uniform_and_independent_of_the_batch():
    keys = piece_keys([0, 1, 2**40 + 5], torch.device("cpu"))
    lanes = lane_keys(4096, torch.device("cpu"))
    u = uniforms(keys, torch.tensor([0, 0, 7]), lanes)
    assert u.min() > 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01
    alone = uniforms(keys[1:2], torch.tensor([0]), lanes)
    assert torch.equal(alone[0], u[1])
    assert not torch.equal(u[0], u[1])


def _piece(bars: int = 6):
    chords = [[60, 64, 67], [62, 65, 69], [59, 62, 67]] * bars
    return make_score([part(block_chords(chords), program=0), part(block_chords([[36]] * 3 * bars), program=32)],
                      time_signatures=[(0, 3, 4)], tempos=[(0, 100.0)])


def test_continuation_keeps_the_prompt(trained_tiny, tmp_path):
    model = trained_tiny[0]
    tok = model.tokenizer
    path = tmp_path / "prompt.mid"
    _piece().dump_midi(str(path))
    p2, p3 = prompt_from_midi(tok, path, bars=2), prompt_from_midi(tok, path, bars=3)
    assert len(p2) < len(p3) and (p3[:len(p2)] == p2).all()
    m = p3[:, COL_METRIC]
    assert ((m == 6) | (m >= METRIC_TS_OFFSET)).sum() == 3
    assert len(prompt_from_midi(tok, path, notes=5)) == 6
    result = generate(model, 2, prompt=[p2, p3], max_notes=40, seed=4)  # different lengths in one batch
    for prompt, out in zip([p2, p3], result.tokens):
        np.testing.assert_array_equal(out[:len(prompt)], prompt)
        assert_well_formed(tok, out)
    for i, prompt in enumerate([p2, p3]):  # left padding changes nothing
        np.testing.assert_array_equal(result.tokens[i], generate(model, 1, prompt=prompt, max_notes=40, seed=4 + i).tokens[0])
    uncached = generate(model, 2, prompt=[p2, p3], max_notes=40, seed=4, use_cache=False)
    for a, b in zip(result.tokens, uncached.tokens):
        np.testing.assert_array_equal(a, b)
    # the prompt's notes come out of the decoded continuation unchanged
    src = tok.decode(p2)
    out = tok.decode(result.tokens[0])
    first = {(n.time, n.duration, n.pitch) for t in src.tracks for n in t.notes}
    cont = {(n.time, n.duration, n.pitch) for t in out.tracks for n in t.notes}
    assert first <= cont


def test_regenerate_keeps_everything_else(trained_tiny):
    model = trained_tiny[0]
    tok = model.tokenizer
    piece = tok.encode(_piece())
    out = regenerate(model, piece, ["velocity"], seed=1).tokens[0]
    assert out.shape == piece.shape
    np.testing.assert_array_equal(np.delete(out, COL_VELOCITY, 1), np.delete(piece, COL_VELOCITY, 1))
    notes = piece[:, COL_PITCH] > 0
    assert (out[notes, COL_VELOCITY] > 0).all() and (out[~notes, COL_VELOCITY] == 0).all()
    assert (out[notes, COL_VELOCITY] != piece[notes, COL_VELOCITY]).any()
    orch = regenerate(model, piece, ["instrument"], controls=["instrument=violin,cello"], seed=2).tokens[0]
    assert set(np.unique(orch[notes, 4])) <= {41, 43}
    # the rows keep their onsets; the notes of an onset may swap rows (the tokenizer's order by instrument)
    np.testing.assert_array_equal(orch[:, :4], piece[:, :4])
    assert sorted(map(tuple, orch[notes, 5:])) == sorted(map(tuple, piece[notes, 5:]))
    assert_well_formed(tok, orch)
    # only chosen rows
    rows = np.arange(1, 6)
    part_ = regenerate(model, piece, "velocity", rows=rows, seed=3).tokens[0]
    np.testing.assert_array_equal(part_[6:], piece[6:])
    with pytest.raises(ValueError, match="cannot re-sample"):
        regenerate(model, piece, ["position"])


def test_classifier_free_guidance_with_a_random_prefix():
    tok = NoteTokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_sizes=tok.vocab_sizes, d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                      dropout=0.0, prefix_dim=16)
    parts = SimpleNamespace(backbone=NoteTransformer(cfg).double().eval(),
                            head=AttributeDiffusionHead(cfg).double().eval(), tokenizer=tok)
    prefix = torch.randn(2, 5, 16, dtype=torch.float64) * 3
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    kw = dict(max_notes=30, min_notes=30, steps=2, seed=0)
    default = generate(parts, 2, prefix=prefix, prefix_mask=mask, **kw)
    plain = generate(parts, 2, **kw)
    cond = generate(parts, 2, prefix=prefix, prefix_mask=mask, guidance=1.0, **kw)
    same = generate(parts, 2, prefix=prefix, prefix_mask=mask, options=SamplingOptions(guidance=TEXT_GUIDANCE), **kw)
    uncond = generate(parts, 2, prefix=prefix, prefix_mask=mask, guidance=0.0, **kw)
    strong = generate(parts, 2, prefix=prefix, prefix_mask=mask, guidance=4.0, **kw)
    assert default.settings["guidance"] == TEXT_GUIDANCE and plain.settings["guidance"] == 1.0
    for i in range(2):
        np.testing.assert_array_equal(default.tokens[i], same.tokens[i])  # with a prefix the default is TEXT_GUIDANCE
        np.testing.assert_array_equal(uncond.tokens[i], plain.tokens[i])  # g = 0: masked prefix == no prefix
        assert_well_formed(tok, strong.tokens[i])
    assert any(not np.array_equal(a, b) for a, b in zip(cond.tokens, plain.tokens))
    assert any(not np.array_equal(a, b) for a, b in zip(strong.tokens, cond.tokens))
    uncached = generate(parts, 2, prefix=prefix, prefix_mask=mask, guidance=4.0, use_cache=False, **kw)
    for a, b in zip(strong.tokens, uncached.tokens):
        np.testing.assert_array_equal(a, b)
    one_by_one = generate(parts, 2, prefix=prefix, prefix_mask=mask, guidance=4.0, batch_size=1, **kw)
    for a, b in zip(strong.tokens, one_by_one.tokens):  # guided pieces do not depend on the batch either
        np.testing.assert_array_equal(a, b)


def test_guidance_does_not_resurrect_implausible_values():
    """The rare-metre failure: a value both models find unlikely (p_c 0.01, p_u 0.001) gets half the mass
    under plain guidance at g = 3 (ratio^(g-1) = 100); with the plausibility constraint it stays below
    every plausible value, and is still the fallback when it is the only value the grammar allows."""
    cond = torch.log(torch.tensor([[0.85, 0.14, 0.01, 0.0]]))  # the last value is outside the vocabulary
    uncond = torch.log(torch.tensor([[0.85, 0.149, 0.001, 0.0]]))
    plain = torch.softmax(guide(cond, uncond, 3.0, 0.0), -1)[0]
    assert plain[2] > 0.5 and plain[3] == 0
    torch.testing.assert_close(guide(cond, uncond, 3.0, 0.0)[0, :3], (uncond + 3 * (cond - uncond))[0, :3])
    constrained = guide(cond, uncond, 3.0, 0.1)
    probs = torch.softmax(constrained, -1)[0]
    assert probs[0] > probs[1] > 0.1 and probs[2] < 1e-6 and probs[3] == 0  # guided among the plausible two
    only_rare = filter_probs(constrained[:, None], torch.tensor([[[False, False, True, False]]]),
                             torch.ones(1), torch.zeros(1, dtype=torch.long), torch.ones(1), False, False)
    assert only_rare[0, 0, 2] == 1.0  # a grammar that allows only the implausible value still gets it
    torch.testing.assert_close(guide(cond, uncond, 1.0, 0.1)[0, :2], cond[0, :2])  # g = 1: the conditional
    # a control forbids the conditional favourite: plausibility is judged among the values it allows
    cond = torch.tensor([[5.0, 1.0, 0.9]])
    uncond = torch.tensor([[5.0, 2.0, 0.0]])
    allowed = torch.tensor([[False, True, True]])
    blind = guide(cond, uncond, 3.0, 0.5)  # both allowed values implausible next to value 0: no guidance
    assert blind[0, 1] > blind[0, 2]
    aware = guide(cond, uncond, 3.0, 0.5, allowed)  # both plausible among the allowed: guided, value 2 wins
    torch.testing.assert_close(aware[0, 1:], (uncond + 3 * (cond - uncond))[0, 1:])
    assert aware[0, 2] > aware[0, 1]
    with pytest.raises(ValueError, match="plausibility"):
        SamplingOptions(plausibility=1.0)


def test_sampling_options_are_the_keywords(untrained):
    """An options object and the same settings as keywords give the same pieces; keywords override it."""
    options = SamplingOptions(max_notes=20, steps=2, temperature={"pitch": 0.5}, top_k=4)
    a = generate(untrained, 2, options=options, seed=5)
    b = generate(untrained, 2, max_notes=20, steps=2, temperature={"pitch": 0.5}, top_k=4, seed=5)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(x, y)
    assert a.settings == b.settings
    assert generate(untrained, 1, options=options, steps=8, seed=5).settings["steps"] == 8
    assert options.steps == 2  # frozen: generate's keywords make a new object
    assert SamplingOptions().steps_for(8) == DEFAULT_STEPS == 3  # the best measured quality
    assert SamplingOptions().order == DEFAULT_ORDER == "columns"
    assert SamplingOptions().reveal_threshold == 0.9
    with pytest.raises(TypeError, match="stepz"):
        generate(untrained, 1, stepz=2)
    with pytest.raises(TypeError, match="SamplingOptions"):
        generate(untrained, 1, options={"steps": 2})
    for kw, match in [({"steps": 9}, "1..8"), ({"top_p": 1.5}, "top_p"), ({"top_k": 1.5}, "top_k"),
                      ({"min_notes": -1}, "min_notes"), ({"max_bars": 0}, "max_bars"),
                      ({"top_k": {"loudness": 2}}, "unknown attributes")]:
        with pytest.raises(ValueError, match=match):
            SamplingOptions(**kw)


def test_text_conditioning_end_to_end():
    """Captions go through the model's own text encoder (bundled MiniLM, offline) into the prefix."""
    torch.manual_seed(0)
    module = AmadeusModule(network=ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                                               dropout=0.0), text_encoder="all-MiniLM-L6-v2").eval()
    captions = ["A calm piano piece in D minor.", "Fast rock drums with electric bass."]
    kw = dict(max_notes=24, min_notes=24, steps=2, seed=0)
    guided = generate(module, 2, text=captions, guidance=3.0, **kw)
    for t in guided.tokens:
        assert_well_formed(module.tokenizer, t)
    one = generate(module, 2, text=captions, **kw)
    again = generate(module, 1, text=captions[1], seed=1, max_notes=24, min_notes=24, steps=2)
    np.testing.assert_array_equal(one.tokens[1], again.tokens[0])  # a caption per piece, batched == alone
    with pytest.raises(ValueError, match="2 captions for 3 pieces"):
        generate(module, 3, text=captions)


class _PositionStub(NoteDecoder):
    """A diffusion head (the note-decoder interface) whose logits we control: the metric is a time-signature change; position 0 (an empty bar)
    has probability 0.5 while the metric is masked and 0.05 once it is revealed; position 1 otherwise."""

    def __init__(self, tokenizer: NoteTokenizer):
        super().__init__()
        self.sizes = tokenizer.vocab_sizes

    def context(self, z, prefix_states=None, prefix_mask=None):
        return z[:, None, :].expand(-1, len(self.sizes), -1)

    def logits(self, C, tokens, masked):
        B = tokens.shape[0]
        out = [torch.zeros(B, v) for v in self.sizes]
        out[COL_METRIC][:, METRIC_TS_OFFSET] = 50.0
        pos = torch.full((B, self.sizes[1]), -1e4)
        pos[:, 1] = 0.0
        pos[:, 0] = torch.where(masked[:, COL_METRIC], 0.0, float(np.log(0.05 / 0.95)))
        out[1] = pos
        return out


@pytest.mark.parametrize("controls", [None, ["instrument=piano"]])
def test_empty_bar_decided_after_the_metric_is_revealed(untrained, controls):
    """P(empty bar | NEW_BAR_TS) must be the head's conditional (0.05) with or without controls (one slot
    per step, so without controls the position is drawn after the metric; with a control the sampler
    decides the metric first and then "empty bar or note", which must use the logits given that metric).
    No sure slots (reveal_threshold off): this head is incoherent by design, certain of the metric yet
    changing the position once the metric is revealed, which threshold decoding assumes away."""
    model = SimpleNamespace(backbone=untrained.backbone, head=_PositionStub(untrained.tokenizer),
                            tokenizer=untrained.tokenizer)
    res = generate(model, 400, max_notes=1, steps=8, top_p=1.0, controls=controls, seed=0, reveal_threshold=2.0)
    first = np.array([t[1] for t in res.tokens])
    assert (first[:, COL_METRIC] >= METRIC_TS_OFFSET).all()
    empty = float((first[:, COL_POSITION] == 0).mean())
    assert 0.02 < empty < 0.09, empty


def test_sure_slots_are_revealed_without_using_the_step_budget(trained_tiny, monkeypatch):
    """reveal_threshold: a slot whose drawn value is at least that likely is revealed at once and costs no
    step; the uncertain slots share the S steps, and a row ends early when every slot left is sure."""
    model = trained_tiny[0]
    calls = record_masks(model, monkeypatch)
    everything = generate(model, 2, max_notes=40, steps=8, seed=0, reveal_threshold=1e-6)
    rows = max(len(t) - 1 for t in everything.tokens)  # notes of the batch (EOS included, SOS not)
    assert everything.head_passes <= rows  # one pass per note of the batch: all slots sure at once
    assert all(m.all() for m in calls)  # ... and every pass starts from a fully masked row
    for t in everything.tokens:
        assert_well_formed(model.tokenizer, t)
    calls.clear()
    plain = generate(model, 2, max_notes=40, steps=8, seed=0, reveal_threshold=2.0)
    assert plain.head_passes % 8 == 0
    calls.clear()
    some = generate(model, 2, max_notes=40, steps=8, seed=0, reveal_threshold=0.9)
    notes, current = [], []
    for m in calls:  # split the passes into notes: a note starts fully masked
        if m.all() and current:
            notes.append(current)
            current = []
        current.append(m)
    notes.append(current)
    assert all(1 <= len(n) <= 8 for n in notes)
    assert any(len(n) < 8 for n in notes)  # some notes end early ...
    assert some.head_passes < plain.head_passes
    for t in some.tokens:
        assert_well_formed(model.tokenizer, t)
    with pytest.raises(ValueError, match="reveal_threshold"):
        generate(model, 1, max_notes=4, reveal_threshold=0.0)
