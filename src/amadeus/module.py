"""AmadeusModule: the Lightning glue around NoteTransformer + AttributeDiffusionHead.

Kept thin on purpose: the networks live in `amadeus.model`, the diffusion maths in
`amadeus.model.diffusion`, the dispersive loss in `amadeus.losses`. This file only wires a batch
through them, logs, and builds the optimiser.

A batch (see `amadeus.datamodule`) is ``notes [B, T+1, K]``, ``mask [B, T+1]``, ``segments [B, T+1]``
(packed rows: the piece of each row) and ``caption``; the model reads rows ``0..T-1`` and predicts rows
``1..T`` of the same piece.
"""
from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from amadeus.checkpoint import read_checkpoint
from amadeus.errors import RunSetupError
from amadeus.losses import mlsdes_loss
from amadeus.model.baselines import DECODERS, build_decoder
from amadeus.model.config import ModelConfig
from amadeus.model.transformer import segment_positions
from amadeus.tokenizer import COL_METRIC, METRIC_SOS, NoteTokenizer, TokenizerConfig


def _model_config(network: ModelConfig | dict | None, tokenizer: NoteTokenizer, prefix_dim: int) -> ModelConfig:
    """Normalise the `network` argument (dataclass from the CLI, dict from a checkpoint)."""
    model = network
    if model is None:
        model = ModelConfig()
    elif isinstance(model, dict):
        model = ModelConfig.from_dict(model)
    vocab = tuple(tokenizer.vocab_sizes)
    if model.vocab_sizes and tuple(model.vocab_sizes) != vocab:
        raise ValueError(
            f"model.vocab_sizes {tuple(model.vocab_sizes)} do not match the tokenizer's {vocab} "
            f"(tokenizer hash {tokenizer.config_hash})"
        )
    values = {f.name: getattr(model, f.name) for f in fields(model)}
    values.update(vocab_sizes=list(vocab), prefix_dim=prefix_dim)
    return ModelConfig(**values)


def _is_sharded(strategy: Any) -> bool:
    """A strategy that shards the parameters across ranks (FSDP, model parallelism, DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy))


def _step_seed(epoch: int, batch_idx: int, rank: int) -> int:
    """The torch seed of one training batch, from the run's seed (`seed_everything`, PL_GLOBAL_SEED)."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return hash((base, epoch, batch_idx, rank)) % (2**63)


def _metric_key(stage: str) -> str:
    # nn.ModuleDict cannot hold a key named "train" (it is an nn.Module method).
    return "fit" if stage == "train" else stage


class AmadeusModule(L.LightningModule):
    """Trains the note transformer and the diffusion attribute head; rebuilds itself from a checkpoint.

    Args:
        network: network sizes (`ModelConfig`); vocab sizes are filled in from the tokenizer.
        tokenizer: tokenizer config (dict) or None for the defaults. Its hash travels with the
            checkpoint and must match the data's.
        tokenizer_hash: the hash `tokenizer` must give with this code, or None (no check). Checkpoints
            save it with the other arguments, so `amadeus fit --ckpt_path CKPT` (which re-reads a
            checkpoint's hyper-parameters as constructor arguments) refuses a tokenizer that changed.
        lr, min_lr_ratio, warmup_steps, weight_decay, betas: AdamW with linear warmup + cosine decay
            to ``lr * min_lr_ratio`` over the trainer's ``max_steps``.
        text_encoder: None (unconditional) or a TextEncoder name/path (text prefix conditioning).
        caption_dropout: probability of replacing a caption by "" in training (classifier-free guidance).
        freeze_backbone_steps: fine-tuning only: backbone weights frozen for this many optimizer steps.
        init_from: fine-tuning only: a checkpoint whose matching weights are loaded (new ones reported).
        opening_weight, opening_notes: training emphasis on the opening of a piece: the first
            `opening_notes` notes of every window that starts at a piece's SOS weigh `opening_weight`
            times the others in the training loss (1 = the plain ELBO; validation and test always
            report the plain ELBO). A caption's meter, tempo and instruments are decided by the first
            notes and then copied, so with few pieces their share of the loss (1/T) is too small for
            the text to take hold; see configs/tiny-text.yaml.
        compile: compile the backbone and the head with torch.compile for training (`configure_model`); the
            checkpoints are unchanged. Measured in benchmarks/train.py (docs/training.md, "Throughput").
        ema_decay: 0 = off; else validation, test and the checkpoints' `state_dict` use an exponential moving
            average of the weights with this decay (Lightning's EMAWeightAveraging, attached by
            `configure_callbacks`; the raw weights travel beside it for resumption).
        decoder: how a note is decoded from the backbone's latent: "amadeus" (masked diffusion head),
            "flat" (one token per attribute), "nested" (small causal head over the attributes) or
            "parallel" (independent heads); see `amadeus.model.baselines`. Saved in the checkpoint.

    Logged per stage (train / val / test): `loss` (training objective), `diffusion` (the decoder's
    loss per attribute slot: the diffusion ELBO estimate / K for amadeus, the exact cross-entropy / K
    for the others), `mlsdes`, `acc/<attr>`; amadeus: `masked_ce/<attr>` (mean cross-entropy of the
    masked slots at random masking rates, not an NLL); flat / nested / parallel: `nll/<attr>` (the
    exact chain-rule term, nats per note). Validation and test also log likelihoods in nats per note:
    `nll_per_note` (exact: the chain rule in column order; for amadeus the head read as an
    autoregressive model revealing one slot at a time in column order, K head passes) and, for amadeus,
    `elbo_per_note` (the diffusion ELBO, an upper bound on the NLL of the diffusion model).
    """

    def __init__(
        self,
        network: ModelConfig | None = None,
        tokenizer: dict | None = None,
        tokenizer_hash: str | None = None,
        lr: float = 3e-4,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 200,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        text_encoder: str | None = None,
        text_max_length: int = 64,
        caption_dropout: float = 0.1,
        freeze_backbone_steps: int = 0,
        init_from: str | None = None,
        opening_weight: float = 1.0,
        opening_notes: int = 1,
        decoder: str = "amadeus",
        ema_decay: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {ema_decay}")
        if opening_weight <= 0 or opening_notes < 0:
            raise ValueError(f"need opening_weight > 0 and opening_notes >= 0, got {opening_weight}, {opening_notes}")
        self.tokenizer = NoteTokenizer(TokenizerConfig.from_dict(tokenizer) if tokenizer else None)
        if tokenizer_hash is not None and tokenizer_hash != self.tokenizer.config_hash:
            raise ValueError(f"tokenizer_hash {tokenizer_hash} was saved with this tokenizer config, but this code "
                             f"gives {self.tokenizer.config_hash} (its token ids would mean something else)")
        self.text_encoder = None
        prefix_dim = 0
        if text_encoder:
            from amadeus.model.text import TextEncoder

            # Kept out of the state_dict by TextEncoder itself: checkpoints stay small.
            self.text_encoder = TextEncoder(text_encoder, max_length=text_max_length)
            prefix_dim = self.text_encoder.dim
        self.config = _model_config(network, self.tokenizer, prefix_dim)
        self.save_hyperparameters(
            {
                "network": self.config.to_dict(),
                "tokenizer": self.tokenizer.config.to_dict(),
                "tokenizer_hash": self.tokenizer.config_hash,
                "lr": lr,
                "min_lr_ratio": min_lr_ratio,
                "warmup_steps": warmup_steps,
                "weight_decay": weight_decay,
                "betas": tuple(betas),
                "text_encoder": text_encoder,
                "text_max_length": text_max_length,
                "caption_dropout": caption_dropout,
                "freeze_backbone_steps": freeze_backbone_steps,
                "init_from": None,  # weights are in this checkpoint now; never re-load on restore
                "opening_weight": opening_weight,
                "opening_notes": opening_notes,
                "decoder": decoder,
                "ema_decay": ema_decay,
                "compile": compile,
            }
        )
        self.decoder = decoder
        self.backbone, self.head = build_decoder(self.config, decoder)
        self.K = len(self.config.vocab_sizes)
        names = self.tokenizer.attribute_names
        # One metric object per stage and attribute (torchmetrics handles DDP reduction).
        ce_kind = self.head.per_attribute_metric
        self.stage_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {f"{kind}__{name}": MeanMetric() for kind in ("acc", ce_kind) for name in names}
                )
                for stage in ("fit", "val", "test")
            }
        )
        if init_from:
            self.load_init_weights(init_from)

    # ------------------------------------------------------------------ loading pretrained weights
    def load_init_weights(self, path: str) -> dict[str, list[str]]:
        """Load every weight of a pretrained checkpoint whose name and shape match; report the rest.

        Used to start text fine-tuning from an unconditional model: the prefix projection (and
        anything else new) keeps its fresh initialisation. A tokenizer mismatch is an error.
        """
        state, hparams = read_checkpoint(path)
        their_hash = hparams.get("tokenizer_hash")
        if their_hash and their_hash != self.tokenizer.config_hash:
            raise ValueError(
                f"{path}: tokenizer hash {their_hash} differs from this model's {self.tokenizer.config_hash}"
            )
        own = self.state_dict()
        loaded, shape_mismatch = [], []
        for name, tensor in state.items():
            if name in own and own[name].shape == tensor.shape:
                own[name] = tensor
                loaded.append(name)
            elif name in own:
                shape_mismatch.append(f"{name}: {tuple(tensor.shape)} vs {tuple(own[name].shape)}")
        if shape_mismatch:
            raise ValueError(f"{path}: incompatible shapes: " + "; ".join(shape_mismatch[:5]))
        new = sorted(set(own) - set(loaded))
        unused = sorted(set(state) - set(own))
        self.load_state_dict(own, strict=True)
        print(f"init_from {path}: loaded {len(loaded)} tensors, new {len(new)}: {new[:8]}"
              + (f", unused {len(unused)}: {unused[:8]}" if unused else ""))
        return {"loaded": loaded, "new": new, "unused": unused}

    # ------------------------------------------------------------------ forward pieces
    def encode_text(self, captions: list[str] | None, train: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """Caption strings -> (prefix states [B, P, D], mask [B, P]) or (None, None) if unconditional."""
        if self.text_encoder is None or captions is None:
            return None, None
        if train and self.hparams.caption_dropout > 0:
            drop = torch.rand(len(captions)) < self.hparams.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        states, mask = self.text_encoder(list(captions))
        return states.to(self.device), mask.to(self.device)

    def shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        notes: Tensor = batch["notes"]  # [B, T+1, K]
        segments = batch.get("segments")  # [B, T+1]: the piece of each row (0 = padding)
        if segments is None:
            segments = batch["mask"].long()
        inputs, targets = notes[:, :-1], notes[:, 1:]  # [B, T, K] each
        # a target row counts when it and its input row are real rows of the same piece
        valid = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)  # [B, T]
        packed = bool((segments > 1).any())  # more than one piece in some row
        if packed and self.text_encoder is not None:
            raise RunSetupError("this batch packs several pieces into one row, but a text model reads one caption "
                                "per row: train it with --data.pack false")
        prefix, prefix_mask = self.encode_text(batch.get("caption"), train=stage == "train")
        weight = self._opening_weight(inputs, segments[:, :-1], stage)
        out = self.head.loss(self.backbone, notes, valid, prefix, prefix_mask, weight, segments if packed else None)
        if stage != "test":
            mlsdes = mlsdes_loss(out.mid, segments[:, :-1], self.config)
        else:
            mlsdes = out.loss.new_zeros(())
        loss = out.loss + self.config.mlsdes_weight * mlsdes
        result = {"loss": loss, "diffusion": out.loss, "mlsdes": mlsdes, "notes": valid.sum()}
        if stage == "train":
            result["fill"] = (segments > 0).float().mean()  # real rows / rows

        metrics = self.stage_metrics[_metric_key(stage)]
        with torch.no_grad():
            # Weighted means over the scored real slots; no host sync (count 0 -> weight 0).
            for k, name in enumerate(self.tokenizer.attribute_names):
                m = (out.scored[..., k] & valid).float()
                count = m.sum()
                correct = ((out.logits[k].argmax(-1) == targets[..., k]).float() * m).sum()
                metrics[f"acc__{name}"].update(correct / count.clamp_min(1), weight=count)
                metrics[f"{self.head.per_attribute_metric}__{name}"].update(out.per_attribute[k].detach(), weight=count)
            if stage != "train":
                # likelihoods in nats per note: exact (the chain rule in column order) and, for a diffusion
                # decoder, this batch's ELBO estimate (the loss is per attribute slot: times K)
                terms = self.head.exact_nll(self.backbone, notes, valid, prefix, prefix_mask,
                                            segments if packed else None)
                result["nll_per_note"] = terms.sum(1).mean() if len(terms) else out.loss.new_zeros(())
                if not self.head.autoregressive:
                    result["elbo_per_note"] = out.loss * self.K
        return result

    def _opening_weight(self, inputs: Tensor, segments: Tensor, stage: str) -> Tensor | None:
        """Per-target-row loss weights [B, T] (training only): opening_weight on the first opening_notes
        targets of every window (piece of a row) whose first input row is SOS, 1 elsewhere."""
        w, n = float(self.hparams.opening_weight), int(self.hparams.opening_notes)
        if stage != "train" or w == 1.0 or n == 0:
            return None
        position = segment_positions(segments)  # [B, T] row within its window
        first_row = torch.gather(inputs[..., COL_METRIC], 1, torch.arange(inputs.shape[1], device=inputs.device)
                                 .expand_as(position) - position)  # metric of each row's window's first row
        return torch.where((first_row == METRIC_SOS) & (position < n), w, 1.0)

    # ------------------------------------------------------------------ Lightning hooks
    def configure_model(self) -> None:
        """`compile`: the backbone's and the head's calls go through torch.compile (in place: the state
        dict keeps its names)."""
        if self.hparams.compile:
            self.backbone.compile()
            self.head.compile()

    def configure_callbacks(self) -> list[L.Callback]:
        """The weight averaging of `ema_decay` (a training recipe setting, so it lives with the model).
        Lightning's averaging keeps a full copy of the module, which a sharded strategy (FSDP) does not
        have on any rank: refused at start."""
        if not self.hparams.ema_decay:
            return []
        from lightning.pytorch.callbacks import EMAWeightAveraging

        strategy = self._trainer.strategy if self._trainer is not None else None
        if _is_sharded(strategy):
            raise RunSetupError(f"model.ema_decay={self.hparams.ema_decay} (weight averaging) does not work with the "
                                f"sharded strategy {type(strategy).__name__}: pass --model.ema_decay 0")
        return [EMAWeightAveraging(decay=float(self.hparams.ema_decay))]

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clipping by the global norm of all gradients, the same on one device, DDP and FSDP: a sharded
        model (FSDP) computes the norm over every rank's shards with its own `clip_grad_norm_` (Lightning's
        FSDP precision plugin refuses norm clipping); everything else clips as Lightning does."""
        model = self._trainer.strategy.model if self._trainer is not None else None
        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm" and _is_sharded(self._trainer.strategy) \
                and hasattr(model, "clip_grad_norm_"):
            model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.shared_step(batch, "train")
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step}: diffusion={out['diffusion'].item():.4g}, "
                f"mlsdes={out['mlsdes'].item():.4g}. Lower model.lr, check the data, or resume from the "
                "last good checkpoint."
            )
        self._log_stage("train", out, batch_size=batch["notes"].shape[0])
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.shared_step(batch, "val")
        self._log_stage("val", out, batch_size=batch["notes"].shape[0])
        return out["loss"]

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.shared_step(batch, "test")
        self._log_stage("test", out, batch_size=batch["notes"].shape[0])
        return out["loss"]

    def _log_stage(self, stage: str, out: dict[str, Tensor], batch_size: int) -> None:
        """Scalars of a step. Training logs `<name>_step` (this rank's value, no collective per step)
        and `<name>_epoch` (the mean over every rank's batches); validation and test the mean over ranks."""
        if "fill" in out:
            self.log("train/fill", out["fill"], batch_size=batch_size)
        for name in ("loss", "diffusion", "mlsdes"):
            key, shown = f"{stage}/{name}", name == "loss"
            if stage == "train":
                self.log(f"{key}_step", out[name], prog_bar=shown, batch_size=batch_size)
                self.log(f"{key}_epoch", out[name], on_step=False, on_epoch=True, batch_size=batch_size,
                         sync_dist=True)
            else:
                self.log(key, out[name], prog_bar=shown, on_epoch=True, batch_size=batch_size, sync_dist=True)
        for key in ("nll_per_note", "elbo_per_note"):
            if key in out:  # nats per note, weighted by the batch's notes
                self.log(f"{stage}/{key}", out[key], on_step=False, on_epoch=True,
                         batch_size=max(1, int(out["notes"])), sync_dist=True)
        for name, metric in self.stage_metrics[_metric_key(stage)].items():
            kind, attr = name.split("__", 1)
            self.log(f"{stage}/{kind}/{attr}", metric, on_step=False, on_epoch=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The step's randomness (masking, caption and network dropout) is a function of (seed, epoch,
        # batch, rank), not of what ran before: a resumed run draws what the uninterrupted run drew,
        # on any number of ranks, with no per-rank RNG state in the checkpoint.
        torch.manual_seed(_step_seed(self.current_epoch, batch_idx, self.global_rank))
        frozen = self.global_step < self.hparams.freeze_backbone_steps
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # The diffusion loss draws random masks: seeded per batch, the same weights always validate to the
        # same value (checkpoint names and top-k rank weights, not luck). Training re-seeds every step.
        torch.manual_seed(_step_seed(-1, batch_idx, self.global_rank))

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        torch.manual_seed(_step_seed(-2, batch_idx, self.global_rank))

    def configure_optimizers(self) -> dict[str, Any]:
        # Weight decay only on the weight matrices of linear maps (nn.Linear.weight). Embeddings are not
        # decayed: the backbone's and the head's attribute tables (nn.Embedding), the head's slot and
        # [MASK] embeddings and CIEM's null context (free nn.Parameters); nor are norm gains and biases.
        # Decay pulls a parameter towards 0: for an embedding row that means towards "no information"
        # about a value the data may rarely show, for a norm gain towards switching the layer off.
        linear_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad and self.hparams.freeze_backbone_steps == 0:
                continue
            (decay if id(p) in linear_weights else no_decay).append(p)
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas), fused=False,
        )
        total = self._total_steps()
        warmup = max(1, min(hp.warmup_steps, total // 2 if total else hp.warmup_steps))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not total:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + 0.5 * (1 - hp.min_lr_ratio) * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        trainer = self._trainer
        if trainer is None:
            return 0
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = trainer.estimated_stepping_batches
        return int(est) if math.isfinite(est) else 0
