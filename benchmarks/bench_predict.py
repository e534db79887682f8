"""`braintl predict`'s cost with a fold ensemble against one member, on the CPU.

Scores every image of a folder with :func:`braintl.predict.predict` (read, decode, preprocess,
the network) through a package of k members and through one, for each backbone at its profile's
image size. Weights are random (none can be downloaded here): the cost does not depend on them.
Each setting is scored once to warm up, then timed ``--repeats`` times; the best time counts.
Wall time and this process's CPU time are both kept: on a shared machine the wall time mostly
measures the neighbours, the CPU time (torch on ``--threads`` threads) what scoring costs.

    python benchmarks/bench_predict.py --data ../shared/data/brain_mri  # predict_ensemble.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from braintl.data.decode import DecodeLimits
from braintl.data.preprocess import PreprocessConfig
from braintl.models import create_model
from braintl.predict import find_images, predict
from braintl.publish import PublishedModel

# (backbone, image size, members): the quick profile's scratch CNN (3 folds, one tunes: 2
# members) and the paper profile's 224 px backbones (5 folds: 4 members).
SETTINGS = [("scratch_cnn", 64, 2), ("mobilenet_v2", 224, 4), ("resnet50", 224, 4)]


def package(backbone: str, size: int, members: int) -> PublishedModel:
    models = tuple(create_model(backbone, image_size=size).eval() for _ in range(members))
    info = {
        "threshold": 0.5,
        "preprocess": PreprocessConfig(image_size=size).model_dump(),
        "decode": vars(DecodeLimits()),
    }
    return PublishedModel(f"memory://{backbone}-{members}", models, info)


def best_seconds(published: PublishedModel, urls: list[str], repeats: int) -> tuple[float, float]:
    """The best (wall, CPU) seconds of scoring ``urls``."""
    predict(published, urls[:32])  # warm-up: first calls allocate
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        predict(published, urls)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a folder of scans (searched recursively)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=[b for b, _, _ in SETTINGS])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=str(Path(__file__).with_name("predict_ensemble.json")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    urls = find_images([args.data])
    rows = []
    for backbone, size, members in SETTINGS:
        if backbone not in args.backbones:
            continue
        one = best_seconds(package(backbone, size, 1), urls, args.repeats)
        many = best_seconds(package(backbone, size, members), urls, args.repeats)
        row = {"backbone": backbone, "image_size": size, "members": members, "images": len(urls)}
        for clock, i in (("wall", 0), ("cpu", 1)):
            row |= {
                f"{clock}_seconds_one_member": round(one[i], 2),
                f"{clock}_seconds_ensemble": round(many[i], 2),
                f"{clock}_ms_per_image_one_member": round(1000 * one[i] / len(urls), 1),
                f"{clock}_ms_per_image_ensemble": round(1000 * many[i] / len(urls), 1),
                f"{clock}_ratio": round(many[i] / one[i], 2),
            }
        print(json.dumps(row))
        rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "torch": torch.__version__,
        "data": args.data,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
