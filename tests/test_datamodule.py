"""MusicDataModule: window layout, transposition, rank x worker partition, resumption, epochs of
equal length on every rank, finetune filtering, hash checks, flat memory, Lightning round trip."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from midi_factory import make_score, part, random_grid_notes, write

from amadeus.datamodule import MusicDataModule
from amadeus.errors import RunSetupError
from amadeus.windows import assemble_row, collate_windows, cut_window, n_windows, pack_rows, window_starts
from amadeus.preprocess import preprocess
from amadeus.tokenizer import COL_CHORD, COL_INSTRUMENT, COL_METRIC, COL_PITCH, DRUM_INSTRUMENT, METRIC_EOS, METRIC_SOS

T = 16  # window length used throughout (small, so that pieces need several windows)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 pieces of 5..60 notes (some with a drum track), half captioned, in shards of 3 files."""
    root = tmp_path_factory.mktemp("dm")
    src = root / "midi"
    src.mkdir()
    rng = np.random.default_rng(0)
    captions = {}
    for i in range(40):
        n = int(rng.integers(5, 61))
        tracks = [part(random_grid_notes(rng, n, 480, span_quarters=32), program=int(rng.integers(0, 100)))]
        if i % 3 == 0:
            tracks.append(part(random_grid_notes(rng, 12, 480, span_quarters=32), is_drum=True))
        write(make_score(tracks), src / f"p{i:02d}.mid")
        if i % 2 == 0:
            captions[f"p{i:02d}.mid"] = f"caption of piece {i}"
    out = root / "shards"
    preprocess(src, out, captions=captions, auto_captions=False, workers=0, shard_size=3, progress=False,
               val_fraction=0.15, test_fraction=0.1)
    return out


def _pieces(shards: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted((shards / "shards").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["id"]] = dict(r, tokens=np.asarray(r["tokens"], np.int64).reshape(r["n_rows"], -1))
    return rows


def _dm(shards: Path, **kw) -> MusicDataModule:
    """One window per row (pack=False) unless a test asks for packing: the window layout tests read rows as
    windows."""
    args = dict(max_notes=T, batch_size=4, num_workers=0, shuffle_buffer=8, transpose=None, seed=0, val_windows=10,
                pack=False)
    args.update(kw)
    return MusicDataModule(str(shards), **args)


def test_window_layout_masks_and_sos_eos(shards):
    pieces = _pieces(shards)
    dm = _dm(shards)
    per_piece = Counter()
    for w in dm.train_windows():
        pid, start = w["window"].split(":")
        start = int(start)
        tokens = pieces[pid]["tokens"]
        n = len(tokens)
        per_piece[pid] += 1
        notes, mask = w["notes"], w["mask"]
        assert notes.shape == (T + 1, dm.tokenizer.K) and mask.shape == (T + 1,)
        real = min(T + 1, n - start)
        assert mask[:real].all() and not mask[real:].any()
        np.testing.assert_array_equal(notes[:real], tokens[start:start + real])
        assert not notes[real:].any()  # padding rows are 0
        metric = notes[:real, COL_METRIC]
        assert (metric == METRIC_SOS).sum() == (start == 0) and (start > 0 or metric[0] == METRIC_SOS)
        assert (metric == METRIC_EOS).sum() == (start + real == n)
        assert w["caption"] == pieces[pid]["caption"]
    train = {k: p for k, p in pieces.items() if p["split"] == "train"}
    assert set(per_piece) == set(train)
    for pid, p in train.items():
        assert per_piece[pid] == (1 if p["n_rows"] <= T + 1 else math.ceil(p["n_rows"] / T))
    assert dm.count_train_windows() == sum(per_piece.values())
    assert any(c > 2 for c in per_piece.values())  # long pieces give several windows


def test_window_starts_cover_both_ends():
    rng = np.random.default_rng(0)
    assert window_starts(10, 16, rng).tolist() == [0]
    for n in (18, 40, 100):
        s = window_starts(n, 16, rng)
        assert len(s) == math.ceil(n / 16) and s[0] == 0 and s[-1] == n - 17 and (s >= 0).all()
    notes, mask = cut_window(np.ones((5, 8), np.int64), 3, 4)
    assert notes.shape == (5, 8) and mask.tolist() == [True, True, False, False, False]


def test_transposition_moves_pitches_but_never_drums(shards):
    pieces = _pieces(shards)
    dm = _dm(shards, transpose=(3, 3))
    moved = 0
    for w in dm.train_windows():
        pid, start = w["window"].split(":")
        orig, _ = cut_window(pieces[pid]["tokens"], int(start), T)
        notes = w["notes"]
        drum = orig[:, COL_INSTRUMENT] == DRUM_INSTRUMENT
        keep = [c for c in range(notes.shape[1]) if c != COL_CHORD]  # the sounding chord moves, drums do not
        np.testing.assert_array_equal(notes[drum][:, keep], orig[drum][:, keep])
        pitched = (orig[:, COL_PITCH] > 0) & ~drum
        delta = notes[pitched, COL_PITCH] - orig[pitched, COL_PITCH]
        assert set(delta.tolist()) <= {0, 3} and len(set(delta.tolist())) <= 1  # whole window or nothing
        moved += int((delta == 3).any())
        others = [c for c in range(notes.shape[1]) if c not in (COL_PITCH, COL_CHORD)]
        np.testing.assert_array_equal(notes[:, others], orig[:, others])
    assert moved > 10


def test_two_ranks_two_workers_partition_the_data(shards):
    pieces = _pieces(shards)
    dm = _dm(shards)
    owner: dict[str, set] = defaultdict(set)
    tags = []
    served = Counter()
    for rank in (0, 1):
        loader = torch.utils.data.DataLoader(dm.train_windows(rank=rank, world_size=2), batch_size=3,
                                             num_workers=2, collate_fn=collate_windows)
        streams = Counter()
        for batch in loader:
            streams[batch["worker"]] += len(batch["window"])
            served[(rank, batch["worker"])] += len(batch["window"])
            for tag in batch["window"]:
                owner[tag.split(":")[0]].add((rank, batch["worker"]))
                tags.append(tag)
        assert set(streams) == {0, 1}  # both workers of the rank had data
    assert len(tags) == len(set(tags))  # no window served twice
    W = dm.count_train_windows()
    assert len(served) == 4 and set(served.values()) == {W // 4}  # equal shares of the epoch's windows
    # a piece's windows are split between two streams only where one share ends and the next begins
    assert sum(len(o) - 1 for o in owner.values()) <= 3
    train = {k for k, p in pieces.items() if p["split"] == "train"}
    assert set(owner) <= train and len(train - set(owner)) <= W % 4


def _stream_windows(dm: MusicDataModule, rank: int, world: int, worker: int, workers: int, epoch: int,
                    limit: int | None = None) -> list[str]:
    ds = dm.train_windows(rank=rank, world_size=world, epoch=epoch, limit=limit)
    ds.worker, ds.num_workers = worker, workers
    return [item["window"] for item in ds]


def test_each_window_once_per_epoch_with_unequal_shards(shards):
    """2 ranks x 3 workers, simulated in-process: the shard files hold 0 to 3 training pieces of 1 to
    several windows each, yet every stream serves the same number of windows, each exactly once."""
    dm = _dm(shards)
    per_file = [int(n_windows(pq.read_table(f, columns=["n_rows"], filters=[("split", "==", "train")])
                              ["n_rows"].to_numpy(), T).sum()) for f in dm.files("train")]
    assert len(set(per_file)) > 2  # unequal shards
    W = dm.count_train_windows()
    for epoch in (0, 1):
        streams = {(r, w): _stream_windows(dm, r, 2, w, 3, epoch) for r in (0, 1) for w in range(3)}
        every = [t for s in streams.values() for t in s]
        assert {len(s) for s in streams.values()} == {W // 6}
        assert len(every) == len(set(every)) == W - W % 6  # each window once, all but W mod 6
        if epoch == 0:
            first = every
    assert first != every  # a new plan (order, crops) each epoch
    # with a limit beyond its share a stream runs on into the next epoch's share
    assert _stream_windows(dm, 1, 2, 2, 3, 0, limit=W // 6 + 5) == (
        _stream_windows(dm, 1, 2, 2, 3, 0) + _stream_windows(dm, 1, 2, 2, 3, 1)[:5])


def test_epochs_have_equal_length_on_every_rank(shards, monkeypatch):
    lengths = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = _dm(shards, num_workers=2)
        loader = dm.train_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader) == 2 * (dm.count_train_windows() // (2 * 2 * 4))
        assert Counter(b["worker"] for b in batches) == {0: len(batches) // 2, 1: len(batches) // 2}
        assert all(b["notes"].shape == (4, T + 1, dm.tokenizer.K) and b["mask"].dtype == torch.bool
                   and b["notes"].dtype == torch.long for b in batches)
        lengths.append(len(batches))
    assert lengths[0] == lengths[1]


def _by_worker(batches: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for b in batches:
        out[b["worker"]] += b["window"]
    return dict(out)


def test_resume_continues_without_repeating(shards):
    full = _dm(shards, num_workers=2, batch_size=2, transpose=(-5, 6))
    reference = list(full.train_dataloader())
    assert len(reference) > 10

    first = _dm(shards, num_workers=2, batch_size=2, transpose=(-5, 6))
    served = []
    for i, b in enumerate(first.train_dataloader()):
        served.append(b)
        if i == 6:  # stop mid-epoch: worker 0 has served 4 batches, worker 1 three
            break
    state = first.state_dict()
    assert state["served"] == {"0": 8, "1": 6}

    resumed = _dm(shards, num_workers=2, batch_size=2, transpose=(-5, 6))
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert len(served) + len(rest) == len(reference)
    done, todo, ref = _by_worker(served), _by_worker(rest), _by_worker(reference)
    for w in (0, 1):  # each worker's stream goes on exactly where it stopped
        assert done[w] + todo[w] == ref[w]
    # and the batches come in the uninterrupted order (worker 1's turn first, as it was)
    assert [b["window"] for b in served + rest] == [b["window"] for b in reference]
    nxt = [b["window"] for b in resumed.train_dataloader()]  # the next epoch: a new order
    assert len(nxt) == len(reference) and nxt != [b["window"] for b in reference]


def test_validation_is_deterministic_and_untransposed(shards):
    pieces = _pieces(shards)
    a = list(_dm(shards, transpose=(-5, 6)).val_dataloader())
    b = list(_dm(shards, transpose=(-5, 6), seed=7).val_dataloader())
    assert [x["window"] for x in a] == [x["window"] for x in b]
    tags = [t for x in a for t in x["window"]]
    assert 0 < len(tags) <= 10 and len(set(tags)) == len(tags)
    for batch in a:
        for tag, notes, mask in zip(batch["window"], batch["notes"].numpy(), batch["mask"].numpy()):
            pid, start = tag.split(":")
            assert pieces[pid]["split"] == "validation"
            expect, emask = cut_window(pieces[pid]["tokens"], int(start), T)
            np.testing.assert_array_equal(notes, expect)
            np.testing.assert_array_equal(mask, emask)
    test_tags = [t for x in _dm(shards).test_dataloader() for t in x["window"]]
    assert test_tags and all(pieces[t.split(":")[0]]["split"] == "test" for t in test_tags)


def test_finetune_keeps_only_captioned_pieces(shards):
    pieces = _pieces(shards)
    windows = list(_dm(shards, stage="finetune").train_windows())
    ids = {w["window"].split(":")[0] for w in windows}
    assert ids == {k for k, p in pieces.items() if p["split"] == "train" and p["caption"]}
    assert all(w["caption"] for w in windows)
    with pytest.raises(ValueError, match="stage"):
        MusicDataModule(str(shards), stage="pretraining")


def test_tokenizer_hash_mismatch_is_a_clear_error(shards):
    dm = _dm(shards)
    assert dm.tokenizer.config_hash == _dm(shards, tokenizer_hash=dm.tokenizer.config_hash).tokenizer.config_hash
    with pytest.raises(ValueError) as err:
        _dm(shards, tokenizer_hash="0123456789abcdef").setup("fit")
    assert "0123456789abcdef" in str(err.value) and dm.tokenizer.config_hash in str(err.value)
    with pytest.raises(FileNotFoundError, match="manifest"):
        _dm(shards.parent / "midi").setup("fit")


def test_memory_stays_flat_over_ten_thousand_windows(shards):
    import psutil

    stream = iter(_dm(shards, transpose=(-5, 6), shuffle_buffer=64).train_windows(limit=20_000))
    proc = psutil.Process()
    for _ in range(1000):  # warm up: imports, buffers, allocator pools
        next(stream)
    before = proc.memory_info().rss
    count = sum(1 for _ in zip(range(10_000), stream))
    after = proc.memory_info().rss
    assert count == 10_000
    assert after < before * 1.10, f"RSS grew from {before >> 20} MiB to {after >> 20} MiB"


def test_default_data_is_the_embedded_corpus(shards, monkeypatch):
    import amadeus.corpus

    calls = []
    monkeypatch.setenv("AMADEUS_CACHE", str(shards.parent / "empty-cache"))
    fake = dataclasses.replace(amadeus.corpus.CORPORA["bach"], ensure_shards=lambda *a, **k: calls.append(1) or shards)
    monkeypatch.setitem(amadeus.corpus.CORPORA, "bach", fake)
    dm = MusicDataModule(max_notes=T, num_workers=0)
    assert dm.tokenizer.K == 8 and calls == [1]  # built on first use
    dm.prepare_data()  # what Lightning calls once per node
    assert calls == [1, 1] and dm.files("train")[0].startswith(str(shards))


def test_corpus_music21_selects_the_music21_shards(shards, monkeypatch):
    import amadeus.corpus

    calls = []
    monkeypatch.setenv("AMADEUS_CACHE", str(shards.parent / "empty-cache-m21"))
    corpora = amadeus.corpus.CORPORA
    monkeypatch.setitem(corpora, "music21", dataclasses.replace(corpora["music21"],
                                                                ensure_shards=lambda *a, **k: calls.append(1) or shards))
    monkeypatch.setitem(corpora, "bach", dataclasses.replace(corpora["bach"],
                                                             ensure_shards=lambda *a, **k: pytest.fail("not the Bach corpus")))
    dm = MusicDataModule(max_notes=T, num_workers=0, corpus="music21")
    assert dm.tokenizer.K == 8 and calls == [1]
    dm.prepare_data()
    assert calls == [1, 1] and dm.files("train")[0].startswith(str(shards))
    with pytest.raises(ValueError, match="corpus"):
        MusicDataModule(corpus="nope")
    given = MusicDataModule(data_dir=str(shards), corpus="music21", max_notes=T, num_workers=0)  # data_dir wins
    given.prepare_data()
    assert calls == [1, 1] and given.files("train")[0].startswith(str(shards))


def test_lightning_checkpoint_resumes_the_stream(shards, tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: list[dict] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch)
            return (batch["notes"].float().mean() * self.w) ** 2 + self.w ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SaveAt(L.Callback):  # a mid-epoch checkpoint, as ModelCheckpoint(every_n_train_steps=3) writes it
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                saved.append(trainer.datamodule.state_dict())

    saved: list[dict] = []

    def fit(steps: int, ckpt: str | None = None, save: bool = False):
        dm = _dm(shards, num_workers=2, batch_size=2)
        model = Recorder()
        trainer = L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            default_root_dir=tmp_path, callbacks=[SaveAt()] if save else [])
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model

    whole = fit(12)
    first = fit(6, save=True)
    assert saved[0]["served"] == {"0": 4, "1": 2}  # 3 batches of 2, round robin over the workers
    assert torch.load(tmp_path / "mid.ckpt", weights_only=True)["MusicDataModule"]["served"] == saved[0]["served"]
    second = fit(8, ckpt=str(tmp_path / "mid.ckpt"))
    assert len(second.seen) == 5
    done, todo, ref = _by_worker(first.seen[:3]), _by_worker(second.seen), _by_worker(whole.seen)
    for w in ref:  # each worker's windows go on where they stopped: a prefix of the uninterrupted stream
        got = done.get(w, []) + todo.get(w, [])
        assert got and got == ref[w][: len(got)]


def test_transposed_windows_carry_transposed_captions(tmp_path):
    from amadeus.captions import parse_caption, transpose_caption
    from amadeus.theory import parse_key

    rng = np.random.default_rng(1)
    src = tmp_path / "midi"
    src.mkdir()
    for i in range(6):
        write(make_score([part(random_grid_notes(rng, 40, 480, span_quarters=24), program=0)]), src / f"c{i}.mid")
    preprocess(src, tmp_path / "out", auto_captions=True, workers=0, progress=False, val_fraction=0, test_fraction=0)
    pieces = _pieces(tmp_path / "out")
    moved = kept = 0
    for w in _dm(tmp_path / "out", transpose=(4, 4)).train_windows():
        pid, start = w["window"].split(":")
        orig, _ = cut_window(pieces[pid]["tokens"], int(start), T)
        caption = pieces[pid]["caption"]
        assert parse_key(caption) is not None
        if (w["notes"][:, COL_PITCH] != orig[:, COL_PITCH]).any():
            assert w["caption"] == transpose_caption(caption, 4) != caption
            assert parse_key(parse_caption(w["caption"])["key"])[0] == (parse_key(caption)[0] + 4) % 12
            moved += 1
        else:  # out of pitch range: neither the notes nor the caption move
            assert w["caption"] == caption
            kept += 1
    assert moved > 5


# ---- packed rows ------------------------------------------------------------------------------

PACKED_T = 64  # rows of 65: the pieces (about 10 to 70 rows) fit two or three to a row


def test_pack_rows_first_fit_keeps_order_and_capacity():
    lengths = np.array([10, 9, 3, 17, 2, 5, 8, 1])
    rows = pack_rows(lengths, 17)
    assert sorted(int(w) for r in rows for w in r) == list(range(len(lengths)))  # every window once
    assert all(int(lengths[r].sum()) <= 17 for r in rows)
    assert [r.tolist() for r in rows] == [[0, 2, 4, 7], [1, 5], [3], [6]]  # first fit over the open rows
    assert [r.tolist() for r in pack_rows(lengths, 17, pack=False)] == [[i] for i in range(8)]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows(np.array([18]), 17)
    notes, segments = assemble_row([np.ones((3, 8), np.int64), 2 * np.ones((2, 8), np.int64)], 7, 8)
    assert segments.tolist() == [1, 1, 1, 2, 2, 0, 0] and notes[3, 0] == 2 and not notes[5:].any()


def test_packed_rows_serve_every_window_once_and_keep_sos_eos(shards):
    """Packed: each row holds whole windows end to end (each with its own SOS / EOS), and over the 2 x 3
    streams of an epoch every planned window is served once (all but the rows past the last share)."""
    pieces = _pieces(shards)
    dm = _dm(shards, pack=True, max_notes=PACKED_T)  # long enough for several pieces per row
    W, K = dm.count_train_windows(), dm.tokenizer.K
    for epoch in (0, 1):
        rows = len(dm.train_windows().plan(epoch).rows)
        assert rows < W  # packing saves rows
        streams = {(r, w): [] for r in (0, 1) for w in range(3)}
        for (r, w), items in streams.items():
            ds = dm.train_windows(rank=r, world_size=2, epoch=epoch)
            ds.worker, ds.num_workers = w, 3
            items.extend(ds)
        assert {len(s) for s in streams.values()} == {rows // 6}
        tags = [t for s in streams.values() for item in s for t in item["window"].split("+")]
        assert len(tags) == len(set(tags))  # no window twice
        for item in (i for s in streams.values() for i in s):
            seg, notes = item["segments"], item["notes"]
            assert notes.shape == (PACKED_T + 1, K) and (item["mask"] == (seg > 0)).all()
            for s_id, tag in enumerate(item["window"].split("+"), start=1):
                pid, start = tag.split(":")
                part = notes[seg == s_id]
                np.testing.assert_array_equal(part, pieces[pid]["tokens"][int(start):int(start) + len(part)])
                assert (part[0, COL_METRIC] == METRIC_SOS) == (int(start) == 0)
            assert not notes[seg == 0].any()
    assert dm.count_train_rows() <= min(len(dm.train_windows().plan(e).rows) for e in range(4))


def test_packed_loader_fills_rows_and_validation_packs_too(shards):
    packed = _dm(shards, pack=True, batch_size=2, max_notes=PACKED_T)
    plain = _dm(shards, pack=False, batch_size=2, max_notes=PACKED_T)
    fill = [b["mask"].float().mean().item() for b in packed.train_dataloader()]
    fill_plain = [b["mask"].float().mean().item() for b in plain.train_dataloader()]
    assert np.mean(fill) > np.mean(fill_plain) + 0.05
    val = [t for b in packed.val_dataloader() for t in b["window"]]
    val_plain = [t for b in plain.val_dataloader() for t in b["window"]]
    assert sorted(x for t in val for x in t.split("+")) == sorted(val_plain)  # the same windows, fewer rows
    assert len(val) < len(val_plain)


def test_too_few_rows_for_the_ranks_and_workers_is_an_error(shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "64")
    with pytest.raises(RunSetupError, match=r"64 ranks x 2 workers x 4 rows per batch"):
        _dm(shards, num_workers=2).train_dataloader()


@pytest.mark.parametrize("change, name", [(dict(shuffle_buffer=16), "shuffle_buffer"),
                                          (dict(transpose=(-2, 2)), "transpose"), (dict(pack=True), "pack"),
                                          (dict(num_workers=1), "num_workers"), (dict(max_notes=8), "max_notes")])
def test_resume_refuses_a_changed_stream_setting(shards, change, name):
    first = _dm(shards, num_workers=2, batch_size=2)
    next(iter(first.train_dataloader()))
    state = first.state_dict()
    with pytest.raises(RunSetupError, match=f"data.{name} "):
        _dm(shards, **{"num_workers": 2, "batch_size": 2, **change}).load_state_dict(state)
    again = _dm(shards, **{"num_workers": 2, "batch_size": 2, "replan": True, **change})
    with pytest.warns(UserWarning, match="restarts epoch 0"):
        again.load_state_dict(state)
    assert again._served == {}  # the epoch's stream restarts
    old = {k: v for k, v in state.items() if k not in ("pack", "transpose")}  # written by an older version
    with pytest.raises(RunSetupError, match="data.pack .not recorded"):
        _dm(shards, num_workers=2, batch_size=2).load_state_dict(old)
