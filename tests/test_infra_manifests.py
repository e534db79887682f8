"""The infrastructure files, parsed: images pinned, GPUs requested where training runs, work-pool
variables referenced by their job templates, and secrets only ever referenced, never written."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
POOLS = REPO / "deployments" / "work-pools"
SECRET_KEY = re.compile(r"(password|secret|token|access_key)", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z_]+(:?[-?][^}]*)?\}$")  # compose: ${VAR}, ${VAR:-x}, ${VAR:?x}
PLACEHOLDER = re.compile(r"\{\{\s*([\w.$-]+)\s*\}\}")


def _yaml_docs(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _images(node) -> list[str]:
    """Every ``image:`` value, or ``repository:tag`` pair, anywhere in a parsed manifest."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("image"), str):
            found.append(node["image"])
        if isinstance(node.get("repository"), str):
            tag = node.get("prefectTag") or node.get("tag")
            found.append(f"{node['repository']}:{tag}" if tag else node["repository"])
        for value in node.values():
            found += _images(value)
    elif isinstance(node, list):
        for value in node:
            found += _images(value)
    return found


def _pinned(image: str) -> bool:
    image = re.sub(r"^\$\{\w+:-(.+)\}$", r"\1", image)  # compose default of a variable
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def _secret_values(node, path="") -> list[str]:
    """Paths whose key names a secret but whose value is written out, not referenced (a
    ``${VAR}``, or the name of a Kubernetes Secret or of a key in one)."""
    bad = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            names_a_secret = isinstance(value, str) and SECRET_KEY.search(str(key))
            reference = str(key).startswith("existing") or path.endswith("secretKeys")
            if names_a_secret and not reference and not REFERENCE.match(value):
                bad.append(f"{where}={value}")
            bad += _secret_values(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += _secret_values(value, f"{path}[{i}]")
    return bad


MANIFESTS = sorted(INFRA.glob("k8s/*.yaml")) + [INFRA / "docker-compose.yml"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_images_are_pinned_and_no_secret_is_written(path):
    docs = _yaml_docs(path)
    images = _images(docs)
    assert images, f"{path.name} names no image"
    assert [i for i in images if not _pinned(i)] == []
    assert _secret_values(docs) == []


def test_dockerfile_builds_on_a_pinned_cuda_image():
    text = (INFRA / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert base.startswith("nvidia/cuda:") and _pinned(base)
    assert "ENV" in text and "BRAINTL_HOME=/opt/braintl" in text
    assert "download.pytorch.org/whl/cu" in text


def test_compose_connects_the_services_and_gives_the_gpu_to_ray():
    services = _compose()["services"]
    assert {"postgres", "prefect-server", "s3", "create-bucket", "ray-head"} <= set(services)
    assert {"ray-gpu-worker", "prefect-worker"} <= set(services)
    (device,) = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "--num-gpus=0" in services["ray-head"]["command"]
    server_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server_db.startswith("postgresql+asyncpg://") and "@postgres:5432/" in server_db
    worker = services["prefect-worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://s3:8333"
    assert worker["environment"]["RAY_AUTH_MODE"] == "token"


def test_compose_credentials_come_from_an_uncommitted_env_file():
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = dict(
        line.split("=", 1)
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(example), f"not in .env.example: {used - set(example)}"
    assert all("change-me" in v for k, v in example.items() if SECRET_KEY.search(k))
    assert ".env" in (INFRA / ".gitignore").read_text().split()
    tracked = subprocess.run(
        ["git", "ls-files", "infra/.env"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


def test_raycluster_head_has_no_gpu_and_the_gpu_group_autoscales():
    (cluster,) = _yaml_docs(INFRA / "k8s" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head["template"])
    (gpu,) = spec["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for container in head["template"]["spec"]["containers"] + gpu["template"]["spec"]["containers"]:
        assert container["envFrom"] == [{"secretRef": {"name": "braintl-env"}}]
        assert "env" not in container
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_prefect_worker_values_poll_the_kubernetes_pool():
    (values,) = _yaml_docs(INFRA / "k8s" / "prefect-worker-values.yaml")
    worker = values["worker"]
    assert worker["apiConfig"] == "selfHostedServer"
    assert worker["config"] == {"workPool": "braintl-k8s", "type": "kubernetes"}
    assert worker["selfHostedServerApiConfig"]["apiUrl"].endswith(":4200/api")


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_work_pool_job_variables_are_referenced_by_the_job_template(kind):
    template = json.loads((POOLS / f"{kind}.json").read_text())
    declared = set(template["variables"]["properties"])
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    assert used <= declared, f"undeclared: {used - declared}"
    assert declared <= used, f"declared but never used: {declared - used}"


def test_kubernetes_pool_requests_gpus_and_reads_secrets_from_a_secret():
    template = json.loads((POOLS / "kubernetes.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"
    assert container["envFrom"] == [{"secretRef": {"name": "{{ env_secret }}"}}]
    assert template["variables"]["properties"]["gpu_limit"]["default"] >= 1
    assert _pinned(template["variables"]["properties"]["image"]["default"])


def test_docker_pool_requests_gpus_from_the_nvidia_runtime():
    template = json.loads((POOLS / "docker.json").read_text())
    kwargs = template["job_configuration"]["container_create_kwargs"]
    (request,) = kwargs["device_requests"]
    assert request == {"driver": "nvidia", "count": "{{ gpu_count }}", "capabilities": [["gpu"]]}


def test_prefect_yaml_declares_the_deployments():
    config = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {
        "nightly-retrain",
        "adhoc-retrain",
        "cluster-sweep",
        "predict-folder",
    }
    nightly = deployments["nightly-retrain"]
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == "0 2 * * *" and "braintl_timezone" in schedule["timezone"]
    assert nightly["concurrency_limit"]["limit"] == 1
    assert all("schedules" not in d for n, d in deployments.items() if n != "nightly-retrain")
    cluster = deployments["cluster-sweep"]["parameters"]["params"]
    assert cluster["ray_address"] and cluster["sweep"]["gpus_per_trial"] > 0
    assert deployments["predict-folder"]["entrypoint"] == "flows/predict.py:predict"
    assert _secret_values(config) == []
