"""GPU check: train-step throughput per backbone, then the seed's full protocol end to end.

Needs only torch, torchvision, timm, scikit-learn, pillow, numpy, pydantic and the library (no
Prefect, Ray or s3fs), so it runs on a bare GPU machine from a checkout:

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --data ../shared/data/brain_mri
    bash benchmarks/gpu_check.sh                      # installs pydantic from .whl/ if missing
    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --tiny --data DIR   # logic check on a CPU

1. Throughput: train-step images/s of every backbone at 224 px (batch 18; ``finetune``, the
   scratch CNN ``full``), fp32 NCHW eager against bf16 autocast + channels_last.
2. Protocol: the real scans prepared as the seed did (its leaky ``paper`` split, offline
   augmentation, 224 px), then all five families × {frozen, finetune} (scratch CNN: full) ×
   5 folds × 18 epochs (Adam, lr 1e-3, batch 18), each fold scored on validation and the held-out
   test part. Folds run in ``--workers`` processes sharing the GPU (as fractional Ray GPUs
   would); GPU utilisation is sampled with nvidia-smi meanwhile.

ImageNet weights cannot be downloaded on an air-gapped machine: a pretrained backbone starts
from ``--weights-dir/<backbone>.pt`` (a state dict of its backbone) when that file exists, else
from random weights (``none``), and the output says which. Writes ``gpu_check.json`` and
``gpu_check.md`` to ``--out`` (default ``$OUT``, else benchmarks/results/gpu_check/); the JSON is
rewritten after every fold, so an interrupted check keeps what it measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_models, next to this file

from bench_models import timed, train_step  # noqa: E402

from braintl.data.prepare import DataConfig, prepare  # noqa: E402
from braintl.data.tensors import TensorSet  # noqa: E402
from braintl.models import apply_strategy, create_model, resolve_strategy  # noqa: E402
from braintl.training import TrainConfig, evaluate_split, resolve_device, train  # noqa: E402

FAMILIES = ("mobilenet_v2", "vgg16", "resnet50", "xception", "scratch_cnn")
# Heaviest first, so the last folds to finish are short ones and the GPU stays busy.
COST_ORDER = ("vgg16", "xception", "resnet50", "mobilenet_v2", "scratch_cnn")
MODES = ("fp32_nchw", "bf16_channels_last")
DATA_CANDIDATES = ("../shared/data/brain_mri", "shared/data/brain_mri")
SCORES = ("auc", "accuracy", "precision", "recall", "f1")


def pairs() -> list[tuple[str, str]]:
    out = [(b, s) for b in FAMILIES if b != "scratch_cnn" for s in ("frozen", "finetune")]
    return out + [("scratch_cnn", "full")]


def default_data() -> str | None:
    env = os.environ.get("BRAINTL_DATA_DIR")
    candidates = ([f"{env}/brain_mri"] if env else []) + list(DATA_CANDIDATES)
    return next((c for c in candidates if Path(c, "yes").is_dir()), None)


def choose_weights(weights_dir: Path | None) -> dict:
    """Per backbone: a state-dict file from ``weights_dir`` when present, else ``none``."""
    chosen = {}
    for name in FAMILIES:
        path = weights_dir / f"{name}.pt" if weights_dir else None
        pretrained = name != "scratch_cnn"
        chosen[name] = str(path) if pretrained and path and path.is_file() else "none"
    files = [n for n, w in chosen.items() if w != "none"]
    if not files:
        note = (
            "no ImageNet weights on this machine (and no --weights-dir files): every backbone "
            "starts from random weights (weights='none'); speed is representative, the seed's "
            "accuracies are not"
        )
    else:
        note = f"weights from {weights_dir} for {', '.join(files)}; the rest start random"
    return {"used": "files" if files else "none", "per_backbone": chosen, "note": note}


# --- 1. throughput ------------------------------------------------------------------------


def throughput(
    device: torch.device, size: int, warmup: int, iters: int, budget: float
) -> list[dict]:
    """Train-step images/s of every backbone in each mode (random weights: speed only). One
    model per backbone, converted between the modes: the weights do not change the speed."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    y = (torch.arange(18, device=device) % 2).float()
    rows = []
    for name in FAMILIES:
        strategy = "full" if name == "scratch_cnn" else "finetune"
        torch.manual_seed(0)
        model = create_model(name, weights="none", image_size=size).to(device)
        plan = resolve_strategy(model, strategy)
        apply_strategy(model, plan)
        model.train()
        for mode in MODES:
            fast = mode == "bf16_channels_last"
            fmt = torch.channels_last if fast else torch.contiguous_format
            bf16 = fast and cuda and torch.cuda.is_bf16_supported()
            autocast = (
                partial(torch.autocast, "cuda", dtype=torch.bfloat16)
                if bf16
                else contextlib.nullcontext
            )
            model.to(memory_format=fmt)
            optimizer = torch.optim.Adam(plan.param_groups(model, 1e-3, 0.1))  # state in fmt too
            x = torch.randint(0, 256, (18, 3, size, size), dtype=torch.uint8)
            x = x.to(device).contiguous(memory_format=fmt)
            step = partial(train_step, model, optimizer, x, y, autocast, sync)
            seconds, count = timed(step, warmup, iters, budget)
            rows.append(
                {
                    "model": name,
                    "strategy": strategy,
                    "mode": mode,
                    "autocast": "bf16" if bf16 else "none",
                    "image_size": size,
                    "batch_size": 18,
                    "images_per_s": 18 / seconds,
                    "steps_timed": count,
                }
            )
            print(f"throughput {name:<12} {mode:<18} {18 / seconds:>9.1f} img/s", flush=True)
        del model, optimizer
    return rows


# --- 2. the protocol ----------------------------------------------------------------------


def subset(data: Path, per_label: int, root: Path) -> Path:
    """The first ``per_label`` images of each label folder, copied (the --tiny data set)."""
    for label in sorted(p for p in data.iterdir() if p.is_dir()):
        target = root / label.name
        target.mkdir(parents=True)
        for path in sorted(f for f in label.iterdir() if f.is_file())[:per_label]:
            shutil.copy(path, target / path.name)
    return root


def run_fold(tensors_url: str, config: dict, fold: int) -> dict:
    """Train and score one fold (in a worker process); returns a small record."""
    started = time.perf_counter()
    tensors = TensorSet.load(tensors_url)
    train_idx, val_idx = tensors.fold(fold)
    result = train(tensors, train_idx, val_idx, TrainConfig(**config))
    scores = evaluate_split(result.model, tensors, val_idx).to_dict()
    epochs = len(result.history)
    return {
        "backbone": config["backbone"],
        "strategy": config["strategy"],
        "weights": config["weights"],
        "fold": fold,
        "device": result.device,
        "seconds": time.perf_counter() - started,
        "train_seconds": result.seconds,
        "train_images_per_s": len(train_idx) * epochs / result.seconds,
        "compile_seconds": result.compile_seconds,
        "best_epoch": result.best_epoch,
        "val": {k: scores["val"]["at_youden"][k] for k in SCORES},
        "test": {k: scores["test"]["at_youden"][k] for k in SCORES} if scores["test"] else None,
    }


def run_all(tensors_url: str, jobs: list[tuple[dict, int]], workers: int) -> Iterator[dict]:
    """Each job's record as it finishes: in ``workers`` processes, or here when 1."""
    if workers == 1:
        yield from (run_fold(tensors_url, config, fold) for config, fold in jobs)
        return
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with cf.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        futures = [pool.submit(run_fold, tensors_url, config, fold) for config, fold in jobs]
        yield from (future.result() for future in cf.as_completed(futures))


class GpuSampler:
    """nvidia-smi sampling GPU utilisation and memory in the background (none without it)."""

    def __init__(self, path: Path, interval_ms: int = 500):
        self.path, self.proc = path, None
        exe = shutil.which("nvidia-smi")
        if exe:
            query = "--query-gpu=utilization.gpu,memory.used"
            cmd = [exe, query, "--format=csv,noheader,nounits", f"-lms={interval_ms}"]
            self.out = open(path, "w")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.DEVNULL)

    def stop(self) -> dict:
        if self.proc is None:
            return {"samples": 0, "note": "nvidia-smi not found: utilisation not sampled"}
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.out.close()
        rows = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append([float(v) for v in line.split(",")[:2]])
        util = [r[0] for r in rows]
        return {
            "samples": len(rows),
            "mean_percent": statistics.fmean(util) if util else None,
            "median_percent": statistics.median(util) if util else None,
            "busy_share": sum(u > 0 for u in util) / len(util) if util else None,
            "max_memory_mib": max((r[1] for r in rows), default=None),
        }


def protocol(args: argparse.Namespace, weights: dict, work: Path, report: dict, out: Path):
    """Prepare the data, then every (family, strategy, fold) in a pool of worker processes."""
    started = time.perf_counter()
    sampler = GpuSampler(work / "nvidia-smi.csv")
    data = Path(args.data)
    if args.tiny:
        data = subset(data, 4, work / "subset")
    config = DataConfig(
        protocol="paper",
        folds=args.folds,
        preprocess={"image_size": args.image_size},
        augment={"enabled": True},
    )
    prepared = prepare(str(data), str(work / "out"), config)
    prepare_seconds = time.perf_counter() - started
    tensors = TensorSet.load(prepared.tensors_url)
    print(f"prepared {len(tensors)} images in {prepare_seconds:.1f} s", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    jobs = [
        (
            {
                "backbone": b,
                "strategy": s,
                "weights": weights["per_backbone"][b],
                "epochs": args.epochs,
                "batch_size": 18,
                "lr": 1e-3,
                "seed": 0,
                "num_threads": threads,
                "compile": args.compile,
            },
            k,
        )
        for b, s in pairs()
        for k in range(args.folds)
    ]
    jobs.sort(key=lambda job: (COST_ORDER.index(job[0]["backbone"]), job[0]["strategy"]))
    section = report["protocol"] = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "folds": args.folds,
        "batch_size": 18,
        "images": len(tensors),
        "workers": args.workers,
        "prepare_seconds": prepare_seconds,
        "runs": [],
    }
    for run in run_all(prepared.tensors_url, jobs, args.workers):
        section["runs"].append(run)
        section["wall_seconds"] = time.perf_counter() - started
        write(report, out)
        print(
            f"[{section['wall_seconds']:6.0f} s] {run['backbone']}/{run['strategy']} "
            f"fold {run['fold']}: {run['train_seconds']:.1f} s, "
            f"test AUC {(run['test'] or {}).get('auc')}",
            flush=True,
        )
    section["runs"].sort(key=lambda r: (r["backbone"], r["strategy"], r["fold"]))
    section["wall_seconds"] = time.perf_counter() - started
    section["gpu_utilisation"] = sampler.stop()


# --- output -------------------------------------------------------------------------------


def _mean_sd(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * 100:.1f} ± {sd * 100:.1f}"


def markdown(report: dict) -> str:
    lines = [f"# GPU check on {report['device_name']}", "", report["weights"]["note"], ""]
    lines += ["| model | mode | autocast | img/s |", "|---|---|---|---|"]
    lines += [
        f"| {r['model']} | {r['mode']} | {r['autocast']} | {r['images_per_s']:.0f} |"
        for r in report.get("throughput", [])
    ]
    section = report.get("protocol")
    if section:
        util = section.get("gpu_utilisation") or {}
        mean_util = util.get("mean_percent")
        lines += [
            "",
            f"Protocol: {section['images']} images at {section['image_size']} px, "
            f"{section['epochs']} epochs, {section['folds']} folds, {section['workers']} workers; "
            f"wall {section.get('wall_seconds', 0):.0f} s "
            f"(prepare {section['prepare_seconds']:.0f} s); GPU utilisation "
            + (f"{mean_util:.0f}% mean" if mean_util is not None else "not sampled"),
            "",
            "| model | folds | train s (sum) | val AUC % | test AUC % | test acc % |",
            "|---|---|---|---|---|---|",
        ]
        by_pair: dict[str, list[dict]] = {}
        for run in section["runs"]:
            by_pair.setdefault(f"{run['backbone']}/{run['strategy']}", []).append(run)
        for name, runs in sorted(by_pair.items()):
            tests = [r["test"] or {} for r in runs]
            lines.append(
                f"| {name} | {len(runs)} | {sum(r['train_seconds'] for r in runs):.0f} | "
                f"{_mean_sd([r['val']['auc'] for r in runs])} | "
                f"{_mean_sd([t.get('auc') for t in tests])} | "
                f"{_mean_sd([t.get('accuracy') for t in tests])} |"
            )
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data(), help="labelled scans (yes/, no/)")
    default_out = os.environ.get("OUT") or Path(__file__).parent / "results" / "gpu_check"
    parser.add_argument("--out", type=Path, default=Path(default_out))
    parser.add_argument("--tiny", action="store_true", help="32 px, 1 epoch, 2 folds, 8 scans")
    parser.add_argument("--epochs", type=int, help="default 18 (tiny: 1)")
    parser.add_argument("--folds", type=int, help="default 5 (tiny: 2)")
    parser.add_argument("--image-size", type=int, help="default 224 (tiny: 32)")
    parser.add_argument(
        "--workers", type=int, default=4, help="fold processes sharing the GPU (1: in this process)"
    )
    parser.add_argument("--weights-dir", type=Path, help="<backbone>.pt backbone state dicts")
    parser.add_argument("--compile", action="store_true", help="torch.compile every training")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    if not args.data or not Path(args.data, "yes").is_dir():
        parser.error(f"--data {args.data!r}: not a folder with yes/ and no/; pass the real scans")
    tiny = {"epochs": 1, "folds": 2, "image_size": 32}
    full = {"epochs": 18, "folds": 5, "image_size": 224}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    device = resolve_device("auto")
    report: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "tiny": args.tiny,
        "compile": args.compile,
        "weights": choose_weights(args.weights_dir),
    }
    print(report["weights"]["note"], flush=True)
    if not args.skip_throughput:
        warmup, iters, budget = (1, 1, 0.0) if args.tiny else (3, 30, 3.0)
        report["throughput"] = throughput(device, args.image_size, warmup, iters, budget)
        write(report, args.out)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        protocol(args, report["weights"], Path(work), report, args.out)
    report["total_seconds"] = time.perf_counter() - started
    write(report, args.out)
    print("\n" + markdown(report))
    print(f"total {report['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
