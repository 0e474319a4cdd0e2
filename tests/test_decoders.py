"""Every decoder (amadeus, flat, nested, parallel) trains through AmadeusModule, samples through
`generate`, round-trips through a checkpoint, and has an exact likelihood (probabilities sum to 1)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from amadeus.model.baselines import DECODERS, build_decoder
from amadeus.model.config import ModelConfig
from amadeus.model.diffusion import chain_rule_nll
from amadeus.module import AmadeusModule
from amadeus.sampling import generate
from conftest import _training_windows, chorale_like
from test_sampling import assert_well_formed

TINY = dict(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2, dropout=0.0, use_mlsdes=False)


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(3)
    scores = [chorale_like(rng, 60, False, 4, bars=4, bpm=90.0) for _ in range(4)]
    return _training_windows(AmadeusModule(network=ModelConfig(**TINY)).tokenizer, scores, length=24)


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_decoder_trains_samples_and_reloads(decoder, windows, one_thread, tmp_path):
    torch.manual_seed(0)
    module = AmadeusModule(network=ModelConfig(**TINY), decoder=decoder)
    assert module.hparams.decoder == decoder
    notes, mask = windows
    batch = {"notes": notes[:4], "mask": mask[:4]}
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    module.train()
    losses = []
    for _ in range(25):
        torch.manual_seed(len(losses))
        loss = module.shared_step(batch, "train")["loss"]
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    module.eval()
    with torch.no_grad():
        out = module.shared_step(batch, "val")
    assert out["nll_per_note"] > 0 and ("elbo_per_note" in out) == (decoder == "amadeus")
    # amadeus evaluate's likelihood: the exact NLL per note equals validation's on the same rows
    from amadeus.evaluate import diffusion_nll
    items = [{"notes": n.numpy(), "mask": m.numpy(), "caption": "", "window": i, "worker": 0, "epoch": 0,
              "split": "validation"} for i, (n, m) in enumerate(zip(notes[:4], mask[:4]))]
    report = diffusion_nll(module, items, text=False, batch_size=4, num_samples=2)
    assert report["nll_per_note"] == pytest.approx(float(out["nll_per_note"]), rel=1e-4)
    assert report["nll/total"] == pytest.approx(report.get("elbo_per_note", report["nll_per_note"]), rel=1e-5)
    res = generate(module, 2, seed=1, max_notes=24, batch_size=1)
    for tok in res.tokens:
        assert_well_formed(module.tokenizer, tok)
    assert res.settings["decoder"] == decoder
    # batch vs single, cached vs recomputed: the same pieces
    again = generate(module, 2, seed=1, max_notes=24, use_cache=False)
    assert all(np.array_equal(a, b) for a, b in zip(res.tokens, again.tokens))
    # controls are honoured
    piano = generate(module, 1, seed=2, max_notes=24, controls=["instrument=piano"]).tokens[0]
    assert_well_formed(module.tokenizer, piano)
    inst = piano[:, 4][piano[:, 5] > 0]
    assert (inst == 1).all()
    # checkpoint: the decoder is rebuilt from the hyper-parameters
    from amadeus.api import Amadeus
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    model = Amadeus.load(str(path))
    assert model.module.decoder == decoder
    assert np.array_equal(model.sample(1, seed=1, max_notes=24).tokens[0], res.tokens[0])
    if decoder != "amadeus":
        with pytest.raises(ValueError, match="regenerate is not supported"):
            model.regenerate(res.tokens[0], ["velocity"])


SMALL = ModelConfig(vocab_sizes=(3, 4, 3), d_model=16, n_layers=1, n_heads=2, head_width=16, head_heads=2,
                    dropout=0.0, use_mlsdes=False)


@pytest.mark.parametrize("decoder", DECODERS)
def test_exact_nll_sums_to_one(decoder, one_thread):
    """Sum over every value combination of the next note of exp(-NLL) is 1 (K=3, vocabularies 3, 4, 3)."""
    torch.manual_seed(0)
    backbone, head = build_decoder(SMALL, decoder)
    backbone.eval(), head.eval()
    context = torch.tensor([[[1, 0, 0], [2, 3, 1]]])  # two rows before the note
    combos = torch.tensor(list(itertools.product(*(range(v) for v in SMALL.vocab_sizes))))  # [36, 3]
    notes = torch.cat([context.expand(len(combos), -1, -1), combos[:, None]], 1)  # [36, 3, 3]
    valid = torch.zeros(len(combos), 2, dtype=torch.bool)
    valid[:, -1] = True  # only the next note is scored
    with torch.no_grad():
        nll = head.exact_nll(backbone, notes, valid).sum(1)
        if not head.autoregressive:  # any fixed reveal order of the diffusion head is a distribution too
            C = head.context(backbone(notes[:, :-1]).z[:, -1])
            other = chain_rule_nll(lambda masked: head.logits(C, combos, masked), combos, order=[2, 0, 1]).sum(1)
            assert torch.exp(-other.double()).sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.exp(-nll.double()).sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("decoder", ["amadeus", "nested"])
def test_lightning_logs_likelihoods_in_nats_per_note(decoder, tiny_shards, tmp_path):
    from test_module import datamodule, trainer

    module = AmadeusModule(network=ModelConfig(**TINY), decoder=decoder)
    tr = trainer(tmp_path, 3)
    tr.fit(module, datamodule=datamodule(tiny_shards))
    keys = set(tr.callback_metrics)
    assert {"val/loss", "val/diffusion", "val/nll_per_note"} <= keys
    assert ("val/elbo_per_note" in keys) == (decoder == "amadeus")
    per_attr = "masked_ce" if decoder == "amadeus" else "nll"
    assert f"val/{per_attr}/pitch" in keys and not any(k.startswith("val/nll/") for k in keys if per_attr != "nll")
    if decoder != "amadeus":  # the chain-rule terms sum to the NLL per note
        total = sum(float(tr.callback_metrics[f"val/nll/{a}"]) for a in module.tokenizer.attribute_names)
        assert total == pytest.approx(float(tr.callback_metrics["val/nll_per_note"]), rel=0.05)
