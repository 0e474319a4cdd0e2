"""ModelConfig: every size and switch of the networks and of the training objective, in one place.

The config is a plain dataclass so that LightningCLI can fill it from YAML and checkpoints can store
it as JSON (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


def swiglu_hidden(width: int, mult: float) -> int:
    """Hidden width of a SwiGLU FFN: 2/3 of `mult * width` (same cost as a GELU FFN), rounded up to 64."""
    hidden = int(2 / 3 * mult * width)
    return max(64, 64 * math.ceil(hidden / 64))


@dataclass
class ModelConfig:
    """Sizes of the Note Generator (backbone) and the Note Decoder (diffusion head), and loss switches.

    `vocab_sizes` comes from the tokenizer (`NoteTokenizer.vocab_sizes`); the networks refuse an empty one.
    `max_notes` is only a sanity bound on sequence length: RoPE has no position table, so nothing is
    allocated from it and nothing slides past it (a longer sequence is a clear error).
    """

    vocab_sizes: tuple[int, ...] = ()
    # backbone (NoteTransformer)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_mult: float = 4.0
    dropout: float = 0.1
    rope_base: float = 10000.0
    max_notes: int = 4096
    prefix_dim: int = 0  # width of the text-encoder states fed as a prefix; 0 = no text
    # head (AttributeDiffusionHead)
    head_width: int = 128
    head_layers: int = 1
    head_heads: int = 4
    head_ffn_mult: float = 2.0
    use_ciem: bool = True
    # objective
    diffusion_eps: float = 1e-3
    use_mlsdes: bool = True
    mlsdes_weight: float = 0.5
    mlsdes_tau: float = 0.5
    mlsdes_depth: float = 1 / 3

    def __post_init__(self) -> None:
        self.vocab_sizes = tuple(int(v) for v in self.vocab_sizes)
        problems = []
        if any(v < 1 for v in self.vocab_sizes):
            problems.append(f"vocab_sizes must be positive, got {self.vocab_sizes}")
        for name in ("d_model", "n_layers", "n_heads", "head_width", "head_layers", "head_heads", "max_notes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            problems.append(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even width (RoPE)")
        if self.head_width % self.head_heads:
            problems.append(f"head_width={self.head_width} must be divisible by head_heads={self.head_heads}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.diffusion_eps < 1.0:
            problems.append(f"diffusion_eps must be in (0, 1), got {self.diffusion_eps}")
        if not 0.0 <= self.mlsdes_depth <= 1.0:
            problems.append(f"mlsdes_depth must be a fraction in [0, 1], got {self.mlsdes_depth}")
        if self.mlsdes_tau <= 0:
            problems.append(f"mlsdes_tau must be > 0, got {self.mlsdes_tau}")
        if self.prefix_dim < 0:
            problems.append(f"prefix_dim must be >= 0, got {self.prefix_dim}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def K(self) -> int:
        """Number of attributes per note."""
        return len(self.vocab_sizes)

    @property
    def mid_layer(self) -> int:
        """1-based index of the layer whose output feeds MLSDES: round(depth * n_layers), in [1, n_layers]."""
        return min(self.n_layers, max(1, round(self.mlsdes_depth * self.n_layers)))

    @property
    def ffn_hidden(self) -> int:
        return swiglu_hidden(self.d_model, self.ffn_mult)

    @property
    def head_ffn_hidden(self) -> int:
        return swiglu_hidden(self.head_width, self.head_ffn_mult)

    def require_vocab(self) -> None:
        """Raise a clear error when the config has no vocabularies (a network cannot be built)."""
        if not self.vocab_sizes:
            raise ValueError("ModelConfig.vocab_sizes is empty: pass the tokenizer's vocab_sizes")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["vocab_sizes"] = list(self.vocab_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**d)
