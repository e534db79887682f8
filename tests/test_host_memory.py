"""After ``train()``, a training process reuses freed large blocks instead of mapping fresh
pages for each: counted as the page faults of allocating and filling a 64 MB tensor (the size
of MobileNetV2's 224 px head gradient) eight times after two warm-up rounds, in a fresh process
each way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PAGE = os.sysconf("SC_PAGE_SIZE")
BLOCK_MB, TIMES = 64, 8

SCRIPT = f"""
import json, resource
import numpy as np
import torch
from braintl.data.tensors import Split, TensorSet
from braintl.training import TrainConfig, train

n = 12
images = np.random.default_rng(0).integers(0, 255, (n, 3, 32, 32), dtype=np.uint8)
split = Split("groups", np.arange(8, n), (np.arange(4, 8),), False)
tensors = TensorSet(images=images, labels=np.arange(n) % 2, groups=np.arange(n),
                    augmented=np.zeros(n, bool), split=split, meta={{"image_size": 32}})
config = TrainConfig(backbone="scratch_cnn", strategy="full", epochs=1, batch_size=4)
train(tensors, np.arange(4), np.arange(4, 8), config)
for round in range(2 + {TIMES}):
    if round == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty({BLOCK_MB} << 20, dtype=torch.uint8)
    block.fill_(1)
    del block
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(**env) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_training_reuses_freed_memory_and_can_opt_out():
    pages = (BLOCK_MB << 20) // PAGE
    tuned = _faults()
    default = _faults(BRAINTL_HOST_MALLOC="default")
    assert tuned < pages // 4, f"{tuned} page faults: freed blocks were not reused"
    assert default > (TIMES - 1) * pages, f"opted out, yet only {default} page faults"
