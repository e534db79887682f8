"""Load what a run wrote (config, sweep, results, run info, champion decision, per-image test
predictions) and find its sibling runs under the other protocol, for the report."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from braintl.data.tensors import TensorSet
from braintl.ensemble import ensemble_threshold, test_predictions
from braintl.errors import UserError
from braintl.storage import COMPLETE_MARKER, Location, resolve
from braintl.urls import within

# Parameters that may differ between two runs the leakage audit compares: the protocol itself,
# and what only changes where or whether a run happens.
AUDIT_IGNORES = {"protocol", "force", "ray_address", "cpus_per_fold", "gpus_per_fold"}


@dataclass(frozen=True)
class Run:
    """One run's documents, as written by the retrain flow."""

    loc: Location
    config: dict
    sweep: dict
    results: dict
    info: dict
    completed: dict | None
    challenge: dict | None  # the champion decision, made after the report is first rendered

    @property
    def run_id(self) -> str:
        return self.config["run_id"]

    @property
    def params(self) -> dict:
        return self.config["params"]

    @property
    def tensors_url(self) -> str:
        return self.config["data"]["tensors_url"]


@dataclass(frozen=True)
class FoldPredictions:
    """One model's k fold models on the held-out test set: ``probs`` k×N, one threshold each,
    and ``threshold``, the fold ensemble's (out-of-fold, see :mod:`braintl.ensemble`); per image
    its index into the TensorSet, label and source group."""

    index: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    probs: np.ndarray
    thresholds: np.ndarray
    threshold: float
    folds: list[int]

    @property
    def mean_prob(self) -> np.ndarray:
        """The fold ensemble's tumor probability per image: the k fold models' mean."""
        return self.probs.mean(axis=0)


def _read(loc: Location, name: str, required: bool = True) -> dict | None:
    target = loc.join(name)
    if not target.exists():
        if not required:
            return None
        raise UserError(
            f"{target.url} not found: {loc.url} is not a finished retrain run (it needs "
            "config.json, results.json and run.json). Pass a run folder, OUT_URL/runs/<run_id>."
        )
    return target.read_json()


def load_run(run_url: str) -> Run:
    """The documents of the run at ``run_url`` (``OUT_URL/runs/<run_id>``); the URLs they
    name (tensors, fold metrics) must lie in that output root (see :func:`within`)."""
    loc = resolve(run_url)
    run = Run(
        loc=loc,
        config=_read(loc, "config.json"),
        sweep=_read(loc, "sweep.json", required=False) or {},
        results=_read(loc, "results.json"),
        info=_read(loc, "run.json"),
        completed=_read(loc, COMPLETE_MARKER, required=False),
        challenge=_read(loc, "challenge.json", required=False),
    )
    root = loc.parent.parent.url
    within(run.tensors_url, root, loc.join("config.json").url)
    for model in run.results["models"]:
        for fold in model["runs"]:
            within(fold["metrics_url"], root, loc.join("results.json").url)
    return run


def fold_predictions(
    results: dict, labels: np.ndarray, groups: np.ndarray
) -> dict[str, FoldPredictions]:
    """Per model, its fold models' test probabilities (read from each fold's metrics.json).

    ``labels`` and ``groups`` are the TensorSet's; a record's own ``group`` ids win where it
    has them (records written before groups were stored have none).
    """
    out = {}
    for model in results["models"]:
        evaluated = [
            resolve(fold["metrics_url"]).read_json()["evaluation"]["predictions"]
            for fold in model["runs"]
        ]
        try:
            index, test_groups, probs = test_predictions(evaluated, groups)
        except ValueError as exc:
            raise ValueError(f"{model['model']}: {exc}") from None
        out[model["model"]] = FoldPredictions(
            index=index,
            y=labels[index],
            groups=test_groups,
            probs=probs,
            thresholds=np.asarray([fold["threshold"] for fold in model["runs"]], dtype=np.float64),
            threshold=ensemble_threshold(labels, evaluated),
            folds=[fold["fold"] for fold in model["runs"]],
        )
    return out


def load_tensors(run: Run) -> TensorSet:
    return TensorSet.load(run.tensors_url)


def sibling_runs(run: Run) -> list[Run]:
    """The newest complete run per other protocol under the same ``OUT_URL/runs/`` whose
    parameters and data fingerprint equal this run's but for the protocol."""
    runs_dir = resolve(run.loc.url.rstrip("/").rsplit("/", 1)[0])
    mine = _comparable(run.config)
    newest: dict[str, Run] = {}
    for path in sorted(runs_dir.fs.ls(runs_dir.path, detail=False)):
        loc = runs_dir.join(path.rstrip("/").rsplit("/", 1)[-1])
        if loc.path == run.loc.path or not loc.is_complete():
            continue
        config = _read(loc, "config.json", required=False)
        if not config or _comparable(config) != mine:
            continue
        protocol = config["params"]["protocol"]
        if protocol != run.params["protocol"]:
            newest[protocol] = load_run(loc.url)  # sorted by run id, which starts with its time
    return list(newest.values())


def _comparable(config: dict) -> tuple:
    params = {k: v for k, v in config["params"].items() if k not in AUDIT_IGNORES}
    return (config["data"].get("fingerprint"), sorted(params.items(), key=lambda kv: kv[0]))
