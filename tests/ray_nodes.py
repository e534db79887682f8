"""A real multi-node Ray cluster on 127.0.0.1: a head that only schedules and worker nodes, each
a separate `ray start --block` in its own process group and temporary folder, so one node can be
killed alone (`ray stop` would stop every Ray on the machine, other people's included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from support import free_port, port_open, wait_until_up

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE = str(100 * 1024**2)  # Ray's minimum is 75 MiB; the default takes 30% of memory


@dataclass
class Node:
    process: subprocess.Popen
    temp_dir: str
    log: Path

    def kill(self) -> None:
        """The node dies as a lost machine does: every process of it at once, no goodbye (its
        Ray workers included, which the raylet starts in sessions of their own)."""
        _kill(descendants(self.process.pid))


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc (taken before any dies: orphans are
    handed to init and lost to the walk)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    address: str  # GCS: what nodes and in-cluster drivers use
    dashboard: str  # the Jobs and state APIs
    head: Node
    workers: list[Node] = field(default_factory=list)

    def worker(self, resources: list[str]) -> Node:
        """The worker node holding the marker resource among a node's ``resources``."""
        return next(self.workers[i] for i in range(len(self.workers)) if marker(i) in resources)


def marker(i: int) -> str:
    """A custom resource only worker ``i`` has: the state API's node records name it."""
    return f"braintl-worker-{i}"


def with_group(process: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _start(args: list[str], env: dict, log: Path) -> Node:
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    with log.open("w") as out:
        process = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"]
            + [f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Node(process, temp_dir, log)


def _alive(cluster: Cluster, count: int, env: dict) -> bool:
    """``count`` nodes are alive by the state API (read in a child carrying the token)."""
    code = (
        "import sys; from ray.util.state import list_nodes\n"
        "print(sum(n.state == 'ALIVE' for n in list_nodes(address=sys.argv[1])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, cluster.dashboard], env=env, capture_output=True, text=True
    )
    return done.returncode == 0 and int(done.stdout.split()[-1]) >= count


def stop(node: Node) -> None:
    processes = descendants(node.process.pid)
    with_group(node.process, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        node.process.wait(timeout=30)
    _kill(processes)  # what the node's `ray start` left behind
    node.process.wait()
    shutil.rmtree(node.temp_dir, ignore_errors=True)


def _start_worker(cluster: Cluster, i: int, args: list[str], env: dict, logs: Path) -> None:
    """Worker ``i`` added to ``cluster.workers`` (stopped with the cluster) and alive. One at a
    time, and started again once if the first start fails: Ray gives a raylet a fixed 30 s to
    register with the GCS, which two nodes starting at once on a loaded 2-core machine can miss
    ("The current node timed out during startup")."""

    def start(log: str) -> None:
        cluster.workers.append(node := _start(args, env, logs / log))
        alive = lambda: _alive(cluster, 2 + i, env)  # noqa: E731
        wait_until_up(f"Ray worker {i}", alive, node.process, node.log, 180)

    try:
        start(f"worker-{i}.log")
    except RuntimeError:
        stop(cluster.workers.pop())
        start(f"worker-{i}-again.log")


@contextmanager
def ray_cluster(logs: Path, env: dict, workers: list[list[str]]):
    """A head (no CPUs, no GPUs: it only schedules and runs job drivers) and one worker node per
    entry of ``workers`` (its `ray start` resource flags); ``env`` (token, AWS_*, PATH with
    this Python first) is every node's environment. Every node stopped on exit."""
    port, dashboard = free_port(), free_port()
    head = _start(
        ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0"]
        + ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
        + [f"--dashboard-agent-listen-port={free_port()}"],
        # On SIGTERM a node drains first (for Ray Serve's proxies, which these tests do not
        # run); the head never finishes and would sit out the whole 30 s default.
        {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        logs / "head.log",
    )
    cluster = Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", head)
    try:
        wait_until_up("Ray head", lambda: port_open(dashboard), head.process, head.log, 180)
        for i, resources in enumerate(workers):
            args = [f"--address={cluster.address}", *resources, f'--resources={{"{marker(i)}": 1}}']
            # Each node's own dashboard agent port: nodes sharing a host would collide on the
            # default, and a job's logs are read from the agent of its driver's node.
            args.append(f"--dashboard-agent-listen-port={free_port()}")
            _start_worker(cluster, i, args, env, logs)
        yield cluster
    finally:
        for node in [*cluster.workers, head]:
            stop(node)
