"""Static decoding (`SamplingOptions.decode`): fixed shapes, a frozen KV cache and no host read inside a note
give the same pieces as eager decoding, for every decoder and feature; the host reads the device at most
once per generated row; a compiled note is a single graph."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from amadeus.model.baselines import build_decoder
from amadeus.model.config import ModelConfig
from amadeus.model.transformer import NoteTransformer
from amadeus.sampling import SamplingOptions, generate, regenerate
from amadeus.sampling import replay
from amadeus.sampling.batch import LOOK_EVERY, MIN_WINDOW, window
from amadeus.sampling.syncs import count_syncs
from amadeus.tokenizer import NoteTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = NoteTokenizer()


def random_parts(decoder: str, prefix_dim: int = 0, seed: int = 0) -> SimpleNamespace:
    """An untrained tiny decoder: random weights break the grammar often, so the guards and the
    contradiction rounds are exercised on every note."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_sizes=TOK.vocab_sizes, d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                      dropout=0.0, prefix_dim=prefix_dim)
    backbone, head = build_decoder(cfg, decoder)
    return SimpleNamespace(backbone=backbone.eval(), head=head.eval(), tokenizer=TOK)


def assert_same(a, b) -> None:
    """Same pieces and the same counters."""
    assert len(a.tokens) == len(b.tokens)
    for x, y in zip(a.tokens, b.tokens):
        np.testing.assert_array_equal(x, y)
    for name in ("notes", "rows", "guard_interventions", "control_interventions", "conflicts"):
        assert getattr(a, name) == getattr(b, name), name


def both(model, num: int, **kw):
    eager = generate(model, num, decode="eager", **kw)
    static = generate(model, num, decode="static", **kw)
    assert eager.settings["decode"] == "eager" and static.settings["decode"].startswith("static")
    return eager, static


PROMPT = np.array([TOK.sos_row(), [7, 1, 1, 10, 1, 61, 5, 20], [4, 1, 1, 10, 1, 65, 5, 20]])


@pytest.mark.parametrize("decoder", ["amadeus", "flat", "nested", "parallel"])
def test_static_gives_the_eager_pieces(decoder):
    model = random_parts(decoder)
    cases = [dict(max_notes=24, seed=1),
             dict(max_notes=40, max_bars=2, seed=2, controls=["tempo=96", "instrument=violin@bars=2-3"]),
             dict(max_notes=20, min_notes=20, seed=3, prompt=[PROMPT, PROMPT[:2], PROMPT[:1]], temperature={"pitch": 0.0},
                  top_k={"chord": 3}),
             dict(max_notes=16, seed=4, batch_size=2, controls=["density=1-3", "chord=C,G"])]
    for kw in cases:
        assert_same(*both(model, 3, **kw))


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_static_amadeus_every_step_count_order_and_threshold(steps):
    model = random_parts("amadeus", seed=steps)
    for kw in (dict(order="confidence"), dict(order="harmony", reveal_threshold=0.3), dict(reveal_threshold=2.0),
               dict(controls=["instrument=drums"])):
        assert_same(*both(model, 2, max_notes=20, steps=steps, seed=steps, **kw))


def test_static_with_a_trained_model_ends_pieces_on_their_own(trained_tiny):
    """A trained model writes EOS (pieces of different lengths stay in the batch, masked), and its sure
    slots make eager skip passes that static runs without looking."""
    model = trained_tiny[0]
    eager, static = both(model, 4, max_notes=60, max_bars=3, steps=3, seed=5, reveal_threshold=1e-6)
    assert_same(eager, static)
    assert len({len(t) for t in static.tokens}) > 1
    assert static.head_passes > eager.head_passes  # eager skipped the passes nobody needed
    assert_same(*both(model, 3, max_notes=30, steps=2, seed=6, controls=["key=C major", "tempo=120"]))
    piece = static.tokens[0]
    for attrs, kw in ((["velocity", "pitch"], {}), (["instrument"], dict(controls=["instrument=violin,cello"],
                                                                         rows=np.arange(1, 6)))):
        a = regenerate(model, piece, attrs, seed=7, decode="eager", **kw)
        b = regenerate(model, piece, attrs, seed=7, decode="static", **kw)
        assert_same(a, b)


@pytest.mark.parametrize("decoder", ["amadeus", "flat"])
def test_static_with_text_guidance(decoder):
    """Conditional and unconditional rows side by side (2B cache rows), a padded prefix, guidance 3."""
    model = random_parts(decoder, prefix_dim=16, seed=1)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 5, 16, generator=g) * 3
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    for kw in (dict(guidance=3.0, steps=2), dict(guidance=1.0, steps=3, controls=["tempo=96"])):
        assert_same(*both(model, 2, prefix=prefix, prefix_mask=mask, max_notes=20, seed=8, **kw))


def test_static_runs_every_pass_of_every_note():
    model = random_parts("amadeus")
    for steps in (1, 2, 4):
        r = generate(model, 2, max_notes=12, min_notes=12, steps=steps, seed=0, decode="static")
        assert r.head_passes == 12 * steps  # 12 notes, S passes each, whatever the data


@pytest.mark.parametrize("decoder", ["amadeus", "flat", "nested"])
def test_static_reads_the_device_at_most_once_per_generated_row(decoder):
    """The acceptance test of issue 23: at batch 1 (the worst case) the host reads the device at most
    once per generated row under static decoding (once per LOOK_EVERY notes, plus the prompt's check
    and the final reads), with controls; eager reads it several times per note."""
    model = random_parts(decoder)
    kw = dict(max_notes=40, min_notes=40, steps=2, seed=1, controls=["tempo=96", "instrument=violin@bars=2-3"])
    with count_syncs() as static:
        r = generate(model, 1, decode="static", **kw)
    rows = len(r.tokens[0]) - 1  # generated rows, the final EOS included
    assert rows == 41
    assert static.reads <= rows / LOOK_EVERY + 4, dict(static.where)
    assert static.reads / rows <= 1
    with count_syncs() as eager:
        generate(model, 1, decode="eager", **kw)
    assert eager.reads > rows  # what static decoding removes


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA's sync debug mode needs a GPU; on the CPU the spy of the test above counts the reads")
def test_static_on_cuda_does_not_synchronise_inside_a_note():
    model = random_parts("amadeus")
    model.backbone.cuda()
    model.head.cuda()
    kw = dict(max_notes=40, min_notes=40, steps=2, seed=1, controls=["tempo=96"])
    reference = generate(model, 2, decode="eager", **kw)
    with count_syncs() as c:
        r = generate(model, 2, **kw)  # auto: static with CUDA graphs on CUDA
    assert r.settings["decode"] == "static (cuda-graphs)"
    rows = sum(len(t) - 1 for t in r.tokens)
    assert c.reads <= rows / 2 and c.cuda <= rows / 2, (c.reads, c.cuda, dict(c.where))
    assert_same(reference, r)


def test_compiled_note_is_one_graph_and_gives_the_same_pieces(monkeypatch):
    """decode="compile" traces the whole note with torch.compile(fullgraph=True): a data-dependent branch
    or a host read inside the note would break the graph and fail. The backend here is dynamo's "eager"
    (the trace without inductor's minutes of code generation; benchmarks/generate.py --compile checks
    inductor's pieces against eager's)."""
    torch._dynamo.reset()
    monkeypatch.setattr(replay, "COMPILE_BACKEND", "eager")
    model = random_parts("amadeus")
    kw = dict(max_notes=12, steps=2, seed=3, controls=["tempo=96"])
    assert_same(generate(model, 2, decode="eager", **kw), generate(model, 2, decode="compile", **kw))
    torch._dynamo.reset()


def test_frozen_cache_step_matches_the_growing_cache():
    """A frozen step (device index, window, validity mask) gives the eager cached forward's latents, with
    left-padded rows, at a window smaller than the capacity and at the whole capacity."""
    torch.manual_seed(0)
    vocab = (5, 6, 7)
    model = NoteTransformer(ModelConfig(vocab_sizes=vocab, d_model=32, n_layers=2, n_heads=4, dropout=0.0)).eval()
    g = torch.Generator().manual_seed(1)
    notes = torch.stack([torch.randint(0, v, (2, 9), generator=g) for v in vocab], -1)  # [2, 9, 3]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :2] = False
    with torch.inference_mode():
        ref_cache = model.new_cache(2, capacity=16)
        model(notes[:, :4], notes_mask=mask[:, :4], cache=ref_cache)
        ref = [model(notes[:, t: t + 1], cache=ref_cache).z[:, 0] for t in range(4, 9)]
        for win in (6, 0):
            cache = model.new_cache(2, capacity=16)
            model(notes[:, :4], notes_mask=mask[:, :4], cache=cache)
            cache.freeze()
            for t in range(4, 9):
                cache.window = max(win, t + 1) if win else 0
                z = model(notes[:, t: t + 1], cache=cache).z[:, 0]
                torch.testing.assert_close(z, ref[t - 4], rtol=1e-5, atol=1e-5)
            assert int(cache.t) == 9 and cache.pos.tolist() == [9, 7]
        with pytest.raises(ValueError, match="keeps its rows"):
            cache.select(torch.tensor([0]))
        with pytest.raises(ValueError, match="one position per row"):
            model(notes[:, :2], cache=cache)
        with pytest.raises(ValueError, match="after its first call"):
            model.new_cache(2).freeze()


def test_decode_option_and_windows():
    assert SamplingOptions().decode == "auto"
    assert SamplingOptions().decode_for("cuda") == "static" and SamplingOptions().decode_for("cpu") == "eager"
    assert SamplingOptions(use_cache=False).decode_for("cuda") == "eager"
    assert SamplingOptions(decode="compile").decode_for("cpu") == "compile"
    with pytest.raises(ValueError, match="decode must be one of"):
        SamplingOptions(decode="fast")
    with pytest.raises(ValueError, match="needs use_cache"):
        SamplingOptions(decode="static", use_cache=False)
    assert window(5, 1000) == MIN_WINDOW and window(MIN_WINDOW + 1, 1000) == 2 * MIN_WINDOW
    assert window(700, 600) == 600 and window(5, 40) == 40
