"""The library runs on a bare GPU machine: without Prefect, Ray or s3fs installed, it imports,
prepares data, trains and scores a model (the orchestration layers are the only users of those)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("prefect", "ray", "s3fs")

# Runs in a fresh interpreter whose import system refuses the orchestration packages, as if
# they were not installed.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NotInstalled())

    import braintl.data, braintl.metrics, braintl.models, braintl.storage, braintl.training
    import braintl.folds
    from braintl.data.phantoms import write_phantom_dataset
    from braintl.data.prepare import DataConfig, prepare
    from braintl.folds import train_fold
    from braintl.storage import StorageError, resolve

    root = sys.argv[1]
    data = write_phantom_dataset(root + "/data", {{"yes": 10, "no": 10}}, size=48)
    config = DataConfig(preprocess={{"image_size": 32}}, augment={{"enabled": False}}, folds=2)
    tensors_url = prepare(data, root + "/out", config).tensors_url
    tiny = {{"epochs": 1, "batch_size": 4, "num_threads": 1}}
    record = train_fold(tensors_url, tiny, 0, root + "/fold")
    try:
        resolve("s3://bucket/key")
        s3 = "resolved"
    except StorageError as exc:
        s3 = str(exc)
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
    print(json.dumps({{"auc": record["val"]["auc"], "s3": s3, "loaded": loaded}}))
    """
).format(blocked=BLOCKED)


def test_library_trains_without_prefect_ray_or_s3fs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert 0 <= result["auc"] <= 1
    assert (tmp_path / "fold" / "model.pt").is_file()
    # s3:// without s3fs: a clear error naming the missing package and the fix.
    assert "pip install s3fs" in result["s3"] and "s3://bucket/key" in result["s3"]


def test_blocking_works():
    """The guard itself: a blocked package cannot be imported in that interpreter."""
    script = SCRIPT.split("import braintl.data")[0] + "import ray\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr
