"""Infilling and accompaniment, measured on held-out pieces.

    python benchmarks/infill.py --ckpt outputs/demo/model.ckpt [--data SHARDS] [--split test] [--num 64]
                                [--bars 5-6] [--acc-bars 4] [--steps 3] [--seed 0] [--quick]

Infilling: `num` held-out pieces (of `--split`, at least one bar after the span) have bars A-B rewritten by
the model given the music before and after (`amadeus.infill.infill_prompt`, all pieces in one batch).
  - span OA: the descriptors (`amadeus.descriptors`) of the written spans against the real spans, beside
    the ceiling (the real spans of as many training pieces against the same real spans);
  - seams: the melodic interval (top line) and the inter-onset interval (quarters) across each seam (into
    bar A, out of bar B), written vs real, as the overlapped area of the two distributions;
  - NLL of the real span (exact, nats per note): given both sides (the FIM sequence) and given the left
    side only (the same bars before it, left to right); lower is better.
Accompaniment: on the first `--acc-bars` bars of the same pieces the melody (top line) is kept and the
model writes the other parts; their descriptors against the real other parts, and the NLL of the real
other parts given the melody vs given nothing (the parts alone).
Writes benchmarks/results/infill.json (--quick: infill-quick.json) and prints a table.

    python benchmarks/infill.py --ckpt CKPT --acceptance [--seed 0] [--song-seed 5000] [--song-style rock]

Acceptance (issue 24): two hidden pieces, the first `--split` chorale of the shards with a bar after the
span, and a multi-track General MIDI song with drums (`songs.make_song`; seed 5000, style rock: no other
benchmark makes it), have bars A-B rewritten twice each (seeds S and S + 1) through the public API
(`Amadeus.infill` on a MIDI file), because that is what a user runs. Per run: the share of the source's
notes outside the span (onset outside its ticks) found unchanged in the result, compared as a multiset of
(program, is_drum, pitch, onset, duration, velocity); the result's extra notes outside the span as a share
of the same; the span's note count over the source's (all notes, drums too); the cosine between the
duration-weighted pitch-class histograms (drums excluded) of the written span and of the source's notes
outside it. Thresholds: >= 98 %, <= 2 %, 0.5x-2x, >= 0.75. Reported beside them, not judged: the share of
the span's notes on the source's own instruments (program, is_drum) and its drum notes, which the thresholds
do not see. Writes benchmarks/results/infill-acceptance.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
REQUIREMENT = ("A hidden chorale and a hidden multi-track song with drums, bars 5-6 infilled twice each: >= 98 % of "
               "the notes outside the span unchanged, <= 2 % extra notes there; the span holds 0.5x-2x the source's "
               "notes; its pitch classes agree with the context (cosine >= 0.75).")
THRESHOLDS = {"kept_outside": (0.98, None), "extra_outside": (None, 0.02), "span_ratio": (0.5, 2.0),
              "pc_cosine": (0.75, None)}  # figure -> (lowest, highest) allowed


def _excerpt(score, start: int, end: int):
    """The notes of `score` starting in [start, end) ticks, moved to start at 0."""
    return score.clip(start, end, False).shift_time(-start)


def _top_line(score) -> tuple[np.ndarray, np.ndarray]:
    """(onsets in quarters, highest pitch at each onset) of the pitched notes."""
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not parts:
        return np.zeros(0), np.zeros(0)
    time = np.concatenate([p["time"] for p in parts]) / score.ticks_per_quarter
    pitch = np.concatenate([p["pitch"] for p in parts])
    onsets = np.unique(time)
    top = np.array([pitch[time == t].max() for t in onsets])
    return onsets, top


def seams(score, start: float, end: float) -> dict[str, float]:
    """Melodic interval and inter-onset interval across the seams at `start` and `end` (quarters)."""
    on, top = _top_line(score)
    out = {}
    for name, t in (("in", start), ("out", end)):
        before, after = np.flatnonzero(on < t), np.flatnonzero(on >= t)
        ok = len(before) and len(after)
        out[f"{name}_interval"] = float(abs(top[after[0]] - top[before[-1]])) if ok else np.nan
        out[f"{name}_ioi"] = float(on[after[0]] - on[before[-1]]) if ok else np.nan
    return out


@torch.no_grad()
def nll(module, rows: np.ndarray, first_scored: int) -> tuple[float, int]:
    """Exact NLL (nats, summed) of rows[first_scored:] of one sequence, and how many rows that is."""
    notes = torch.as_tensor(rows, dtype=torch.long)[None]
    valid = torch.zeros(1, len(rows) - 1, dtype=torch.bool)
    valid[0, first_scored - 1:] = True  # target row t+1 is scored where t + 1 >= first_scored
    terms = module.head.exact_nll(module.backbone, notes, valid)
    return float(terms.sum()), int(valid.sum())


def infill_rows(module, tokens: list[np.ndarray], first: int, last: int, options, seed: int, context: int):
    """Write bars first..last of every piece: (written scores, real scores, NLL both sides, NLL left only)."""
    from amadeus.infill import bar_onsets, find_span, fim_rows, infill_prompt, replace_span, span_notes
    from amadeus.sampling import generate

    tok = module.tokenizer
    layout = (tok.default_ts, len(tok.config.time_signatures))
    spans = [find_span(t, first, last) for t in tokens]
    prompts = [infill_prompt(t, s, context, *layout)[0] for t, s in zip(tokens, spans)]
    opts = replace(options, max_bars=last - first + 1, min_notes=1)
    result = generate(module, len(tokens), prompt=prompts, options=opts, seed=seed)
    written, real, both, left = [], [], [0.0, 0], [0.0, 0]
    for t, s, p, rows in zip(tokens, spans, prompts, result.tokens):
        score = tok.decode(t)
        steps = tuple(bar_onsets(t, tok.config.bar_lengths(), *layout)[[first - 1, last]])
        ticks = tuple(int(x * score.ticks_per_quarter // tok.config.resolution) for x in steps)
        written.append(replace_span(score, ticks, span_notes(score, tok, t[:s.start], rows[len(p):], steps)))
        real.append(score)
        _, middle = fim_rows(t, s.start, s.end, *layout)  # the real span, then EOS
        true = middle[:-1]
        x, n = nll(module, np.concatenate([p, true]), len(p))
        both[0], both[1] = both[0] + x, both[1] + n
        prefix = p[np.flatnonzero((p[:, 0] == 1) & (p[:, 1] == 2))[0] + 1: -1]  # rows between PREFIX and MIDDLE
        x, n = nll(module, np.concatenate([t[:1], prefix, true]), 1 + len(prefix))
        left[0], left[1] = left[0] + x, left[1] + n
    return written, real, both[0] / max(1, both[1]), left[0] / max(1, left[1]), ticks


def accompany_rows(module, tokens: list[np.ndarray], bars: int, options, seed: int):
    """Keep the melody of the first `bars` bars, write the rest: (written parts, real parts, NLL given the
    melody, NLL of the parts alone)."""
    from amadeus.infill import accompaniment_rows, bar_starts, top_line
    from amadeus.sampling import generate

    tok = module.tokenizer
    layout = (tok.default_ts, len(tok.config.time_signatures))
    cuts = [t[: int(bar_starts(t)[bars])] for t in tokens]  # SOS + the first `bars` bars
    pairs = [accompaniment_rows(c, top_line(c), *layout) for c in cuts]
    result = generate(module, len(cuts), prompt=[p for p, _ in pairs], options=replace(options, max_bars=bars),
                      seed=seed)
    written, real, given, alone = [], [], [0.0, 0], [0.0, 0]
    for (prompt, parts), rows in zip(pairs, result.tokens):
        written.append(tok.decode(np.concatenate([[tok.sos_row()], rows[len(prompt):]])))
        real.append(tok.decode(np.concatenate([[tok.sos_row()], parts])))
        x, n = nll(module, np.concatenate([prompt, parts]), len(prompt))
        given[0], given[1] = given[0] + x, given[1] + n
        x, n = nll(module, np.concatenate([[tok.sos_row()], parts]), 1)
        alone[0], alone[1] = alone[0] + x, alone[1] + n
    return written, real, given[0] / max(1, given[1]), alone[0] / max(1, alone[1])


# ------------------------------------------------------------------------------------------------ acceptance


def span_ticks(tokenizer, score, first: int, last: int) -> tuple[int, int]:
    """Ticks [start, end) of bars first..last of `score`, as `Amadeus.infill` computes them."""
    from amadeus.infill import bar_onsets

    layout = (tokenizer.default_ts, len(tokenizer.config.time_signatures))
    steps = bar_onsets(tokenizer.encode(score), tokenizer.config.bar_lengths(), *layout)[[first - 1, last]]
    return tuple(int(round(s * score.ticks_per_quarter / tokenizer.config.resolution)) for s in steps)


def split_notes(score, lo: int, hi: int) -> tuple[Counter, Counter]:
    """(outside, inside) multisets of the notes of `score` by onset against [lo, hi) ticks, each note as
    (program, is_drum, pitch, onset, duration, velocity)."""
    out, ins = Counter(), Counter()
    for track in score.tracks:
        for n in track.notes:
            key = (int(track.program), bool(track.is_drum), n.pitch, n.time, n.duration, n.velocity)
            (ins if lo <= n.time < hi else out)[key] += 1
    return out, ins


def pc_histogram(notes: Counter) -> np.ndarray:
    """Duration-weighted pitch-class histogram (12 bins) of the pitched notes of a multiset."""
    h = np.zeros(12)
    for (_, drum, pitch, _, duration, _), n in notes.items():
        if not drum:
            h[pitch % 12] += duration * n
    return h


def acceptance_figures(source, result, ticks: tuple[int, int]) -> dict[str, float]:
    """The issue-24 figures of one infilled `result` of `source` (same ticks per quarter) for span `ticks`."""
    src_out, src_in = split_notes(source, *ticks)
    res_out, res_in = split_notes(result, *ticks)
    n_out = max(1, sum(src_out.values()))
    a, b = pc_histogram(res_in), pc_histogram(src_out)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    kinds = {(int(t.program), bool(t.is_drum)) for t in source.tracks if len(t.notes)}
    written = max(1, sum(res_in.values()))
    return {"kept_outside": sum((src_out & res_out).values()) / n_out,
            "extra_outside": sum((res_out - src_out).values()) / n_out,
            "span_notes_source": sum(src_in.values()), "span_notes_result": sum(res_in.values()),
            "span_ratio": sum(res_in.values()) / max(1, sum(src_in.values())),
            "pc_cosine": float(a @ b) / norm if norm else 0.0,
            # reported, not thresholds: whether the span is written for the piece's own instruments
            "span_on_source_instruments": sum(n for k, n in res_in.items() if k[:2] in kinds) / written,
            "span_drum_notes_source": sum(n for k, n in src_in.items() if k[1]),
            "span_drum_notes_result": sum(n for k, n in res_in.items() if k[1])}


def passes(figures: dict[str, float]) -> dict[str, bool]:
    """Threshold name -> whether `figures` meet it."""
    return {k: (lo is None or figures[k] >= lo) and (hi is None or figures[k] <= hi)
            for k, (lo, hi) in THRESHOLDS.items()}


def acceptance(args: argparse.Namespace) -> None:
    """Run the issue-24 acceptance check (module docstring) and write its JSON."""
    from symusic import Score

    from amadeus.api import Amadeus
    from amadeus.corpus import CORPORA
    from amadeus.datamodule import MusicDataModule
    from amadeus.evaluate import read_tokens
    from amadeus.infill import bar_starts
    from amadeus.sampling import SamplingOptions
    from songs import make_song

    t0 = time.perf_counter()
    first, last = (int(x) for x in args.bars.split("-"))
    model = Amadeus.load(args.ckpt)
    data = args.data or str(CORPORA["bach"].ensure_shards(progress=False))
    dm = MusicDataModule(data_dir=data, num_workers=0, tokenizer_hash=model.tokenizer.config_hash)
    index, chorale = next((i, t) for i, t in enumerate(read_tokens(dm, (args.split,))) if len(bar_starts(t)) > last)
    pieces = {"chorale": (model.tokenizer.decode(chorale), f"{args.split} piece #{index} of {data}"),
              "song": (make_song(args.song_seed, args.song_style),
                       f"benchmarks/songs.py make_song(seed={args.song_seed}, style={args.song_style!r})")}
    options = SamplingOptions(steps=args.steps)
    runs, about = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (score, origin) in pieces.items():
            path = Path(tmp) / f"{name}.mid"
            score.dump_midi(str(path))
            source = Score(str(path))  # what the model is given, as symusic reads it
            ticks = span_ticks(model.tokenizer, source, first, last)
            tracks = [(t.name, int(t.program), bool(t.is_drum)) for t in source.tracks]
            about[name] = {"source": origin, "tracks": tracks, "notes": source.note_num(), "span_ticks": list(ticks)}
            for seed in (args.seed, args.seed + 1):
                result = model.infill(str(path), bars=(first, last), seed=seed, options=options)[0]
                figures = acceptance_figures(source, result, ticks)
                runs.append({"piece": name, "seed": seed, **figures, "pass": passes(figures)})
    verdict = {k: all(r["pass"][k] for r in runs) for k in THRESHOLDS}
    row = {"requirement": REQUIREMENT, "ckpt": args.ckpt, "bars": [first, last],
           "steps": options.steps_for(model.tokenizer.K),
           "histogram": "pitch classes weighted by duration (ticks), drums excluded; span (result) vs outside (source)",
           "thresholds": THRESHOLDS, "pieces": about, "runs": runs, "passed": verdict,
           "all_passed": all(verdict.values()),
           "seconds": round(time.perf_counter() - t0, 1),
           "command": "python benchmarks/infill.py " + shlex.join(sys.argv[1:])}
    out = Path(args.out) if args.out else RESULTS / "infill-acceptance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"acceptance (issue 24): bars {first}-{last}, {args.ckpt}")
    print(f"{'piece':8} {'seed':>4} {'kept out':>9} {'extra out':>9} {'span notes':>11} {'ratio':>6} {'pc cos':>6} "
          f"{'own instr':>9} {'drums':>7}  failed")
    for r in runs:
        failed = ", ".join(k for k, ok in r["pass"].items() if not ok) or "-"
        print(f"{r['piece']:8} {r['seed']:>4} {r['kept_outside']:>9.1%} {r['extra_outside']:>9.1%} "
              f"{r['span_notes_result']:>4} / {r['span_notes_source']:<4}{r['span_ratio']:>6.2f} {r['pc_cosine']:>6.3f} "
              f"{r['span_on_source_instruments']:>9.0%} {r['span_drum_notes_result']:>3}/{r['span_drum_notes_source']:<3}  "
              f"{failed}")
    print("thresholds: " + ", ".join(f"{k} {'pass' if ok else 'FAIL'}" for k, ok in verdict.items()))
    print(f"wrote {out}")


def main() -> None:
    from amadeus.api import Amadeus
    from amadeus.corpus import CORPORA
    from amadeus.datamodule import MusicDataModule
    from amadeus.descriptors import compare, describe_set, overlap
    from amadeus.evaluate import read_tokens
    from amadeus.infill import INFILL_CONTEXT, bar_starts
    from amadeus.sampling import SamplingOptions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=None, help="shard folder (default: the embedded Bach corpus)")
    ap.add_argument("--split", default="test", choices=("validation", "test"))
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--bars", default="5-6")
    ap.add_argument("--acc-bars", type=int, default=4, help="accompaniment: the first N bars of each piece")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=INFILL_CONTEXT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="16 pieces")
    ap.add_argument("--out", default=None)
    ap.add_argument("--acceptance", action="store_true", help="the issue-24 acceptance check instead (docstring)")
    ap.add_argument("--song-seed", type=int, default=5000, help="acceptance: the song's seed")
    ap.add_argument("--song-style", default="rock", help="acceptance: the song's style (benchmarks/songs.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.acceptance:
        return acceptance(args)
    first, last = (int(x) for x in args.bars.split("-"))
    t0 = time.perf_counter()
    model = Amadeus.load(args.ckpt)
    module = model.module.eval()
    data = args.data or str(CORPORA["bach"].ensure_shards(progress=False))
    dm = MusicDataModule(data_dir=data, num_workers=0, tokenizer_hash=model.tokenizer.config_hash)
    need = max(last + 1, args.acc_bars)
    held = [t for t in read_tokens(dm, (args.split,)) if len(bar_starts(t)) > need]
    train = [t for t in read_tokens(dm, ("train",)) if len(bar_starts(t)) > need]
    num = min(16 if args.quick else args.num, len(held))
    held, ceiling = held[:num], [train[i] for i in np.random.default_rng(args.seed).permutation(len(train))[:num]]
    options = SamplingOptions(steps=args.steps)

    written, real, nll_both, nll_left, _ = infill_rows(module, held, first, last, options, args.seed, args.context)
    tok = model.tokenizer
    layout = (tok.default_ts, len(tok.config.time_signatures))

    def spans(scores, tokens):
        from amadeus.infill import bar_onsets

        out = []
        for s, t in zip(scores, tokens):
            a, b = bar_onsets(t, tok.config.bar_lengths(), *layout)[[first - 1, last]] * s.ticks_per_quarter // tok.config.resolution
            out.append((s, int(a), int(b)))
        return out

    gen_spans = [_excerpt(s, a, b) for s, a, b in spans(written, held)]
    real_spans = [_excerpt(s, a, b) for s, a, b in spans(real, held)]
    ceil_spans = [_excerpt(s, a, b) for s, a, b in spans([tok.decode(t) for t in ceiling], ceiling)]
    real_d = describe_set(real_spans)
    span_cmp, span_ceiling = compare(describe_set(gen_spans), real_d), compare(describe_set(ceil_spans), real_d)

    def seam_set(scores, tokens):
        rows = []
        for s, a, b in spans(scores, tokens):
            rows.append(seams(s, a / s.ticks_per_quarter, b / s.ticks_per_quarter))
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}

    gen_seams, real_seams = seam_set(written, held), seam_set(real, held)
    seam_oa = {k: overlap(gen_seams[k], real_seams[k])[0] for k in real_seams}

    acc_written, acc_real, nll_given, nll_alone = accompany_rows(module, held, args.acc_bars, options, args.seed)
    acc_cmp = compare(describe_set(acc_written), describe_set(acc_real))
    row = {"ckpt": args.ckpt, "split": args.split, "pieces": num, "bars": [first, last], "steps": options.steps_for(tok.K),
           "span_mean_oa": span_cmp["mean_oa"], "span_mean_oa_ci95": span_cmp.get("mean_oa_ci95"),
           "span_ceiling_mean_oa": span_ceiling["mean_oa"], "span_oa": span_cmp["oa"],
           "span_notes_written": float(np.mean([s.note_num() for s in gen_spans])),
           "span_notes_real": float(np.mean([s.note_num() for s in real_spans])),
           "seam_oa": seam_oa, "seam_mean_written": {k: float(np.nanmean(v)) for k, v in gen_seams.items()},
           "seam_mean_real": {k: float(np.nanmean(v)) for k, v in real_seams.items()},
           "nll_span_both_sides": nll_both, "nll_span_left_only": nll_left,
           "accompaniment_bars": args.acc_bars, "accompaniment_mean_oa": acc_cmp["mean_oa"],
           "accompaniment_mean_oa_ci95": acc_cmp.get("mean_oa_ci95"),
           "nll_parts_given_melody": nll_given, "nll_parts_alone": nll_alone,
           "seconds": round(time.perf_counter() - t0, 1),
           "command": "python benchmarks/infill.py " + shlex.join(sys.argv[1:])}
    out = Path(args.out) if args.out else RESULTS / ("infill-quick.json" if args.quick else "infill.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2, default=float) + "\n")
    print(f"infill bars {first}-{last} of {num} held-out pieces ({args.split}):")
    print(f"  span mean OA {row['span_mean_oa']:.3f} (ceiling {row['span_ceiling_mean_oa']:.3f}); notes per span "
          f"{row['span_notes_written']:.1f} written vs {row['span_notes_real']:.1f} real")
    print("  seams OA " + ", ".join(f"{k} {v:.2f}" for k, v in seam_oa.items()))
    print(f"  NLL of the real span, nats per note: both sides {nll_both:.3f}, left side only {nll_left:.3f}")
    print(f"accompaniment (melody kept, first {args.acc_bars} bars): parts' mean OA {acc_cmp['mean_oa']:.3f}; NLL of "
          f"the real parts given the melody {nll_given:.3f} vs alone {nll_alone:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
