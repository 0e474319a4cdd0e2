"""Packed rows (several pieces laid end to end in one row, `amadeus.windows`): a piece's outputs, exact
likelihood, gradients and MLSDES feature in a packed row equal those of the piece alone, for every decoder;
the module trains on packed batches and logs the fill."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amadeus.losses import masked_mean_pool, segment_mean_pool
from amadeus.model.baselines import DECODERS, build_decoder
from amadeus.model.config import ModelConfig
from amadeus.model.transformer import segment_mask, segment_positions
from amadeus.tokenizer import NoteTokenizer
from amadeus.windows import assemble_row

pytestmark = pytest.mark.usefixtures("one_thread")
TOK = NoteTokenizer()
CFG = ModelConfig(vocab_sizes=TOK.vocab_sizes, d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                  dropout=0.0, mlsdes_depth=0.5)


def _piece(n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    return np.stack([g.integers(1, v, n) for v in TOK.vocab_sizes], 1).astype(np.int64)


def test_segment_positions_and_mask():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0]]
    m = segment_mask(seg)[0, 0]
    assert m[4].tolist() == [False, False, False, True, True, False]  # piece 2 sees itself only, causally
    assert m[2].tolist() == [True, True, True, False, False, False]
    assert m[5].tolist() == [False] * 5 + [True]  # padding sees only itself


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_piece_packed_equals_the_piece_alone(decoder):
    torch.manual_seed(0)
    backbone, head = build_decoder(CFG, decoder)
    a, b = _piece(7, 1), _piece(9, 2)
    notes, seg = assemble_row([a, b], 20, TOK.K)
    notes, seg = torch.as_tensor(notes)[None], torch.as_tensor(seg)[None]  # [1, 20, K], [1, 20]
    valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    params = [p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad]

    def nll_and_grads(rows, v, segments=None, keep=None):
        terms = head.exact_nll(backbone, rows, v, segments=segments)  # [N, K]
        terms = terms if keep is None else terms[keep]
        grads = torch.autograd.grad(terms.sum(), params, allow_unused=True)
        return terms.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    packed, g_packed = nll_and_grads(notes, valid, seg, keep=slice(0, 6))  # a's 6 targets come first
    alone, g_alone = nll_and_grads(torch.as_tensor(a)[None], torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    for x, y in zip(g_packed, g_alone):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    both = head.exact_nll(backbone, notes, valid, segments=seg).detach()
    b_alone = head.exact_nll(backbone, torch.as_tensor(b)[None], torch.ones(1, 8, dtype=torch.bool)).detach()
    torch.testing.assert_close(both[6:], b_alone, atol=1e-5, rtol=1e-5)
    if decoder == "amadeus":  # the MLSDES features: one per piece, each the piece's own
        with torch.no_grad():
            mid = backbone(notes[:, :-1], segments=seg[:, :-1]).mid
            pooled = segment_mean_pool(mid, seg[:, :-1])
            own = torch.cat([masked_mean_pool(backbone(torch.as_tensor(p)[None]).mid,
                                              torch.ones(1, len(p), dtype=torch.bool)) for p in (a, b)])
        assert pooled.shape == (2, CFG.d_model)
        # both pieces lie wholly in the input rows (0..15 of 0..18): each feature pools all of its rows
        torch.testing.assert_close(pooled, own, atol=1e-5, rtol=1e-5)


def test_the_module_trains_on_packed_rows_and_logs_the_fill(tiny_shards, tmp_path):
    from amadeus.errors import RunSetupError
    from amadeus.module import AmadeusModule
    from test_module import datamodule, trainer

    net = dict(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2, dropout=0.0)
    module = AmadeusModule(network=ModelConfig(**net), warmup_steps=1)
    tr = trainer(tmp_path, 4, log_every_n_steps=1)
    dm = datamodule(tiny_shards, max_notes=512, batch_size=2, pack=True)
    tr.fit(module, datamodule=dm)
    m = tr.callback_metrics
    assert 0 < float(m["train/fill"]) <= 1 and torch.isfinite(m["val/nll_per_note"])
    batch = next(iter(dm.train_dataloader()))
    assert int(batch["segments"].max()) > 1  # rows of 513 hold several of these pieces
    text = AmadeusModule(network=ModelConfig(**net), text_encoder="all-MiniLM-L6-v2", text_max_length=16)
    with pytest.raises(RunSetupError, match="--data.pack false"):
        text.training_step(batch, 0)
