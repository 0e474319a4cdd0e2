"""Network sizes for the benchmarks, read from configs/size/*.yaml (the files training uses).

A size file includes configs/base.yaml (`config: ../base.yaml`) and sets dotted keys over it
(`model.network.init_args.d_model: 512`); `network(size)` resolves that chain and returns the
network block as a dict of ModelConfig fields, so the benchmarks never hold their own copies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = tuple(sorted((p.stem for p in (CONFIGS / "size").glob("*.yaml")), key=lambda s: (s != "tiny", len(s), s)))
SIZE_KEYS = ("d_model", "n_layers", "n_heads", "head_width", "head_layers", "head_heads", "ffn_mult")


def _network_of(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text()) or {}
    net = _network_of((path.parent / doc["config"]).resolve()) if "config" in doc else {}
    net.update((doc.get("model") or {}).get("network") or {})
    prefix = "model.network.init_args."
    net.update({k[len(prefix):]: v for k, v in doc.items() if k.startswith(prefix)})
    return net


def network(size: str) -> dict[str, Any]:
    """ModelConfig fields of a size ("tiny", "30m", "150m"): base.yaml's network block under the size's."""
    path = CONFIGS / "size" / f"{size}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown size {size!r}; configs/size has {', '.join(SIZES)}")
    return _network_of(path)
