"""Two small retrain runs on phantoms, one per protocol (groups, then paper), with the same
settings (offline augmentation on, so the paper protocol's test set holds copies) in the same
output: the real flow under a temporary Prefect server with real local Ray,
which renders each run's report. Run once per test session, whichever report test asks first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from support import TWO_MODELS, small_params
from temporary_prefect import temporary_prefect

from braintl.data.phantoms import write_phantom_dataset


@dataclass(frozen=True)
class ReportRuns:
    out: Path  # the flows' out_url
    records: dict[str, dict]  # protocol → what the flow returned
    links: dict[str, str]  # protocol → the report link artifact's link, read back from Prefect

    def run_dir(self, protocol: str) -> Path:
        return Path(self.records[protocol]["run_url"])


def _link_artifact(state) -> str:
    flow_run_id = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run_id))
    (link,) = [a.data for a in artifacts if a.key == "retrain-report"]
    return link


_DONE: dict[Path, ReportRuns] = {}  # per session's base temp folder


def report_runs(tmp_path_factory: pytest.TempPathFactory) -> ReportRuns:
    base = tmp_path_factory.getbasetemp()
    if base not in _DONE:
        _DONE[base] = _run_both(tmp_path_factory.mktemp("report-runs"))
    return _DONE[base]


def _run_both(root: Path) -> ReportRuns:
    data = root / "data"
    write_phantom_dataset(str(data), n_per_label={"yes": 16, "no": 16}, size=48, seed=0)
    from flows.retrain import retrain

    records, links = {}, {}
    ray.shutdown()
    try:
        with temporary_prefect(root / "prefect"):
            for protocol in ("groups", "paper"):
                params = small_params(
                    data, root / "out", protocol=protocol, augment=True, **TWO_MODELS
                )
                state = retrain(params, return_state=True)
                assert state.is_completed(), state.message
                records[protocol] = state.result()
                links[protocol] = _link_artifact(state)
    finally:
        ray.shutdown()
    return ReportRuns(root / "out", records, links)
