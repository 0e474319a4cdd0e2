"""Shared fixtures. Tests make their own MIDI (tests/midi_factory.py) and never touch the network."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import numpy as np
import pytest

from midi_factory import make_score, part, two_styles, write

@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster and immune to a busy machine (used via pytestmark)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


KEYS = {"C major": 60, "G major": 67, "D minor": 62, "A minor": 69}


def chorale_like(rng: np.random.Generator, tonic: int, minor: bool, beats_per_bar: int, bars: int,
                 bpm: float) -> "object":
    """Four voices of block chords on I-IV-V-I style progressions, one chord per beat."""
    third = 3 if minor else 4
    degrees = [(0, third, 7), (5, 5 + (4 - (1 if minor else 0)) % 12, 12), (7, 11, 14), (0, third, 7)]
    tracks = []
    for voice, (octave, program) in enumerate(((12, 52), (0, 52), (-12, 52), (-24, 32))):
        notes = []
        for b in range(bars * beats_per_bar):
            root, mid, top = degrees[int(rng.integers(0, 4))]
            pitch = tonic + octave + (root, mid, top, root)[voice % 4]
            notes.append((b * 480, 480, int(pitch), int(rng.integers(60, 100))))
        tracks.append(part(notes, program=program, name=f"voice {voice}"))
    return make_score(tracks, tempos=[(0, bpm)], time_signatures=[(0, beats_per_bar, 4)])


@pytest.fixture(scope="session")
def synthetic_midi_dir(tmp_path_factory) -> Path:
    """24 short four-voice pieces (keys, 3/4 and 4/4, slow and fast) with a MidiCaps captions file."""
    root = tmp_path_factory.mktemp("synthetic_midi")
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        key = list(KEYS)[i % 4]
        beats = 3 if i % 3 == 0 else 4
        bpm = 60.0 if i % 2 else 140.0
        score = chorale_like(rng, KEYS[key], key.endswith("minor"), beats, bars=8 + i % 5, bpm=bpm)
        name = f"piece_{i:02d}.mid"
        write(score, root / name)
        records.append({"location": name, "caption": f"A {'slow' if bpm < 100 else 'fast'} piece in {key}, "
                                                     f"{beats}/4, at {int(bpm)} bpm, for choir and bass."})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="session")
def tiny_shards(synthetic_midi_dir, tmp_path_factory) -> Path:
    """The synthetic pieces preprocessed into Parquet shards (train/validation/test by content hash)."""
    from amadeus.preprocess import preprocess

    out = tmp_path_factory.mktemp("tiny_shards")
    preprocess(synthetic_midi_dir, out, captions=synthetic_midi_dir / "captions.jsonl", workers=1,
               shard_size=8, progress=False, val_fraction=0.2, test_fraction=0.1)
    return out


# --------------------------------------------------------------------------------------------------
# generation tests: a briefly trained tiny model (session-scoped: trained once, a few seconds on CPU)


def _training_windows(tokenizer, scores, length: int = 64):
    """Token windows [N, length + 1, K] + mask from whole pieces (each piece from its SOS)."""
    import torch

    rows, masks = [], []
    for score in scores:
        tok = torch.as_tensor(tokenizer.encode(score))
        for start in range(0, max(1, len(tok) - 8), length // 2):
            w = tok[start: start + length + 1]
            pad = length + 1 - len(w)
            rows.append(torch.cat([w, w.new_zeros(pad, w.shape[1])]))
            masks.append(torch.arange(length + 1) < len(w))
    return torch.stack(rows), torch.stack(masks)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """(AmadeusModule trained ~100 steps on 12 synthetic chorales with drums, path of a .ckpt of it)."""
    import torch

    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    scores = []
    for i in range(12):
        key = list(KEYS)[i % 4]
        score = chorale_like(rng, KEYS[key], key.endswith("minor"), 3 if i % 3 == 0 else 4, bars=6, bpm=(60.0, 140.0)[i % 2])
        if i % 4 == 1:  # a drum part: kick and snare on beats, hi-hat on eighths
            beats = 3 if i % 3 == 0 else 4
            drums = [(b * 480, 240, 36 if b % 2 == 0 else 38, 90) for b in range(6 * beats)]
            drums += [(e * 240, 120, 42, 70) for e in range(12 * beats)]
            score.tracks.append(part(drums, is_drum=True))
        scores.append(score)
    module = AmadeusModule(network=ModelConfig(d_model=64, n_layers=2, n_heads=4, head_width=64, head_heads=4,
                                               dropout=0.0, use_mlsdes=False), lr=3e-3, warmup_steps=10)
    notes, mask = _training_windows(module.tokenizer, scores)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    module.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and robust on a busy machine
    try:
        for _ in range(100):
            idx = torch.randint(0, len(notes), (8,), generator=g)
            loss = module.shared_step({"notes": notes[idx], "mask": mask[idx]}, "train")["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()
    ckpt = tmp_path_factory.mktemp("tiny_ckpt") / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 100}, ckpt)
    return module, ckpt


@pytest.fixture(scope="session")
def styled_corpus(tmp_path_factory):
    """ROOT/midi (24 jigs and 24 chorales, captions.jsonl with `style`, as amadeus.corpus.music21 writes
    it) and ROOT/shards, whose features JSON has no style: the styles come from captions.jsonl."""
    from amadeus.preprocess import preprocess

    root = tmp_path_factory.mktemp("styled")
    scores, styles = two_styles(3, 24)
    records, splits = [], {}
    for i, (score, style) in enumerate(zip(scores, styles)):
        name = f"{style.split()[-1]}/{i:03d}.mid"
        (root / "midi" / name).parent.mkdir(parents=True, exist_ok=True)
        write(score, root / "midi" / name)
        caption = ("An Irish jig in some key, 6/8, for violin, at 116 bpm." if style == "Irish jig"
                   else "A Bach chorale in some key, 4/4, for four voices, at 80 bpm.")
        records.append({"location": name, "caption": caption, "style": style})
        splits[name] = "test" if i % 8 < 2 else "validation" if i % 8 == 2 else "train"
    (root / "midi" / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    preprocess(root / "midi", root / "shards", captions=root / "midi" / "captions.jsonl", splits=splits, workers=0,
               shard_size=16, progress=False)
    return root
