"""The retrain flow's parameters: one pydantic model, the Prefect UI's form and ``braintl run``'s
``--params``, validated before any work. Kept apart from the flow so that whoever only builds or
checks parameters (the CLI, the deployments, the tests) reads one module that says what a run is.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from braintl import cluster, replica
from braintl.champion import ChampionRule
from braintl.codeversion import code_key
from braintl.data.clinical import ClinicalConfig
from braintl.data.prepare import DataConfig
from braintl.data.provenance import GroupBy
from braintl.errors import UserError
from braintl.limits import gpu_request_problem, local_gpus
from braintl.models import STRATEGIES as MODEL_STRATEGIES
from braintl.models import list_models
from braintl.models.registry import get_entry
from braintl.results import TUNING_FOLD, cv_plan
from braintl.timeouts import Timeouts
from braintl.tuning import SweepConfig
from braintl.urls import credentials_problem, inside_problem, is_inside

BACKBONES = ("mobilenet_v2", "vgg16", "resnet50", "xception", "scratch_cnn")
STRATEGIES = ("frozen", "finetune")
SCRATCH = "scratch_cnn"

# Settings each profile presets; any field given explicitly wins (merged before validation).
# quick is the smoke test (plumbing, not models); cpu is the one chosen by
# benchmarks/cpu_study.py for a whole run in 30 minutes on 2 cores (docs/cpu-profile.md);
# paper trains the seed's own settings (braintl.replica) unless sweep settings are given.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "weights": "none",
        "image_size": 64,
        "crop": False,
        "epochs": 3,
        "batch_size": 16,
        "folds": 3,
        "augment": False,
        "tuning": "sweep",
        "cpus_per_fold": 1.0,
        "gpus_per_fold": 0.0,
        "sweep": {"num_samples": 1, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    },
    "cpu": {
        "weights": "imagenet",
        "image_size": 96,
        "crop": False,
        "epochs": 8,
        "batch_size": 16,
        "folds": 3,
        "augment": True,
        "tuning": "sweep",
        "cpus_per_fold": 1.0,
        "gpus_per_fold": 0.0,
        "sweep": {"num_samples": 1, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    },
    "paper": {
        "weights": "imagenet",
        "image_size": 224,
        "crop": False,
        "epochs": 18,
        "batch_size": 18,
        "folds": 5,
        "augment": True,
        "tuning": "seed",
        "cpus_per_fold": 2.0,
        "gpus_per_fold": 0.25,
        "sweep": {"cpus_per_trial": 2.0, "gpus_per_trial": 0.25},
    },
}
# Fields that change where or whether a run happens, not what it computes.
NOT_IN_RUN_KEY = {
    "data_url",
    "out_url",
    "ray_address",
    "force",
    "cpus_per_fold",
    "gpus_per_fold",
    "champion",
    "timeouts",
}


class RetrainParams(BaseModel):
    """Everything a retrain run needs; the Prefect UI renders it as the run form."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["quick", "cpu", "paper"] = Field(
        "quick",
        description="presets: quick (a smoke test of the plumbing, minutes; its models are not "
        "meant for use), cpu (the best models a 2-core machine trains in 30 minutes) or paper "
        "(the seed's, on GPUs)",
    )
    data_url: str | None = Field(None, description="labelled scans; None: synthetic phantoms")
    out_url: str = Field("braintl-runs", description="runs, caches and latest.json go here")
    protocol: Literal["groups", "paper"] = Field(
        "groups", description="groups: leak-free split; paper: the seed's (leaky) protocol"
    )
    backbones: list[str] = Field(default_factory=lambda: list(BACKBONES))
    strategies: list[str] = Field(
        default_factory=lambda: list(STRATEGIES), description="scratch_cnn always trains full"
    )
    weights: str = Field(
        "none",
        description="imagenet, none, previous (the last run's published model), a published "
        "model URL, or a state-dict URL",
    )
    image_size: int = Field(64, ge=16)
    crop: bool = Field(False, description="crop each scan to the brain before resizing")
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=2)
    folds: int = Field(3, ge=2, le=20)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    group_by: GroupBy = Field(None, description="regex: equal (?P<group>...) of paths = one source")
    manifest_url: str | None = Field(None, description="CSV path,label,group: labels and groups")
    clinical: ClinicalConfig = Field(
        default_factory=ClinicalConfig, description="DICOM windows and groups, NIfTI slices"
    )
    external_data_urls: list[str] = Field(
        default_factory=list,
        description="labelled folders from other sources (a folder per label): the published "
        "model is scored on each, copies of development scans removed first",
    )
    augment: bool = Field(False, description="offline augmentation of training partitions")
    seed: int = Field(0, ge=0)
    tuning: Literal["sweep", "seed"] = Field(
        "sweep",
        description="sweep: Ray Tune chooses each model's hyperparameters; seed: no sweep, every "
        "model trains with the seed's own settings (the paper replica). Giving sweep settings "
        "without tuning asks for a sweep",
    )
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    cpus_per_fold: float = Field(1.0, gt=0)
    gpus_per_fold: float = Field(0.0, ge=0, description="fractions share a GPU")
    ray_address: str | None = Field(
        None,
        description="None: local Ray; a dashboard http://head:8265 (work runs as Ray jobs); "
        "or, from inside the cluster, its GCS address head:6379",
    )
    force: bool = Field(False, description="run even when data and configuration are unchanged")
    champion: ChampionRule = Field(
        default_factory=ChampionRule, description="when this run's model replaces the champion"
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts, description="per stage; derived from the run's size by default"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = PROFILES[data.get("profile", "quick")]
        given_sweep = data.get("sweep") or {}
        if isinstance(given_sweep, SweepConfig):
            given_sweep = given_sweep.model_dump(include=given_sweep.model_fields_set)
        tuning = {"tuning": "sweep"} if given_sweep else {}  # asked for a sweep: gets one
        return {**preset, **tuning, **data, "sweep": {**preset["sweep"], **given_sweep}}

    # Bad values are refused here, before any work, with the field named: the Prefect form
    # and `braintl run` both build this model.
    @field_validator("backbones", "strategies")
    @classmethod
    def _known_names(cls, names: list[str], info: ValidationInfo) -> list[str]:
        known = list_models() if info.field_name == "backbones" else list(MODEL_STRATEGIES)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none given"
            raise _bad(f"{what}; choose from {', '.join(known)}")
        return names

    @field_validator("data_url", "out_url", "weights", "manifest_url")
    @classmethod
    def _no_credentials(cls, url: str | None, info: ValidationInfo) -> str | None:
        problem = credentials_problem(info.field_name, url)
        if problem:
            raise _bad(problem)
        return url

    @field_validator("external_data_urls")
    @classmethod
    def _external_apart(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        """Each external set once, none inside the development data (it would be listed as
        development scans too), no credentials."""
        data_url = info.data.get("data_url")
        problems = [credentials_problem("external_data_urls", url) for url in urls]
        problems += [
            f"external_data_urls: {url} lies inside data_url={data_url}: its scans are "
            "development scans. Give a folder outside the development data"
            for url in urls
            if data_url and is_inside(url, data_url)
        ]
        repeated = sorted({url for url in urls if urls.count(url) > 1})
        if repeated:
            problems.append(
                f"external_data_urls: {', '.join(repeated)} given twice; give each once"
            )
        found = [p for p in problems if p]
        if found:
            raise _bad("; ".join(found))
        return urls

    @field_validator("ray_address")
    @classmethod
    def _supported_address(cls, address: str | None) -> str | None:
        problem = cluster.address_problem(address)
        if problem:
            raise _bad(problem)
        return address

    @model_validator(mode="after")
    def _cluster_reads_storage(self) -> RetrainParams:
        """On a cluster, the nodes read the data and write the results: local paths would be
        another machine's disk (or a different disk on each node)."""
        problems = [
            cluster.storage_problem(name, getattr(self, name), self.ray_address)
            for name in ("data_url", "out_url")
        ]
        if any(problems):
            raise _bad("; ".join(p for p in problems if p))
        return self

    @field_validator("out_url")
    @classmethod
    def _out_outside_data(cls, out_url: str, info: ValidationInfo) -> str:
        problem = inside_problem("out_url", out_url, "data_url", info.data.get("data_url"))
        if problem:
            raise _bad(problem)
        return out_url

    @model_validator(mode="after")
    def _gpus_fit_one_node(self) -> RetrainParams:
        """See :func:`braintl.limits.gpu_request_problem`: with local Ray, one node is this
        machine; with ``ray_address`` only the form of the request is checked."""
        requests = {"gpus_per_fold": self.gpus_per_fold}
        if self.tuning == "sweep":
            requests = {"sweep.gpus_per_trial": self.sweep.gpus_per_trial, **requests}
        per_node = None if self.ray_address or not any(requests.values()) else local_gpus()
        problems = [gpu_request_problem(name, gpus, per_node) for name, gpus in requests.items()]
        if any(problems):
            raise _bad(" ".join(p for p in problems if p))
        return self

    @model_validator(mode="after")
    def _folds_left_to_score(self) -> RetrainParams:
        """A sweep tunes on fold 0, which cross-validation then does not score: at least two
        folds must remain (braintl.results.cv_plan)."""
        if self.tuning == "sweep" and self.folds < 3:
            raise _bad(
                f"folds={self.folds} with tuning='sweep': the sweep chooses hyper-parameters on "
                f"fold {TUNING_FOLD}, which cross-validation then does not score, so folds must "
                "be at least 3 (two scored folds); give folds=3 or more, or tuning='seed'"
            )
        return self

    def scored_folds(self) -> list[int]:
        """The folds cross-validation trains and scores: all but the sweep's tuning fold, or
        all k when no sweep ran (``tuning="seed"``)."""
        return cv_plan(self.folds, self.tuning)["scored_folds"]

    def pairs(self) -> list[tuple[str, str]]:
        """(backbone, strategy) pairs to train; the scratch CNN has no frozen part."""
        pairs = []
        for backbone in self.backbones:
            strategies = ["full"] if backbone == SCRATCH else self.strategies
            pairs += [(backbone, s) for s in strategies if (backbone, s) not in pairs]
        return pairs

    def sweep_groups(self, warm: dict | None = None) -> dict[str, list[tuple[str, str]]]:
        """Pairs by the weights they start from: models without ImageNet weights start from
        none, so the paper profile sweeps them apart from the pretrained ones. With a warm
        start (``braintl.publish.warm_start``), the published model's backbone starts from its
        weights and the other backbones from the profile's."""
        if warm and warm["backbone"] not in self.backbones:
            raise UserError(
                f"weights={self.weights!r} is a {warm['backbone']} model ({warm['model']}), "
                f"but backbones are {', '.join(self.backbones)}: add {warm['backbone']} to "
                "backbones, or start from 'none' or 'imagenet'"
            )
        start = PROFILES[self.profile]["weights"] if warm else self.weights
        groups: dict[str, list[tuple[str, str]]] = {}
        for backbone, strategy in self.pairs():
            pretrained = get_entry(backbone).spec.pretrained is not None
            weights = start if pretrained or start != "imagenet" else "none"
            if warm and backbone == warm["backbone"]:
                weights = warm["weights"]
            groups.setdefault(weights, []).append((backbone, strategy))
        return groups

    def data_config(self) -> DataConfig:
        return DataConfig(
            protocol=self.protocol,
            folds=self.folds,
            test_fraction=self.test_fraction,
            seed=self.seed,
            group_by=self.group_by,
            manifest_url=self.manifest_url,
            clinical=self.clinical,
            preprocess={"image_size": self.image_size, "crop": self.crop},
            augment={"enabled": self.augment},
        )

    def base_train_config(self, weights: str) -> dict:
        return {
            "weights": weights,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def fixed_configs(self, weights: str, pairs: list[tuple[str, str]]) -> dict[str, dict]:
        """With ``tuning="seed"``, each pair's training configuration: the seed's settings."""
        return replica.seed_configs(pairs, self.base_train_config(weights))

    def run_key(self, fingerprint: str, external: list[dict] | None = None) -> str:
        """Same data, same settings and same library code → same key: the run would change
        nothing. ``external``: the screened external sets, whose content counts too."""
        settings = self.model_dump(mode="json", exclude=NOT_IN_RUN_KEY)
        if external:
            settings["external"] = [(s["members"], s["copies_removed"]) for s in external]
        blob = json.dumps({"data": fingerprint, "code": code_key(), **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bad(problem: str) -> PydanticCustomError:
    """A validation error whose message is ``problem`` as written (no "Value error, ")."""
    return PydanticCustomError("bad_parameter", "{problem}", {"problem": problem})
