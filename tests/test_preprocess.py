"""preprocess: bad files skipped with reasons, crashing files cost only themselves, resumable shards,
tar / list / glob inputs, splits by melody, caption matching, the CLI pair."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from midi_factory import make_score, part, random_grid_notes, write
from symusic import Score

from amadeus.commands import preprocess as pp
from amadeus.corpus.splits import melody_key, split_for_key
from amadeus.preprocess import list_inputs, preprocess
from amadeus.tokenizer import DRUM_INSTRUMENT, NoteTokenizer
from amadeus.workers import WorkerPool


class CrashingTokenizer(NoteTokenizer):
    """Kills its own process (SIGSEGV) on a score with a track named "segfault": a parser crash."""

    def encode_with_stats(self, score_or_path):
        if any(t.name == "segfault" for t in score_or_path.tracks):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().encode_with_stats(score_or_path)


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def exiting(code: int) -> int:
    if code:
        os._exit(code)
    return code


def broken_init() -> None:
    raise ValueError("cannot load the tokenizer")


def _piece(rng: np.random.Generator, n: int = 30, program: int = 0, drums: bool = False, name: str = ""):
    return make_score([part(random_grid_notes(rng, n, 480, span_quarters=16), program=program, is_drum=drums,
                            name=name)])


def _rows(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "shards").glob("part-*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


@pytest.fixture
def mixed_dir(tmp_path) -> Path:
    """Good MIDI (several suffixes, a subfolder), a drums-only file, and every kind of bad file."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate(["a.mid", "sub/b.MID", "sub/c.midi", "d.kar"]):
        write(_piece(rng, program=i * 8), src / name)
    write(_piece(rng, drums=True), src / "drums.mid")
    good = (src / "a.mid").read_bytes()
    (src / "truncated.mid").write_bytes(good[: len(good) // 2])
    (src / "random.mid").write_bytes(np.random.default_rng(2).bytes(500))
    (src / "empty.mid").write_bytes(b"")
    (src / "text.mid").write_text("MThd? no, just a text file named .mid\n")
    write(_piece(rng, name="segfault"), src / "killer.mid")
    (src / "notes.txt").write_text("not an input: wrong suffix")
    return src


def test_bad_files_skipped_good_kept_and_crash_costs_one_file(mixed_dir, tmp_path):
    out = tmp_path / "out"
    report = preprocess(mixed_dir, out, workers=2, tokenizer=CrashingTokenizer(), shard_size=3, progress=False)
    rows = _rows(out)
    assert sorted(r["source"] for r in rows) == ["a.mid", "d.kar", "drums.mid", "sub/b.MID", "sub/c.midi"]
    reasons = {s["path"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]}
    assert set(reasons) == {"truncated.mid", "random.mid", "empty.mid", "text.mid", "killer.mid"}
    assert "truncated" in reasons["truncated.mid"]
    assert "not a MIDI file" in reasons["random.mid"] and "not a MIDI file" in reasons["text.mid"]
    assert reasons["empty.mid"] == "empty file"
    assert "crashed" in reasons["killer.mid"] and "signal 11" in reasons["killer.mid"]
    assert report.worker_restarts >= 1
    assert report.pieces == 5 and len(report.skipped) == 5 and report.files == 10

    tok = NoteTokenizer()
    for r in rows:  # the stored matrix is the tokenizer's, row-major, with the contract's columns
        tokens = np.asarray(r["tokens"], dtype=np.int64).reshape(r["n_rows"], tok.K)
        score = Score.from_midi((mixed_dir / r["source"]).read_bytes())
        np.testing.assert_array_equal(tokens, tok.encode(score))
        assert r["id"] == hashlib.sha1((mixed_dir / r["source"]).read_bytes()).hexdigest()[:16]
        assert r["tokenizer_hash"] == tok.config_hash and r["caption"]  # auto-captioned
        assert json.loads(r["features"])["n_notes"] == r["n_notes"] == 30
        assert r["split"] in ("train", "validation", "test")
    drums = next(r for r in rows if r["source"] == "drums.mid")
    inst = np.asarray(drums["tokens"]).reshape(-1, tok.K)[:, 4]
    assert set(inst[inst > 0].tolist()) == {DRUM_INSTRUMENT}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer_hash"] == tok.config_hash and manifest["tokenizer"] == tok.config.to_dict()
    assert manifest["counts"]["pieces"] == 5 and manifest["counts"]["skipped"] == 5
    assert manifest["counts"]["notes"] == 150
    assert set(manifest["lost"]) >= {"off_grid_onset", "duration_snapped"}
    assert sum(s["pieces"] for s in manifest["shards"]) == 5


def test_resume_skips_finished_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(7):
        write(_piece(rng, n=10 + i), src / f"p{i}.mid")
    out = tmp_path / "out"
    first = preprocess(src, out, workers=0, shard_size=3, progress=False)
    assert (first.shards, first.shards_reused, first.processed) == (3, 0, 7)
    parts = sorted((out / "shards").glob("part-*.parquet"))
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    (out / "shards" / "part-00001.json").unlink()  # as if the run died while writing shard 1
    time.sleep(0.01)
    second = preprocess(src, out, workers=0, shard_size=3, progress=False)
    assert (second.shards_reused, second.processed) == (2, 3)
    assert (out / "shards" / "part-00000.parquet").stat().st_mtime_ns == stamps["part-00000.parquet"]
    assert (out / "shards" / "part-00002.parquet").stat().st_mtime_ns == stamps["part-00002.parquet"]
    assert second.pieces == first.pieces == 7
    third = preprocess(src, out, workers=0, shard_size=3, progress=False)
    assert (third.shards_reused, third.processed) == (3, 0)
    # a changed option (other split fractions) invalidates every shard
    fourth = preprocess(src, out, workers=0, shard_size=3, progress=False, val_fraction=0.5)
    assert (fourth.shards_reused, fourth.processed) == (0, 7)
    # fewer files: stale shards of the bigger run disappear
    for i in range(4, 7):
        (src / f"p{i}.mid").unlink()
    fifth = preprocess(src, out, workers=0, shard_size=3, progress=False, val_fraction=0.5)
    assert fifth.shards == 2 and sorted(p.name for p in (out / "shards").glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet"]
    assert fifth.pieces == 4


def test_concurrent_runs_into_one_folder_take_turns(tmp_path):
    import threading

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    for i in range(7):
        write(_piece(rng, n=10 + i), src / f"p{i}.mid")
    start, reports, errors = threading.Barrier(2), [], []

    def run() -> None:
        start.wait()
        try:
            reports.append(preprocess(src, tmp_path / "out", workers=0, shard_size=3, progress=False))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # one run built the shards while the other waited for the lock, then reused all of them
    assert sorted(r.processed for r in reports) == [0, 7] and [r.pieces for r in reports] == [7, 7]
    assert len(_rows(tmp_path / "out")) == 7


def test_tar_list_and_glob_inputs_match_the_folder(tmp_path):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    rng = np.random.default_rng(4)
    names = ["x.mid", "deep/y.mid", "deep/z.midi"]
    for n in names:
        write(_piece(rng), src / n)
    ref = preprocess(src, tmp_path / "o_dir", workers=0, progress=False)
    ids = sorted(r["id"] for r in _rows(tmp_path / "o_dir"))

    readme = tmp_path / "readme.txt"
    readme.write_text("not MIDI: left out of the archive's inputs")
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        archive = tmp_path / f"a{suffix}"
        with tarfile.open(archive, mode) as tar:
            for n in names:
                tar.add(src / n, arcname=f"midi/{n}")
            tar.add(readme, arcname="midi/readme.txt")
        out = tmp_path / f"o{suffix}"
        rep = preprocess(archive, out, workers=1, progress=False)
        assert rep.pieces == 3 and rep.files == 3
        assert sorted(r["id"] for r in _rows(out)) == ids
        assert sorted(r["source"] for r in _rows(out)) == sorted(f"midi/{n}" for n in names)

    listing = tmp_path / "files.txt"
    listing.write_text(f"# comment\n{src / 'x.mid'}\nsrc/deep/y.mid\n\nsrc/missing.mid\n")
    rep = preprocess(listing, tmp_path / "o_list", workers=0, progress=False)
    assert rep.pieces == 2 and [s["path"] for s in rep.skipped] == ["src/missing.mid"]
    assert "cannot read" in rep.skipped[0]["reason"]

    rep = preprocess(str(src / "**" / "*.mid"), tmp_path / "o_glob", workers=0, progress=False)
    assert sorted(r["source"] for r in _rows(tmp_path / "o_glob")) == ["deep/y.mid", "x.mid"]
    assert ref.pieces == 3

    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_inputs(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        list_inputs(str(tmp_path / "*.xyz"))


def test_splits_follow_the_melody_and_duplicates_share_a_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    for i in range(30):
        write(_piece(rng, n=5), src / f"p{i:02d}.mid")
    for i in range(5):  # byte-identical copies under other names (and folders)
        (src / "copies").mkdir(exist_ok=True)
        shutil.copy(src / f"p{i:02d}.mid", src / "copies" / f"dup{i}.mid")
    preprocess(src, tmp_path / "a", workers=0, shard_size=4, val_fraction=0.3, test_fraction=0.3, progress=False)
    preprocess(src, tmp_path / "b", workers=0, shard_size=7, val_fraction=0.3, test_fraction=0.3, progress=False)
    a = {r["source"]: r for r in _rows(tmp_path / "a")}
    b = {r["source"]: r for r in _rows(tmp_path / "b")}
    assert {k: r["split"] for k, r in a.items()} == {k: r["split"] for k, r in b.items()}  # deterministic
    assert {r["split"] for r in a.values()} == {"train", "validation", "test"}
    for i in range(5):
        orig, dup = a[f"p{i:02d}.mid"], a[f"copies/dup{i}.mid"]
        assert orig["id"] == dup["id"] and orig["split"] == dup["split"]
    for r in a.values():
        assert r["split"] == split_for_key(melody_key(Score(str(src / r["source"]))), 0.3, 0.3)
    # rows are grouped by split in the shard, and row groups never mix splits
    for f in (tmp_path / "a" / "shards").glob("*.parquet"):
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            assert len(set(pf.read_row_group(g, columns=["split"])["split"].to_pylist())) == 1


def test_captions_matched_by_location_path_or_name(tmp_path):
    src = tmp_path / "lmd" / "data"
    (src / "a").mkdir(parents=True)
    rng = np.random.default_rng(6)
    for n in ("a/one.mid", "a/two.mid", "three.mid", "four.mid"):
        write(_piece(rng), src / n)
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps(r) + "\n" for r in [
        {"location": "lmd/data/a/one.mid", "caption": "by suffix", "genre": ["x"]},
        {"location": "a/two.mid", "caption": "by location"},
        {"location": "elsewhere/three.mid", "caption": "by name"},
        {"location": "other/one.mid", "caption": "same file name, other folder"},
    ]))
    preprocess(src, tmp_path / "o", captions=caps, workers=0, progress=False, auto_captions=False)
    got = {r["source"]: r["caption"] for r in _rows(tmp_path / "o")}
    assert got == {"a/one.mid": "by suffix", "a/two.mid": "by location", "three.mid": "by name", "four.mid": ""}
    preprocess(src, tmp_path / "o2", captions=caps, workers=0, progress=False)
    got = {r["source"]: r["caption"] for r in _rows(tmp_path / "o2")}
    assert got["three.mid"] == "by name" and got["four.mid"] not in ("", "by name")  # auto-caption


def test_worker_pool_timeout_and_exit_codes():
    with WorkerPool(sleepy, 1, timeout=1.0) as pool:
        results = {k: (ok, r) for k, ok, r in pool.imap_unordered([("slow", 30.0), ("fast", 0.0)])}
    assert results["fast"] == (True, 0.0)
    assert results["slow"][0] is False and "timed out" in results["slow"][1]
    with WorkerPool(exiting, 2) as pool:
        results = {k: (ok, r) for k, ok, r in pool.imap_unordered([(i, c) for i, c in enumerate([0, 3, 0, 0])])}
    assert results[1] == (False, "worker exited with code 3")
    assert all(results[i] == (True, 0) for i in (0, 2, 3))
    assert pool.restarts == 1
    with pytest.raises(RuntimeError, match="failed to start.*cannot load the tokenizer"):
        with WorkerPool(sleepy, 1, initializer=broken_init) as pool:
            list(pool.imap_unordered([("a", 0.0)]))


def test_cli_exit_codes(mixed_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    pp.add_arguments(parser)
    assert pp.run(parser.parse_args([str(tmp_path / "missing"), str(tmp_path / "o")])) == 2
    assert "missing" in capsys.readouterr().err
    (mixed_dir / "killer.mid").unlink()
    code = pp.run(parser.parse_args([str(mixed_dir), str(tmp_path / "o"), "--workers", "1", "--quiet"]))
    out = capsys.readouterr().out
    assert code == 0 and "4 skipped" in out and "5 pieces" in out and "truncated.mid" in out


def test_preprocess_counts_captions_over_the_text_limit(synthetic_midi_dir, tmp_path, capsys):
    """--text-max-length N: captions longer than N MiniLM tokens are counted (after the shards exist)."""
    from amadeus.cli import main as cli_main
    from amadeus.model.text import caption_token_counts

    lengths = caption_token_counts(["A slow piece in C major, 3/4, at 60 bpm, for choir and bass.", ""])
    assert lengths[0] > 10 and lengths[1] == 2  # [CLS] [SEP]
    report = preprocess(synthetic_midi_dir, tmp_path / "a", captions=synthetic_midi_dir / "captions.jsonl", workers=0,
                        progress=False, text_max_length=lengths[0] - 1)
    c = report.caption_tokens
    assert c["captions"] == 24 and c["limit"] == lengths[0] - 1 and 0 < c["over"] <= 24 and c["max"] >= lengths[0]
    assert "exceed" in report.summary()
    assert preprocess(synthetic_midi_dir, tmp_path / "a", workers=0, progress=False,
                      captions=synthetic_midi_dir / "captions.jsonl").caption_tokens is None  # only when asked
    assert cli_main(["preprocess", str(synthetic_midi_dir), str(tmp_path / "b"), "--captions",
                     str(synthetic_midi_dir / "captions.jsonl"), "--workers", "0", "--quiet",
                     "--text-max-length", "128"]) == 0
    assert "captions: 0 of 24 exceed 128 all-MiniLM-L6-v2 tokens" in capsys.readouterr().out
    assert cli_main(["preprocess", str(synthetic_midi_dir), str(tmp_path / "c"), "--text-max-length", "0"]) == 2
