"""What the embedded corpora share: the cache root, the stamp and captions file names, JSON(L) I/O, and
the report of a build."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAMP = "corpus.json"
CAPTIONS = "captions.jsonl"


def cache_root() -> Path:
    """Root of amadeus' caches: $AMADEUS_CACHE, else ~/.cache/amadeus."""
    return Path(os.environ.get("AMADEUS_CACHE") or Path.home() / ".cache" / "amadeus").expanduser()


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_stamp(path: Path, stamp: dict[str, Any]) -> None:
    """Write a corpus stamp atomically (tmp + rename): a half-written stamp never reads as a cache hit."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1) + "\n")
    os.replace(tmp, path)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from amadeus.shards import json_default

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=json_default) + "\n")
    os.replace(tmp, path)


@dataclass
class CorpusBuild:
    """A corpus build: where its MIDI files and captions.jsonl are, what failed, with which music21, how long
    it took, and whether it came from the cache. Each corpus adds what it counts."""

    out_dir: Path
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} (+ "style")
    music21: str = ""
    seconds: float = 0.0
    cached: bool = False
    moved: dict[str, Any] = field(default_factory=dict)  # splits.moved_pieces against the previous build

    @property
    def captions(self) -> Path:
        return self.out_dir / CAPTIONS

    def splits(self) -> dict[str, str]:
        """{location: split} from captions.jsonl (amadeus.corpus.splits decided them at the build)."""
        with open(self.captions) as f:
            return {r["location"]: r["split"] for r in map(json.loads, f) if r.get("split")}
