"""The library runs on a bare GPU machine: without Prefect, Ray or s3fs installed, it imports,
prepares data, trains and scores a model (the orchestration layers are the only users of those)."""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
import textwrap
import tomllib

from support import REPO, run_python

BLOCKED = ("prefect", "ray", "s3fs")
PYPROJECT = REPO / "pyproject.toml"

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
    proc = run_python(["-c", SCRIPT, str(tmp_path)], cwd=tmp_path, timeout=120)
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


PACKAGES = ("braintl", "flows", "tasks")
CLI = ("braintl.cli", "braintl.commands")
# Who may not import whom: the design's layers (docs/design.md), the CLI on top.
FORBIDDEN = {
    "braintl": CLI + ("flows", "tasks"),
    "tasks": CLI + ("flows",),
    "flows": CLI,
}


@functools.cache
def _modules() -> dict[str, ast.Module]:
    """Every module of the three packages by dotted name, parsed (once per session)."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.with_suffix("").relative_to(REPO).parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = ast.parse(path.read_text())
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its text (inside functions and
    ``if TYPE_CHECKING`` too: a lazy import hides a cycle, it does not remove it).
    ``from package import name`` counts as importing ``package.name`` when that is a module."""
    modules = _modules()
    graph = {}
    for name, tree in modules.items():
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    imported.add(sub if sub in modules else node.module)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "braintl.training.features" in graph["braintl.training.evaluate"]  # the scan works
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]  # and so does the check
    assert cycles(graph) == []


def test_layers_import_only_those_below():
    """The library imports no CLI, flow or task; tasks no flow; neither the CLI (a task that
    needs a CLI helper means the helper belongs in the library)."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if not module.startswith(CLI)
        for target in targets
        for layer, forbidden in FORBIDDEN.items()
        if module.split(".")[0] == layer and target.startswith(forbidden)
    ]
    assert wrong == []


# Imported but deliberately not declared: botocore comes with s3fs[boto3] and is imported only
# to recognise its connection errors, inside ``except ImportError``.
UNDECLARED = {"botocore"}
# Import names that are not their distribution's name (the rest are, "_" read as "-").
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def _distribution_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_package_the_code_imports_is_declared():
    """pyproject's dependencies name every package that braintl, flows and tasks import, so a
    fresh install has them all (not by luck, because another package pulls them in)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = {_distribution_name(r) for r in project["dependencies"]}
    imported = set()
    for tree in _modules().values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - set(PACKAGES) - UNDECLARED
    assert {"torch", "prefect", "PIL"} <= third_party  # the scan sees imports
    missing = sorted(
        name
        for name in third_party
        if _distribution_name(DISTRIBUTION.get(name, name)) not in declared
    )
    assert missing == [], f"imported but not in pyproject.toml's dependencies: {missing}"
