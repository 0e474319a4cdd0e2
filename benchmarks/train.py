"""Training throughput of what `amadeus fit` runs: shards -> MusicDataModule (packed or not) -> training step
at the config's precision, through Lightning's Trainer.

    python benchmarks/train.py [--quick] [--config configs/tiny.yaml | --sizes tiny,30m,150m] [--data bach,folk]
                               [--pack both] [--steps 30] [--compile] [--device cpu|cuda] [--out FILE]
    python benchmarks/train.py --fill-only [--config configs/pretrain-30m.yaml] [--data bach,folk]

--sizes picks the configs of model sizes (tiny: configs/tiny.yaml, 30m / 150m: configs/pretrain-30m.yaml /
pretrain-150m.yaml). Each row trains the config's model (built by the same LightningCLI as `amadeus fit`, from the config file
and a few overrides: --trainer.max_steps, no validation, no logger, no checkpoints) on an embedded corpus
(bach, folk, music21) or a shard folder, and times the steps after `--warmup`: one row per (data, pack).
Row: {"config", "data", "pack", "device", "precision", "batch", "max_notes", "steps", "step_ms",
"real_notes_per_s" (target notes the loss scores: padding and piece boundaries excluded), "rows_per_s",
"fill" (real rows / rows), "peak_mem_mb" (CUDA allocated, else the process's peak RSS), "params_m",
"mfu" (CUDA: model FLOPs per second / --peak-tflops; 6 x parameters x rows + the attention's 6 x layers x
d_model x rows x T, for forward and backward)}. --compile adds rows with `--model.compile true` (the backbone
and the head through torch.compile); "warmup_s" is the wall time of the warm-up steps (compilation included).
--fill-only: the fill of 24 batches of the config's data settings (no training), per corpus and pack.
Results go to benchmarks/results/train.json (--quick: train-quick.json, --fill-only: train-fill.json), row by
row; on a GPU commit them as train-cuda.json. Without --data the data is the GPU harness's folk shards
(.gpu/shards, copied there by ../shared/gpu/prepare.sh) when they exist, else the embedded bach and folk corpora.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SIZE_CONFIGS = {"tiny": "configs/tiny.yaml", "30m": "configs/pretrain-30m.yaml", "150m": "configs/pretrain-150m.yaml"}
GPU_SHARDS = ROOT / ".gpu" / "shards"  # the GPU harness's folk shards (../shared/gpu/prepare.sh)


def _data_dir(data: str) -> str:
    """A shard folder: an embedded corpus' (built when missing) or the given path."""
    from amadeus.corpus import CORPORA

    return str(CORPORA[data].ensure_shards(progress=False)) if data in CORPORA else data


def _cli(config: str, data: str, pack: bool, steps: int, device: str, extra: list[str]):
    from amadeus.commands.lightning import make_cli

    args = ["-c", str(ROOT / config), f"--data.data_dir={_data_dir(data)}", f"--data.pack={str(pack).lower()}",
            f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.callbacks=[]", "--trainer.num_sanity_val_steps=0",
            f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='amadeus-train-bench-')}", *extra]
    if device != "auto":
        args.append(f"--trainer.accelerator={'gpu' if device == 'cuda' else device}")
    return make_cli(args, run=False)


def measure(config: str, data: str, pack: bool, steps: int, warmup: int, device: str, compiled: bool,
            peak_tflops: float) -> dict:
    """One row: train `warmup + steps` steps and time the last `steps`."""
    import lightning as L
    import torch

    cli = _cli(config, data, pack, warmup + steps, device, [f"--model.compile={str(compiled).lower()}"])
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    cuda = trainer.strategy.root_device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Timer(L.Callback):
        """Wall time from the end of one step to the end of the next (data loading, forward, backward,
        optimiser step: all of it), for the steps after the warm-up."""

        def __init__(self) -> None:
            self.t0, self.seconds, self.targets, self.rows, self.real, self.warmup_s = 0.0, 0.0, 0, 0, 0, 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync()
            now = time.perf_counter()
            if batch_idx < warmup:
                self.warmup_s += now - self.t0
            else:
                self.seconds += now - self.t0
                seg = batch["segments"]
                self.targets += int(((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).sum())
                self.rows += seg.numel()
                self.real += int((seg > 0).sum())
            self.t0 = now

    timer = Timer()
    trainer.callbacks.append(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    cfg = module.config
    params = sum(p.numel() for p in module.parameters())
    flops = 6 * params * timer.rows + 6 * cfg.n_layers * cfg.d_model * timer.rows * dm.max_notes
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "data": data, "pack": pack, "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision), "compiled": compiled, "batch": dm.batch_size,
            "max_notes": dm.max_notes, "steps": steps, "step_ms": round(1000 * timer.seconds / steps, 1),
            "real_notes_per_s": round(timer.targets / timer.seconds, 1),
            "rows_per_s": round(timer.rows / timer.seconds, 1), "fill": round(timer.real / timer.rows, 3),
            "peak_mem_mb": round(peak, 1), "params_m": round(params / 1e6, 2),
            "mfu": round(flops / timer.seconds / (peak_tflops * 1e12), 4) if cuda else None,
            "warmup_s": round(timer.warmup_s, 1),
            "threads": torch.get_num_threads()}


def fill_row(config: str, data: str, pack: bool, batches: int = 24) -> dict:
    """The fill of `batches` training batches of the config's data settings (no model)."""
    cli = _cli(config, data, pack, 1, "cpu", ["--data.num_workers=0"])
    dm = cli.datamodule
    dm.setup("fit")
    real = rows = 0
    for i, batch in enumerate(dm.train_dataloader()):
        if i == batches:
            break
        real, rows = real + int(batch["mask"].sum()), rows + batch["mask"].numel()
    return {"config": config, "data": data, "pack": pack, "batch": dm.batch_size, "max_notes": dm.max_notes,
            "batches": min(i, batches), "fill": round(real / rows, 3), "train_windows": dm.count_train_windows(),
            "train_rows": dm.count_train_rows()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (about a minute on 2 cores)")
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--sizes", default=None, help=f"model sizes instead of --config: {', '.join(SIZE_CONFIGS)}")
    ap.add_argument("--data", default=None, help="comma-separated corpora (bach, folk, music21) or shard folders "
                                                 "(default: .gpu/shards when present, else bach,folk)")
    ap.add_argument("--pack", default="both", choices=("both", "true", "false"))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default 30; 8 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5; 2 with --quick)")
    ap.add_argument("--compile", action="store_true", help="also rows with torch.compile of backbone and head")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (the config's accelerator)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak for MFU (H200: 989)")
    ap.add_argument("--fill-only", action="store_true", help="only the fill of 24 batches per corpus and pack")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one row as JSON (data:pack:compiled)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (8 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    packs = {"both": (False, True), "true": (True,), "false": (False,)}[args.pack]
    data_list = (args.data or (str(GPU_SHARDS) if GPU_SHARDS.is_dir() else "bach,folk")).split(",")
    configs = [SIZE_CONFIGS[s] for s in args.sizes.split(",")] if args.sizes else [args.config]
    if args.one:
        data, pack, compiled = args.one.rsplit(":", 2)
        row = measure(args.config, data, pack == "1", steps, warmup, args.device, compiled == "1", args.peak_tflops)
        print(json.dumps(row))
        return
    name = "train-fill" if args.fill_only else "train-quick" if args.quick else "train"
    out = Path(args.out) if args.out else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for config in configs:
        for data in data_list:
            for pack in packs:
                for compiled in (False, True) if args.compile and not args.fill_only else (False,):
                    if args.fill_only:
                        rows.append(fill_row(config, data, pack))
                    else:
                        cmd = [sys.executable, __file__, "--one", f"{data}:{int(pack)}:{int(compiled)}", "--config",
                               config, "--steps", str(steps), "--warmup", str(warmup), "--device", args.device,
                               "--peak-tflops", str(args.peak_tflops), "--threads", str(args.threads)]
                        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
                        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
                    out.write_text(json.dumps({"rows": rows, "command": " ".join(["python", "benchmarks/train.py",
                                                                                 *sys.argv[1:]])}, indent=2) + "\n")
    cols = list(rows[0])
    print("\n" + " | ".join(cols) + "\n" + " | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if not args.fill_only:
        for config in configs:
            for data in data_list:
                same = {r["pack"]: r for r in rows if r["config"] == config and r["data"] == data and not r["compiled"]}
                if len(same) == 2:
                    print(f"{config} on {data}: packed / unpacked real notes per second = "
                          f"{same[True]['real_notes_per_s'] / same[False]['real_notes_per_s']:.2f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
