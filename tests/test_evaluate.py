"""`amadeus evaluate`: every metric in the JSON report, the table, and exit code 2 on bad arguments."""
from __future__ import annotations

import json
import math

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from amadeus.cli import main as cli_main
from amadeus.descriptors import DESCRIPTORS
from amadeus.evaluate import CHOSEN_ON, CLAP_NOT_COMPUTED, SCORED, diffusion_nll
from amadeus.sampling import TEXT_GUIDANCE, SamplingOptions
from amadeus.syntax import SYNTAX_ERRORS
from amadeus.metrics import ADHERENCE_METRICS
from amadeus.tokenizer import ATTRIBUTES


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors run best on one thread


@pytest.fixture(scope="module")
def text_ckpt(tiny_shards, tmp_path_factory):
    """A tiny text-conditioned model trained 30 steps on the synthetic shards, saved by Lightning."""
    import lightning as L

    from amadeus.datamodule import MusicDataModule
    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    L.seed_everything(0, verbose=False)
    root = tmp_path_factory.mktemp("eval_ckpt")
    module = AmadeusModule(network=ModelConfig(d_model=32, n_layers=2, n_heads=2, head_width=32, head_heads=2,
                                               dropout=0.0, use_mlsdes=False),
                           text_encoder="all-MiniLM-L6-v2", text_max_length=32, lr=3e-3, warmup_steps=5,
                           caption_dropout=0.2)
    dm = MusicDataModule(tiny_shards, stage="finetune", max_notes=32, batch_size=8, num_workers=0, transpose=None)
    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust on a busy machine
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _finite_or_none(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and math.isfinite(x))


def _test_pieces(tiny_shards, captioned: bool = True) -> int:
    t = pq.read_table(sorted((tiny_shards / "shards").glob("*.parquet")), columns=["split", "caption"])
    keep = pc.equal(t["split"], "test")
    return int(pc.sum(pc.and_(keep, pc.not_equal(t["caption"], "")) if captioned else keep).as_py() or 0)


def test_evaluate_reports_every_metric(text_ckpt, tiny_shards, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = cli_main(["evaluate", "--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--split", "test",
                   "--num", "2", "--max-notes", "32", "--steps", "2", "--guidance", "2", "--seed", "3",
                   "--nll-windows", "2", "--nll-length", "32", "--nll-samples", "2", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())  # strict JSON: undefined values are null, never NaN
    n = min(2, _test_pieces(tiny_shards))
    assert n >= 1 and report["settings"]["num"] == n and report["text_conditioned"] is True
    assert [p["seed"] for p in report["pieces"]] == [3 + i for i in range(n)]

    # adherence: both targets x both modes, every column present; fields the targets state are scored
    for target in ("features", "caption"):
        for mode in ("with_text", "without_text"):
            row, scored = report["adherence"][target][mode], report["adherence_counts"][target][mode]
            ci = report["adherence_ci95"][target][mode]
            assert set(row) == set(SCORED) == set(scored) == set(ci) and set(ADHERENCE_METRICS) < set(SCORED)
            for name in SCORED:
                assert (row[name] is None) == (scored[name] == 0) == (ci[name] == [None, None])
                assert row[name] is None or 0.0 <= ci[name][0] <= row[name] <= ci[name][1] <= 100.0
        diff = report["adherence_difference"][target]
        for name in SCORED:
            with_, without = report["adherence"][target]["with_text"][name], report["adherence"][target]["without_text"][name]
            if with_ is not None and without is not None and diff[name]["pieces"] == n:
                assert diff[name]["difference"] == pytest.approx(with_ - without)
                assert diff[name]["ci95"][0] <= diff[name]["difference"] <= diff[name]["ci95"][1]
    assert report["adherence_info"]["reference_split"] == "test" and report["adherence_info"]["chosen_on"] == CHOSEN_ON
    # stored features state key, tempo, time signature and instruments for every piece; the synthetic
    # captions ("A slow piece in C major, 3/4, at 60 bpm, for choir and bass.") state the same fields
    for name in ("TB", "TBT", "CK", "CKD", "CTS", "CI"):
        assert report["adherence_counts"]["features"]["with_text"][name] == n
        assert report["adherence_counts"]["caption"]["without_text"][name] == n

    # unconditional metrics of the generated pieces (and of the data, for reference)
    for mode in ("with_text", "without_text"):
        gen = report["generation"][mode]
        assert gen["notes"] > 0 and gen["notes_per_s"] > 0 and gen["seconds"] > 0
        assert set(gen["syntax_error_rate"]) == {"any", *SYNTAX_ERRORS}
        assert gen["syntax_error_rate"]["any"] == 0.0  # the sampler's grammar guards
        assert 0.0 <= gen["pitch_class_entropy"] <= math.log2(12)
        assert _finite_or_none(gen["groove_consistency"])
    ref = report["data_reference"]
    assert ref["syntax_error_rate"]["any"] == 0.0 and 0 < ref["pitch_class_entropy"] <= math.log2(12)
    assert 0.0 <= ref["groove_consistency"] <= 1.0

    # diffusion ELBO per attribute, with and without the caption
    for mode in ("without_text", "with_text"):
        nll = report["nll"][mode]
        assert nll["windows"] == 2 and nll["notes"] > 0
        parts = [nll[f"nll/{a}"] for a in ATTRIBUTES]
        assert all(math.isfinite(v) and v >= 0 for v in parts)
        assert nll["nll/total"] == pytest.approx(sum(parts), rel=1e-5) and nll["nll/total"] > 0
        # nats per note: the ELBO (an upper bound) and the exact NLL of the column-order chain rule
        assert nll["elbo_per_note"] == nll["nll/total"] and nll["nll_per_note"] > 0

    # sample quality: descriptors of both modes and of real training pieces against the held-out ones
    quality = report["quality"]
    assert quality["real_pieces"] == _test_pieces(tiny_shards, captioned=False) and quality["ceiling_pieces"] > 0
    assert quality["reference_split"] == "test" and quality["chosen_on"] == CHOSEN_ON
    assert quality["limits"]["max_voices"] >= 4  # four-voice pieces
    for key in ("ceiling", "with_text", "without_text"):
        q = quality[key]
        assert set(q["oa"]) == set(DESCRIPTORS) == set(q["mean"]) == set(q["undefined"]) == set(q["bandwidth"])
        assert all(v is None or 0.0 <= v <= 1.0 for v in q["oa"].values())
        assert 0.0 < q["mean_oa"] <= 1.0 and q["mean_oa_ci95"][0] <= q["mean_oa_ci95"][1]
        assert 0.0 <= q["degenerate"]["rate"] <= 1.0 and q["furthest"]
    assert quality["ceiling"]["degenerate"]["rate"] == 0.0  # real pieces are within the corpus' maxima
    assert quality["ceiling"]["real_mean"] == quality["without_text"]["real_mean"]

    assert report["clap"] == CLAP_NOT_COMPUTED
    printed = capsys.readouterr().out
    assert CLAP_NOT_COMPUTED in printed and "with text" in printed and "without text" in printed
    assert "NLL (exact)" in printed and "nats per note" in printed
    assert all(c in printed for c in ADHERENCE_METRICS)
    assert "sample quality against" in printed and "consonance" in printed and "degenerate pieces" in printed
    assert "95 % interval" in printed and "mean OA [95 % interval]" in printed


def test_nll_matches_a_direct_computation(text_ckpt, tiny_shards):
    """The evaluator's ELBO equals diffusion_elbo_nll run by hand on the same rows (no text)."""
    from amadeus.datamodule import EvalWindows, MusicDataModule
    from amadeus.api import Amadeus
    from amadeus.model.diffusion import diffusion_elbo_nll

    module = Amadeus.load(text_ckpt).module
    dm = MusicDataModule(str(tiny_shards), num_workers=0)
    windows = EvalWindows(dm.files("validation", required=False), "validation", "pretrain", module.tokenizer, 16, 2)
    got = diffusion_nll(module, windows, text=False, num_samples=2, seed=1)
    Cs, targets = [], []
    with torch.no_grad():  # window by window, unbatched; the evaluator batches both windows in one call
        for w in windows.items:
            x = torch.as_tensor(w["notes"])[None]  # [1, T+1, K]
            m = torch.as_tensor(w["mask"])[None]
            valid = (m[:, 1:] & m[:, :-1])[0]
            z = module.backbone(x[:, :-1][:, valid]).z[0]  # [N, d]: real rows only, no padding at all
            Cs.append(module.head.context(z))
            targets.append(x[0, 1:][valid])
        C, tv = torch.cat(Cs), torch.cat(targets)
        total = diffusion_elbo_nll(lambda mk: module.head.logits(C, tv, mk), tv, 2, seed=1).sum(0)
    notes = len(tv)
    assert got["notes"] == notes
    for k, a in enumerate(ATTRIBUTES):
        assert got[f"nll/{a}"] == pytest.approx(float(total[k] / notes), rel=1e-4, abs=1e-6)


def test_bad_arguments_exit_2(text_ckpt, tiny_shards, tmp_path, capsys):
    def evaluate(*args: str) -> int:
        return cli_main(["evaluate", *args])

    assert evaluate("--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(tiny_shards)) == 2
    assert "missing.ckpt: no such checkpoint" in capsys.readouterr().err
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tmp_path / "nowhere")) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tmp_path / "empty")) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--num", "0") == 2
    assert "--num must be >= 1" in capsys.readouterr().err
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--steps", "9") == 2
    assert "--steps: steps must be an integer in 1..8" in capsys.readouterr().err
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--clap", str(tmp_path / "clap")) == 2
    assert "no such local CLAP checkpoint" in capsys.readouterr().err
    (tmp_path / "clap").mkdir()  # exists, but is not a Hugging Face model folder
    assert evaluate("--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--clap", str(tmp_path / "clap"),
                    "--num", "1", "--max-notes", "4", "--nll-windows", "0") == 2
    assert "not a local Hugging Face model directory" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert evaluate("--ckpt", str(bad), "--data", str(tiny_shards)) == 2
    err = capsys.readouterr().err
    assert err.startswith("amadeus evaluate: error:") and "bad.ckpt" in err and len(err.strip().splitlines()) == 1


def test_unconditional_model_gets_the_baseline_only(trained_tiny, tiny_shards, tmp_path, capsys):
    out = tmp_path / "uncond.json"
    rc = cli_main(["evaluate", "--ckpt", str(trained_tiny[1]), "--data", str(tiny_shards), "--split", "validation",
                   "--num", "2", "--max-notes", "24", "--nll-windows", "1", "--nll-length", "16", "--nll-samples", "1",
                   "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["text_conditioned"] is False and report["settings"]["guidance"] is None
    assert report["generation"]["with_text"] is None and report["nll"]["with_text"] is None
    for target in ("features", "caption"):
        assert report["adherence"][target]["with_text"] is None
        assert report["adherence"][target]["without_text"]["CTS"] is not None
    assert report["generation"]["without_text"]["notes"] > 0 and report["nll"]["without_text"]["nll/total"] > 0
    assert report["quality"]["with_text"] is None and report["quality"]["without_text"]["mean_oa"] > 0
    assert "not computed (model has no text encoder)" in capsys.readouterr().out


def test_clap_with_a_local_checkpoint(text_ckpt, tiny_shards, tmp_path, capsys):
    from test_metrics import tiny_clap_dir

    clap = tiny_clap_dir(tmp_path / "clap")  # random weights: the score is a number, not a quality
    out = tmp_path / "clap.json"
    rc = cli_main(["evaluate", "--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--num", "1", "--max-notes", "16",
                   "--nll-windows", "0", "--clap", str(clap), "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["clap"]) == {"with_text", "without_text"} and report["nll"] == {}
    for v in report["clap"].values():  # None when every chunk fell below ClapScore's similarity floor
        assert v is None or -1.0 <= v <= 1.0
    printed = capsys.readouterr().out
    assert "CLAP: with text" in printed and CLAP_NOT_COMPUTED not in printed


def test_the_demo_text_stage_on_a_small_styled_corpus(text_ckpt, styled_corpus, tmp_path, capsys):
    """The demo's stage 4 after fine-tuning: held-out captions with and without text into
    OUT/evaluation.json (CS beside the MidiCaps metrics), and two pieces written from two captions."""
    from amadeus.commands import demo

    summary = demo._text_stage(text_ckpt, tmp_path, styled_corpus / "shards", prompts=4, max_notes=16,
                               options=SamplingOptions(steps=2),
                               nll_windows=0, style_model=tmp_path / "style.json")
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["settings"]["num"] == 4 and report["split"] == "test"
    for mode in ("with_text", "without_text"):
        assert set(summary["adherence"][mode]) == set(demo.HEADLINE)
        assert summary["adherence"][mode]["CS"] == report["adherence"]["features"][mode]["CS"]
    assert summary["style_ceiling"]["accuracy"] == 100.0
    meters = report["time_signatures"]  # what guidance does to the metre shows here first
    assert all(sum(meters[k].values()) == 4 for k in ("prompts", "with_text", "without_text"))
    assert sorted(p.name for p in tmp_path.glob("text*.mid")) == ["text0_0.mid", "text1_0.mid"]
    out = capsys.readouterr().out
    assert f"the captions of 4 held-out pieces (guidance {TEXT_GUIDANCE:g})" in out and out.count(" from: ") == 2


def test_prompts_are_stratified_by_style(styled_corpus):
    """The test split's first pieces in shard order are all chorales; the default takes the styles in
    turn, --first (stratify=False) keeps shard order."""
    from amadeus.evaluate import read_pieces
    from amadeus.style import captions_styles

    style = captions_styles(styled_corpus / "shards")
    first, _ = read_pieces(styled_corpus / "shards", "test", 4, stratify=False)
    mixed, _ = read_pieces(styled_corpus / "shards", "test", 4)
    assert [style(p["source"]) for p in first] == ["Bach chorale"] * 4
    assert sorted(style(p["source"]) for p in mixed) == ["Bach chorale"] * 2 + ["Irish jig"] * 2
    assert len({p["id"] for p in mixed}) == 4


def test_evaluate_scores_style_and_the_midicaps_convention(text_ckpt, styled_corpus, tmp_path, capsys):
    """On data with styles (captions.jsonl beside the shards) the report has CS beside the MidiCaps
    metrics and the classifier's ceilings; --adherence midicaps is recorded and changes only the
    tempo / meter / key reading."""
    out = tmp_path / "eval.json"
    rc = cli_main(["evaluate", "--ckpt", str(text_ckpt), "--data", str(styled_corpus / "shards"), "--split", "test",
                   "--num", "4", "--max-notes", "32", "--steps", "2", "--nll-windows", "0", "--adherence", "midicaps",
                   "--top-p", "pitch=0.9", "--plausibility", "0",
                   "--style-model", str(tmp_path / "style.json"), "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["settings"]["adherence"] == "midicaps" and (tmp_path / "style.json").is_file()
    assert report["settings"]["top_p"]["pitch"] == 0.9 and report["settings"]["plausibility"] == 0.0
    style = report["style"]
    assert style["classes"] == ["Bach chorale", "Irish jig"] and style["rows"] == 32
    assert (tmp_path / "style-no-metre.json").is_file()  # the classifier without the metre features beside it
    for name in ("CS", "CS_no_metre"):
        assert style[name]["held_out"]["accuracy"] >= 90.0 and style[name]["prompt_pieces"]["pieces"] == 4
    assert style["CS_no_metre"]["features"] < style["CS"]["features"]
    for target in ("features", "caption"):
        for mode in ("with_text", "without_text"):
            for name in ("CS", "CS_no_metre"):
                assert report["adherence_counts"][target][mode][name] == 4
                assert 0.0 <= report["adherence"][target][mode][name] <= 100.0
    printed = capsys.readouterr().out
    assert "CS ceiling" in printed and "CS_no_metre ceiling" in printed and "midicaps features" in printed
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses an unknown convention
        cli_main(["evaluate", "--ckpt", str(text_ckpt), "--adherence", "muspy"])
    assert exit_info.value.code == 2


def test_evaluate_without_styles_reports_no_cs(text_ckpt, tiny_shards, tmp_path):
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--ckpt", str(text_ckpt), "--data", str(tiny_shards), "--split", "test", "--num", "1",
                     "--max-notes", "16", "--steps", "2", "--nll-windows", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["style"] is None and report["settings"]["adherence"] == "amadeus"
    assert report["adherence"]["features"]["without_text"]["CS"] is None
    assert report["adherence_counts"]["features"]["without_text"]["CS"] == 0
