"""Train-step and inference throughput of every backbone, as braintl trains them.

For each backbone and image size: inference images/s (eval mode, no autograd) and train-step
images/s (forward, BCE-with-logits, backward, Adam step) under each strategy that backbone runs
in the seed: ``frozen`` and ``finetune`` for the pretrained ones, ``full`` for the scratch CNN.
The seed's ``paper`` head and batch size 18; uint8 inputs, as the tensor cache delivers them.
Weights are random (``none``): throughput does not depend on their values. On CUDA it runs as
the training loop does: channels_last and bf16 autocast.

    python benchmarks/bench_models.py                      # 224 and 128 px, all backbones
    python benchmarks/bench_models.py --sizes 128 --iters 2 --models scratch_cnn resnet50
    python benchmarks/bench_models.py --device cuda --out benchmarks/results/bench_models_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision

from braintl.models import (
    apply_strategy,
    create_model,
    list_models,
    list_strategies,
    resolve_strategy,
)

DEFAULT_OUT = Path(__file__).parent / "results" / "bench_models.json"


def strategies_of(name: str) -> tuple[str, ...]:
    """The seed's: frozen and fine-tuned for pretrained backbones, full for the scratch CNN."""
    return tuple(s for s in ("frozen", "finetune") if s in list_strategies(name)) or ("full",)


def timed(step, warmup: int, iters: int, budget: float) -> tuple[float, int]:
    """(seconds per call, calls timed): ``warmup`` untimed calls, then timed ones until
    ``iters`` or until ``budget`` seconds have passed (at least one), so VGG-16 at 224 px
    does not dominate the run while fast models still get several samples."""
    for _ in range(warmup):
        step()
    start, count = time.perf_counter(), 0
    while count < iters and (count == 0 or time.perf_counter() - start < budget):
        step()
        count += 1
    return (time.perf_counter() - start) / count, count


def train_step(model, optimizer, x, y, autocast, sync) -> None:
    with autocast():
        logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync()


def bench(name: str, size: int, args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if args.channels_last or cuda else torch.contiguous_format
    autocast = (
        partial(torch.autocast, "cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if cuda else lambda: None
    batch = args.batch
    model = create_model(name, weights="none", head="paper", image_size=size)
    model = model.to(device, memory_format=fmt)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x = x.to(device).contiguous(memory_format=fmt)
    y = (torch.arange(batch, device=device) % 2).float()

    model.eval()

    def infer():
        with torch.inference_mode(), autocast():
            model(x)
        sync()

    seconds, infer_iters = timed(infer, args.warmup, args.iters, args.budget)
    rows = []
    for strategy in strategies_of(name):
        plan = resolve_strategy(model, strategy)
        apply_strategy(model, plan)
        optimizer = torch.optim.Adam(plan.param_groups(model, lr=1e-3, backbone_lr_factor=0.1))
        model.train()
        step = partial(train_step, model, optimizer, x, y, autocast, sync)
        train_seconds, train_iters = timed(step, args.warmup, args.iters, args.budget)
        rows.append(
            {
                "model": name,
                "strategy": strategy,
                "image_size": size,
                "batch_size": batch,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "train_images_per_s": batch / train_seconds,
                "train_seconds_per_step": train_seconds,
                "train_iters": train_iters,
                "infer_images_per_s": batch / seconds,
                "infer_seconds_per_batch": seconds,
                "infer_iters": infer_iters,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model        | strategy | px  |  trainable | train img/s | infer img/s |",
        "|--------------|----------|-----|------------|-------------|-------------|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']:<12} | {r['strategy']:<8} | {r['image_size']:>3} | "
            f"{r['trainable_params'] / 1e6:>9.2f}M | {r['train_images_per_s']:>11.1f} | "
            f"{r['infer_images_per_s']:>11.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 128])
    parser.add_argument("--batch", type=int, default=18)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="most timed calls per measurement")
    parser.add_argument(
        "--budget", type=float, default=2.0, help="seconds after which timing stops (>= 1 call)"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="NHWC model and inputs (CPU: oneDNN likes it)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    rows = []
    for size in args.sizes:
        for name in args.models:
            for row in bench(name, size, args):
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    result = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if "cuda" in args.device else None,
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        },
        "warmup": args.warmup,
        "iters": args.iters,
        "budget": args.budget,
        "channels_last": args.channels_last,
        "seconds": time.perf_counter() - started,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(rows)} measurements in {result['seconds']:.0f} s, written to {args.out}")


if __name__ == "__main__":
    main()
