"""Checkpoints in and out: safe reading, verification against the code, loading, and export to a plain folder.

Two formats are read:
- a Lightning ``.ckpt`` (what `amadeus fit` writes): read with ``torch.load(weights_only=True)``, so
  a file whose unpickling would run code is refused instead of executed;
- an exported folder (``amadeus export CKPT DIR``): ``model.safetensors`` + ``config.json`` (the
  module's hyper-parameters) + ``tokenizer.json``; nothing in it is ever unpickled.

A checkpoint is rebuilt only if it matches the code exactly: its tokenizer hash must equal the hash
the current tokenizer code gives its config, and every tensor name and shape must match the network
the config builds (a clear error names the differences; weights are never loaded leniently).

The module class is given by the caller (`load_module(path, AmadeusModule)`), so this file imports no
model code and `amadeus.module` can import it. The Python API on top is `amadeus.api.Amadeus`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from amadeus.tokenizer import NoteTokenizer, TokenizerConfig, TokenizerError

FORMAT = "amadeus.export"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"

M = TypeVar("M", bound=torch.nn.Module)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the problem."""


# ----------------------------------------------------------------------------------------------
# reading


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, hyper-parameters) of a Lightning .ckpt or an exported folder, loaded safely."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or exported folder")
    if path.suffix == ".safetensors":
        return _read_folder(path.parent)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file contains objects other than tensors and plain containers, "
            f"and unpickling them could run code ({first}). Load only checkpoints you trust, or ask for an "
            f"exported folder (amadeus export)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: 'hyper_parameters' is not a dict")
    return dict(ckpt["state_dict"]), dict(hparams)


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, config = folder / WEIGHTS, folder / CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise CheckpointError(f"{folder}: not an exported amadeus folder (missing {f.name})")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config}: not JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{config}: not an amadeus export (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config}: export format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    hparams = dict(meta["hparams"])
    tok_file = folder / TOKENIZER
    if tok_file.is_file():
        try:
            saved = NoteTokenizer.load(tok_file)
        except TokenizerError as e:
            raise CheckpointError(str(e)) from None
        if saved.config_hash != hparams.get("tokenizer_hash"):
            raise CheckpointError(f"{folder}: tokenizer.json (hash {saved.config_hash}) disagrees with config.json "
                                  f"(tokenizer_hash {hparams.get('tokenizer_hash')})")
    return state, hparams


def module_arguments(path: str | Path, hp: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments a checkpoint's hyper-parameters give its module, after checking that
    they are an amadeus checkpoint's and that this code's tokenizer gives the saved tokenizer hash."""
    for key in ("network", "tokenizer"):
        if key not in hp:
            raise CheckpointError(f"{path}: hyper-parameters lack {key!r} (not an amadeus checkpoint?)")
    try:
        code_hash = TokenizerConfig.from_dict(hp["tokenizer"]).config_hash
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its tokenizer config does not fit this code ({e})") from None
    saved_hash = hp.get("tokenizer_hash")
    if saved_hash is not None and saved_hash != code_hash:
        raise CheckpointError(
            f"{path}: tokenizer hash {saved_hash} was saved, but this code gives {code_hash} for the same config "
            "(the tokenizer changed since the model was trained: its token ids would mean something else)")
    return {k: hp[k] for k in ("network", "tokenizer", "text_encoder", "text_max_length", "decoder") if k in hp}


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def verify_state(path: str | Path, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming every difference between a checkpoint's tensors (`state`) and the
    network the code builds (`own`): missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs code {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensors ({_names(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensors ({_names(unexpected)})")
    if shapes:
        parts.append("shape mismatch: " + "; ".join(shapes[:4]))
    raise CheckpointError(f"{path}: does not match the network its config builds: " + "; ".join(parts))


def load_module(path: str | Path, build: Callable[..., M], device: str | torch.device = "cpu") -> M:
    """Rebuild a checkpoint's module with `build(**hyper-parameters)` (the module class) and load its
    weights strictly; CheckpointError if the checkpoint does not match the code."""
    state, hp = read_checkpoint(path)
    kwargs = module_arguments(path, hp)
    try:
        module = build(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its hyper-parameters ({e})") from None
    verify_state(path, module.state_dict(), state)
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


# ----------------------------------------------------------------------------------------------
# export


def _plain(value: Any) -> Any:
    """Hyper-parameters as JSON values (tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise CheckpointError(f"hyper-parameter value {value!r} ({type(value).__name__}) cannot be exported as JSON")


def write_folder(module: Any, out_dir: str | Path, source: str = "") -> Path:
    """Write a module as an exported folder: model.safetensors, config.json, tokenizer.json."""
    from safetensors.torch import save_file

    from amadeus import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    hparams = _plain(dict(module.hparams))
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "tokenizer_hash": module.tokenizer.config_hash})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "amadeus_version": __version__,
            "source": source, "hparams": hparams}
    (out / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    module.tokenizer.save(out / TOKENIZER)
    return out
