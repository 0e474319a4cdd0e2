"""Tokenized Parquet shards and their manifest: the row layout, writing, reading.

A shard folder OUT holds OUT/shards/part-{s:05d}.parquet (one row per piece, columns in
docs/interfaces.md "Shards"), a small part-{s:05d}.json next to each that commits it (its key and
counts: a shard whose JSON is present and whose key matches is finished), and OUT/manifest.json that
lists the shards, their split counts and the tokenizer. `amadeus preprocess` writes them; the
DataModule and `amadeus evaluate` read them through `load_manifest` and `read_shard`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
SHARD_FORMAT = 2  # bump when the row layout or what encoding writes changes: finished shards are then redone
# 2: unisons merged (`NoteTokenizer` writes one note per instrument, pitch and onset)
ROW_GROUP_SIZE = 64  # pieces per Parquet row group (the streaming unit of the DataModule)
LOSS_KEYS = ("off_grid_onset", "off_grid_duration", "zero_duration", "duration_snapped", "unison_merged",
             "time_signature_moved", "time_signature_replaced", "tempo_change_off_onset", "tempo_out_of_range")


def shard_name(s: int) -> str:
    """File stem of shard s inside OUT/shards: part-00000, part-00001, ..."""
    return f"part-{s:05d}"


def json_default(x: Any) -> Any:
    """JSON for the numpy scalars / arrays, sets and tuples in features and statistics."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


# ----------------------------------------------------------------------------------------------
# writing


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("tokens", pa.list_(pa.int16())),
        ("n_rows", pa.int32()), ("n_notes", pa.int32()), ("caption", pa.string()),
        ("features", pa.string()), ("split", pa.string()), ("tokenizer_hash", pa.string()),
    ])


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows -> Parquet, sorted by (split, source), row groups never crossing a split; tmp + rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["source"]))
    schema = _schema()
    lengths = np.array([len(r["tokens"]) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate([r["tokens"] for r in rows]) if rows else np.zeros(0, np.int16)
    cols = {name: pa.array([r[name] for r in rows], type=schema.field(name).type)
            for name in schema.names if name != "tokens"}
    cols["tokens"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int16()))
    table = pa.table({n: cols[n] for n in schema.names}, schema=schema)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        start = 0
        for split in SPLITS:
            n = sum(r["split"] == split for r in rows)
            for a in range(start, start + n, ROW_GROUP_SIZE):
                chunk = table.slice(a, min(ROW_GROUP_SIZE, start + n - a))
                writer.write_table(chunk, row_group_size=chunk.num_rows)
            start += n
        if not rows:
            writer.write_table(table)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """obj as indented, key-sorted JSON; tmp + rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def finished_shard(shard_dir: Path, s: int, key: str) -> dict[str, Any] | None:
    """The metadata of shard s when it is finished with this key (same files and options), else None."""
    meta_path, parquet_path = shard_dir / f"{shard_name(s)}.json", shard_dir / f"{shard_name(s)}.parquet"
    if not (meta_path.is_file() and parquet_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("key") == key else None


def finish_shard(shard_dir: Path, s: int, key: str, files: int, rows: list[dict[str, Any]],
                 skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Write shard s (Parquet, then its JSON, which marks it finished) and return its metadata."""
    lost = {k: sum(int(r["stats"].get(k, 0)) for r in rows) for k in LOSS_KEYS}
    write_shard(shard_dir / f"{shard_name(s)}.parquet", rows)
    meta = {"key": key, "file": f"shards/{shard_name(s)}.parquet", "files": files, "pieces": len(rows),
            "notes": sum(r["n_notes"] for r in rows), "rows": sum(r["n_rows"] for r in rows), "lost": lost,
            "captioned": sum(bool(r["caption"]) for r in rows),
            "splits": {sp: sum(r["split"] == sp for r in rows) for sp in SPLITS},
            "skipped": sorted(skipped, key=lambda x: x["path"])}
    write_json(shard_dir / f"{shard_name(s)}.json", meta)
    return meta


def remove_stale(shard_dir: Path, n_shards: int) -> None:
    """Delete leftovers of a larger earlier run (shards numbered n_shards and up) or of a crash (*.tmp)."""
    for stale in shard_dir.glob("part-*"):
        number = stale.name.split(".")[0][len("part-"):]
        if stale.suffix == ".tmp" or (number.isdigit() and int(number) >= n_shards):
            stale.unlink()


def write_manifest(out: Path, tokenizer, metas: list[dict[str, Any]], src: str,
                   options: dict[str, Any], files: int) -> dict[str, Any]:
    """OUT/manifest.json from the per-shard metadata (docs/interfaces.md "Shards")."""
    from amadeus import __version__

    lost = {k: sum(m["lost"].get(k, 0) for m in metas) for k in LOSS_KEYS}
    splits = {sp: sum(m["splits"][sp] for m in metas) for sp in SPLITS}
    skipped = [x for m in metas for x in m["skipped"]]
    counts = {"files": files, "pieces": sum(m["pieces"] for m in metas), "skipped": len(skipped),
              "notes": sum(m["notes"] for m in metas), "rows": sum(m["rows"] for m in metas),
              "captioned": sum(m["captioned"] for m in metas), "splits": splits}
    manifest = {
        "format": SHARD_FORMAT,
        "amadeus_version": __version__,
        "source": src,
        "tokenizer": tokenizer.config.to_dict(),
        "tokenizer_hash": tokenizer.config_hash,
        "options": options,
        "counts": counts,
        "lost": lost,
        "skipped": skipped,
        "shards": [{"file": m["file"], "pieces": m["pieces"], "notes": m["notes"], "rows": m["rows"],
                    "splits": m["splits"]} for m in metas if m["pieces"] > 0],
    }
    write_json(out / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# reading


def load_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """Read OUT/manifest.json (OUT a folder or any fsspec URL); a clear error when it is missing or not
    a manifest."""
    import fsspec

    path = f"{str(out).rstrip('/')}/manifest.json"
    try:
        with fsspec.open(path, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (run `amadeus preprocess SRC {out}` first)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if "tokenizer_hash" not in manifest or "shards" not in manifest:
        raise ValueError(f"{path}: not an amadeus shard manifest")
    return manifest


def read_shard(file: str, columns: list[str], split: str | None = None, captioned: bool = False):
    """A pyarrow Table of `columns` of one shard file (a path or fsspec URL), in shard order: only the
    rows of `split` when given, only captioned rows when `captioned`. The filter columns are read too."""
    import fsspec
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filters = (["split"] if split is not None else []) + (["caption"] if captioned else [])
    needed = list(columns) + [c for c in filters if c not in columns]
    fs, path = fsspec.core.url_to_fs(file)
    table = pq.read_table(path, columns=needed, filesystem=fs)
    keep = None
    if split is not None:
        keep = pc.equal(table["split"], split)
    if captioned:
        has_caption = pc.not_equal(table["caption"], "")
        keep = has_caption if keep is None else pc.and_(keep, has_caption)
    return table if keep is None else table.filter(keep)
