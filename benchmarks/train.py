"""Training throughput, peak memory and the attribute head's share of a training step (CPU).

    python benchmarks/train.py [--quick] [--sizes tiny,30m] [--device cpu|cuda]

Each size runs in its own process (so peak RSS is that size's alone) on random windows of the
tokenizer's vocabularies: speed does not depend on the values. One row per size:
{"size", "device", "batch", "window", "notes_per_s", "step_ms", "peak_rss_mb", "head_share",
 "backbone_ms", "head_ms", "params_m"}.
head_share = head (CIEM + denoiser + output heads, forward + backward) / (backbone + head), each
timed alone on the same batch. Target: head_share <= 0.25 at 30m.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train.json"


def measure(size: str, batch: int, window: int, steps: int, device: str) -> dict:
    import torch

    from amadeus.model.config import ModelConfig
    from amadeus.module import AmadeusModule

    torch.manual_seed(0)
    from _sizes import SIZE_KEYS
    from _sizes import network as size_network

    net = size_network(size)  # configs/size/<size>.yaml
    module = AmadeusModule(network=ModelConfig(**{k: net[k] for k in SIZE_KEYS if k in net}))
    module.to(device).train()
    vocab = module.tokenizer.vocab_sizes
    notes = torch.stack([torch.randint(1, v, (batch, window + 1)) for v in vocab], -1).to(device)
    mask = torch.ones(batch, window + 1, dtype=torch.bool, device=device)
    batch_ = {"notes": notes, "mask": mask}
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        out = module.shared_step(batch_, "train")
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, reps: int) -> float:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps

    step_s = timed(step, steps)

    # Backbone alone vs head alone (forward + backward), on the same batch.
    from amadeus.model.diffusion import corrupt

    inputs, targets = notes[:, :-1], notes[:, 1:]

    def backbone() -> None:
        module.backbone(inputs).z.float().square().mean().backward()

    z = module.backbone(inputs).z.detach().requires_grad_(True)
    masked, _ = corrupt(targets.shape, device=device)

    def head() -> None:
        logits = module.head(z, targets, masked)
        sum(lg.float().square().mean() for lg in logits).backward()

    backbone_s = timed(backbone, steps)
    head_s = timed(head, steps)
    module.zero_grad(set_to_none=True)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "size": size,
        "device": device,
        "batch": batch,
        "window": window,
        "notes_per_s": round(batch * window / step_s, 1),
        "step_ms": round(step_s * 1000, 1),
        "peak_rss_mb": round(peak, 1),
        "head_share": round(head_s / (backbone_s + head_s), 3),
        "backbone_ms": round(backbone_s * 1000, 1),
        "head_ms": round(head_s * 1000, 1),
        "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller steps (about a minute on 2 cores)")
    parser.add_argument("--sizes", default="tiny,30m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one size, print its JSON row
    args = parser.parse_args()
    batch, window, steps = (4, 256, 3) if args.quick else (8, 512, 10)
    if args.one:
        print(json.dumps(measure(args.one, batch, window, steps, args.device)))
        return
    rows = []
    for size in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--one", size, "--device", args.device] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "quick": args.quick}, indent=2) + "\n")
    cols = list(rows[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
