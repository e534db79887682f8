"""The infrastructure files, parsed: images pinned, GPUs requested where training runs, work-pool
variables referenced by their job templates, secrets only ever referenced, never written, and the
hardening of issue 17 in every manifest: authentication on by default, ports on 127.0.0.1 unless
opted in, placeholder secrets refused, least-privilege pods and network policies."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
POOLS = REPO / "deployments" / "work-pools"
SECRET_KEY = re.compile(r"(password|secret|token|access_key|auth_string)", re.IGNORECASE)
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
SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"]
SECRETS += ["PREFECT_AUTH_STRING"]
FLOW_ROLE = {"braintl.io/role": "flow"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_images_are_pinned_and_no_secret_is_written(path):
    docs = _yaml_docs(path)
    images = _images(docs)
    assert images or path.name == "security.yaml", f"{path.name} names no image"
    assert [i for i in images if not _pinned(i)] == []
    assert _secret_values(docs) == []


def test_dockerfile_builds_on_a_pinned_cuda_image_with_the_constraints():
    """No digest of the base could be looked up offline: the tag is the default of an ARG that
    takes ``tag@sha256:...`` at build time (the comment says how), never an unpinned tag."""
    text = (INFRA / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    (default,) = re.findall(r"^ARG CUDA_BASE=(\S+)", text, re.MULTILINE)
    assert base == "${CUDA_BASE}" and default.startswith("nvidia/cuda:") and _pinned(default)
    assert "imagetools inspect" in text and "CUDA_BASE=nvidia/cuda:" in text
    assert "ENV" in text and "BRAINTL_HOME=/opt/braintl" in text
    assert "download.pytorch.org/whl/cu" in text
    installs = re.findall(r"pip install[^\n]*", text)
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs)
    assert text.index("COPY constraints.txt") < text.index("pip install")
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.isdigit() and int(user) > 0  # numeric: Kubernetes can verify runAsNonRoot


def test_compose_connects_the_services_and_gives_the_gpu_to_ray():
    services = _compose()["services"]
    assert {"postgres", "prefect-server", "s3", "create-bucket", "ray-head"} <= set(services)
    assert {"ray-gpu-worker", "prefect-worker"} <= set(services)
    (device,) = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert {"--num-gpus=0", "--num-cpus=0"} <= set(services["ray-head"]["command"].split())
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
    assert set(example.values()) == {""}, "the example holds values: a verbatim copy would run"
    assert set(SECRETS) <= set(example) and "BRAINTL_BIND_ADDRESS" in example
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
    assert head["rayStartParams"]["num-gpus"] == head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head["template"])
    (gpu,) = spec["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for container in head["template"]["spec"]["containers"] + gpu["template"]["spec"]["containers"]:
        assert container["envFrom"] == [{"secretRef": {"name": "braintl-env"}}]
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
    assert _env(container) == {"PREFECT_API_AUTH_STRING": AUTH_REF}
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


# Hardening (issue 17, item 1) ------------------------------------------------------------------


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _assert_least_privilege(pod: dict, where: str) -> None:
    """Non-root, no capabilities, no privilege escalation, read-only root with /tmp writable."""
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
    tmp = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert context["readOnlyRootFilesystem"] is True, where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in tmp, f"{where}: /tmp is not an emptyDir"
        assert container["resources"]["limits"]["memory"], where


def _matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def _policies() -> dict:
    docs = _yaml_docs(INFRA / "k8s" / "security.yaml")
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}


def _allowed(policy: dict, labels: dict) -> set:
    """Ports (None: all) that pods with ``labels`` may reach under one NetworkPolicy."""
    ports: set = set()
    for rule in policy["ingress"]:
        if any(_matches(peer["podSelector"]["matchLabels"], labels) for peer in rule["from"]):
            ports |= {p["port"] for p in rule.get("ports", [])} or {None}
    return ports


def test_compose_publishes_ports_on_localhost_unless_the_operator_opts_in():
    services = _compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"prefect-server", "s3", "ray-head"}  # PostgreSQL never
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${BRAINTL_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    assert "BRAINTL_BIND_ADDRESS" in (INFRA / ".env.example").read_text()


def test_compose_authenticates_prefect_s3_and_ray():
    services = _compose()["services"]
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    for name in ("ray-head", "ray-gpu-worker", "prefect-worker"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH")
    s3 = services["s3"]
    image, version = s3["image"].split(":")
    assert image == "chrislusf/seaweedfs" and tuple(map(int, version.split("."))) >= (4, 0)
    script = " ".join(s3["command"])
    assert "-s3.config=/tmp/s3.json" in script and '"identities"' in script
    assert "umask 077" in script  # the identity file is readable by its owner only
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(s3["environment"])


def test_compose_refuses_empty_secrets_and_starts_nothing_before_the_check():
    services = _compose()["services"]
    text = (INFRA / "docker-compose.yml").read_text()
    check = services.pop("check-secrets")
    assert set(check["environment"]) == set(SECRETS)
    for name, service in services.items():  # every other reference fails on an empty value
        for value in json.dumps(service).split('"'):
            for secret in SECRETS:
                if "${" + secret in value:
                    assert "${" + secret + ":?" in value, f"{name}: {value}"
    assert "${AWS_SECRET_ACCESS_KEY:?" in text

    def waits_for_check(name: str, seen=()) -> bool:
        depends = services[name].get("depends_on", {})
        if "check-secrets" in depends:
            return depends["check-secrets"] == {"condition": "service_completed_successfully"}
        return bool(depends) and all(waits_for_check(d, (*seen, name)) for d in depends)

    assert [name for name in services if not waits_for_check(name)] == []


GOOD = {name: "k" + "0123456789abcdef" * 2 for name in SECRETS} | {
    "PREFECT_AUTH_STRING": "admin:0123456789abcdef0123"
}


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("RAY_AUTH_TOKEN", "", "is empty"),
        ("AWS_SECRET_ACCESS_KEY", "change-me-too", "placeholder"),
        ("RAY_AUTH_TOKEN", "change-me-to-a-long-random-token", "placeholder"),
        ("POSTGRES_PASSWORD", "CHANGEME0123456789", "placeholder"),
        ("PREFECT_AUTH_STRING", "admin:password123", "placeholder"),
        ("AWS_ACCESS_KEY_ID", "short", "under 16"),
        ("POSTGRES_PASSWORD", "0123456789abcdef@host", "characters outside"),
    ],
)
def test_start_up_check_refuses_empty_short_and_placeholder_secrets(name, value, why):
    script = INFRA / "check-secrets.sh"
    env = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run(["sh", str(script)], env=env | GOOD, capture_output=True, text=True)
    assert (ok.returncode, ok.stderr) == (0, "")
    bad = subprocess.run(
        ["sh", str(script)], env=env | GOOD | {name: value}, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert f"refusing to start: {name} " in bad.stderr and why in bad.stderr
    assert "openssl rand" in bad.stderr


def test_helm_values_turn_on_basic_auth_and_least_privilege():
    (server,) = _yaml_docs(INFRA / "k8s" / "prefect-server-values.yaml")
    (worker,) = _yaml_docs(INFRA / "k8s" / "prefect-worker-values.yaml")
    assert server["server"]["basicAuth"] == {"enabled": True, "existingSecret": "prefect-auth"}
    assert worker["worker"]["basicAuth"] == server["server"]["basicAuth"]
    assert server["service"]["type"] == "ClusterIP"
    for where, values in [
        ("server", server["server"]),
        ("worker", worker["worker"]),
        ("postgresql", server["postgresql"]["primary"]),
    ]:
        assert values["podSecurityContext"]["runAsNonRoot"] is True, where
        context = values["containerSecurityContext"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"], where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert values["resources"]["limits"]["memory"], where


def test_flow_pods_run_least_privileged_under_their_own_service_account():
    template = json.loads((POOLS / "kubernetes.json").read_text())
    pod_template = template["job_configuration"]["job_manifest"]["spec"]["template"]
    pod = pod_template["spec"]
    assert pod["serviceAccountName"] == "braintl-flow"
    assert pod["automountServiceAccountToken"] is False
    assert "service_account_name" not in template["variables"]["properties"]  # not caller-set
    _assert_least_privilege(pod, "flow pod")
    defaults = template["variables"]["properties"]
    assert all(defaults[k].get("default") for k in ("cpu_limit", "memory_limit", "memory_request"))
    assert pod_template["metadata"]["labels"] == FLOW_ROLE
    (account,) = [
        d for d in _yaml_docs(INFRA / "k8s" / "security.yaml") if d["kind"] == "ServiceAccount"
    ]
    assert account["metadata"]["name"] == "braintl-flow"
    assert account["automountServiceAccountToken"] is False


def test_ray_nodes_enable_token_auth_themselves_and_run_least_privileged():
    (cluster,) = _yaml_docs(INFRA / "k8s" / "raycluster.yaml")
    spec = cluster["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}
    for group, pod in pods.items():
        _assert_least_privilege(pod, f"ray {group}")
        for container in pod["containers"]:
            env = _env(container)
            assert env["RAY_AUTH_MODE"] == "token", group
            ref = {"secretKeyRef": {"name": "braintl-env", "key": "RAY_AUTH_TOKEN"}}
            assert env["RAY_AUTH_TOKEN"] == ref, group
        if group != "head":  # the head keeps the account KubeRay's autoscaler needs
            assert pod["automountServiceAccountToken"] is False


def test_limit_range_gives_every_container_default_limits():
    (limits,) = [
        d for d in _yaml_docs(INFRA / "k8s" / "security.yaml") if d["kind"] == "LimitRange"
    ]
    (container,) = [item for item in limits["spec"]["limits"] if item["type"] == "Container"]
    assert container["default"]["memory"] and container["default"]["cpu"]
    assert container["defaultRequest"]["memory"] and container["defaultRequest"]["cpu"]


def test_network_policies_let_only_the_worker_and_flows_reach_prefect_and_flows_and_ray_the_head():
    policies = _policies()
    (cluster,) = _yaml_docs(INFRA / "k8s" / "raycluster.yaml")
    ray = {"ray.io/cluster": cluster["metadata"]["name"]}
    worker = {"app.kubernetes.io/name": "prefect-worker"}
    head = ray | {"ray.io/node-type": "head"}
    server = {"app.kubernetes.io/name": "prefect-server"}
    outsider = {"app": "anything-else"}

    def reach(target: dict, source: dict) -> set:
        guarding = [
            p for p in policies.values() if _matches(p["podSelector"]["matchLabels"], target)
        ]
        assert guarding, f"no policy selects {target}: every pod may reach it"
        return set().union(*(_allowed(p, source) for p in guarding))

    assert reach(server, worker) == {4200} and reach(server, FLOW_ROLE) == {4200}
    assert reach(server, outsider) == set() and reach(server, ray) == set()
    assert reach(head, FLOW_ROLE) == {8265} and reach(head, ray | {"ray.io/node-type": "worker"})
    assert reach(head, outsider) == set() and reach(head, worker) == set()
    assert reach(ray | {"ray.io/node-type": "worker"}, FLOW_ROLE) == set()
    assert reach({"app.kubernetes.io/name": "postgresql"}, server) == {5432}
    assert reach({"app.kubernetes.io/name": "postgresql"}, FLOW_ROLE) == set()
    assert reach(FLOW_ROLE, outsider) == set()


# Every field of prefect-docker's DockerWorkerJobConfiguration (and the base job's): those a
# deployment may set are harmless to the host; the rest are fixed in the template.
DOCKER_SETTABLE = {"command", "env", "labels", "name", "image", "registry_credentials"}
DOCKER_SETTABLE |= {"image_pull_policy", "auto_remove", "stream_output", "container_wait_timeout"}
DOCKER_SETTABLE |= {"mem_limit", "memswap_limit", "gpu_count"}
DOCKER_FIXED = {
    "privileged": False,
    "volumes": [],
    "networks": ["braintl_default"],  # the Compose network, never the host's
    "network_mode": None,
}
CONTAINMENT = {
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "pids_limit": 4096,
    "shm_size": "8g",
}


def test_docker_pool_fixes_every_escape_hatch_and_limits_memory():
    template = json.loads((POOLS / "docker.json").read_text())
    config, variables = template["job_configuration"], template["variables"]["properties"]
    assert {key: config[key] for key in DOCKER_FIXED} == DOCKER_FIXED
    assert set(variables) <= DOCKER_SETTABLE, set(variables) - DOCKER_SETTABLE
    kwargs = config["container_create_kwargs"]
    assert {key: kwargs[key] for key in CONTAINMENT} == CONTAINMENT
    assert set(kwargs) == {*CONTAINMENT, "device_requests"}  # no devices, cap_add, pid_mode...
    assert config["mem_limit"] == "{{ mem_limit }}" and variables["mem_limit"]["default"]
    assert variables["memswap_limit"]["default"] == variables["mem_limit"]["default"]


HOSTILE = {  # what a deployment's job_variables would set to reach the host
    "privileged": True,
    "volumes": ["/:/host", "/var/run/docker.sock:/var/run/docker.sock"],
    "network_mode": "host",
    "networks": ["host"],
    "container_create_kwargs": {"cap_add": ["SYS_ADMIN"], "pid_mode": "host"},
    "cap_add": ["ALL"],
    "devices": ["/dev/mem:/dev/mem"],
    "pid_mode": "host",
    "ipc_mode": "host",
    "userns_mode": "host",
    "security_opt": ["apparmor=unconfined", "seccomp=unconfined"],
    "service_account_name": "prefect-worker",
    "host_network": True,
    "job_manifest": {"spec": {"template": {"spec": {"hostPID": True}}}},
}


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_hostile_job_variables_are_contained(kind):
    """Prefect renders a job from the template's placeholders only (the worker's
    ``from_template_and_values``): variables the template does not declare are never read, so
    a deployment's job variables cannot undo what the template fixes."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((POOLS / f"{kind}.json").read_text())
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    job = apply_values(template["job_configuration"], defaults | HOSTILE)
    assert job == apply_values(template["job_configuration"], defaults)  # nothing changed
    if kind == "docker":
        assert {key: job[key] for key in DOCKER_FIXED} == DOCKER_FIXED
        assert job["container_create_kwargs"]["cap_drop"] == ["ALL"]
        assert job["mem_limit"] == "32g"
    else:
        pod = job["job_manifest"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "braintl-flow" and "hostPID" not in pod
        assert pod["containers"][0]["resources"]["limits"]["memory"] == "32Gi"


AUTH_REF = {"secretKeyRef": {"name": "prefect-auth", "key": "auth-string"}}


def test_flow_run_jobs_take_the_api_auth_string_from_a_secret_never_as_a_value():
    """The worker hands its own settings to each job (``_base_environment``): the Kubernetes
    template unsets its auth string there (env null, which Prefect drops) and names the
    Secret instead, so the Job object (readable by whoever may list Jobs) holds no copy."""
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((POOLS / "kubernetes.json").read_text())
    assert "env" not in template["variables"]["properties"]  # no deployment sets it
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    job = apply_values(template["job_configuration"], defaults)
    (container,) = job["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert _env(container) == {"PREFECT_API_AUTH_STRING": AUTH_REF}
    secret = "admin:" + "5ecret" * 6
    with temporary_settings({PREFECT_API_AUTH_STRING: secret}):
        configs = [BaseJobConfiguration(env=env) for env in (job["env"], {})]
        for config in configs:
            config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="a-run"))
    ours, without_the_null = (config.env for config in configs)
    assert without_the_null["PREFECT_API_AUTH_STRING"] == secret  # the leak it prevents
    assert "PREFECT_API_AUTH_STRING" not in ours  # what the Job's env list gets
    assert secret not in json.dumps([ours, job])


# Base images pinned by digest (issue 17, item 1): mechanically, where a registry is reachable --


def _pin_images():
    spec = importlib.util.spec_from_file_location("pin_images", INFRA / "pin_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_image_is_pinned_by_digest_or_listed_as_digest_pending():
    pin = _pin_images()
    refs = {ref for found in pin.references().values() for ref in found}
    assert len(refs) >= 8  # every manifest was read
    tag_only = {ref for ref in refs if not pin.DIGEST.search(ref)}
    assert tag_only == pin.pending(), "list a tag-only image in infra/digest-pending.txt"
    for ref in refs - tag_only:
        assert re.fullmatch(r"[^@\s]+:[^:@/\s]+@sha256:[0-9a-f]{64}", ref), ref


def test_pin_images_writes_each_digest_into_the_manifests(tmp_path):
    """On a copy of the manifests, with a stand-in ``crane`` answering as a registry would
    (braintl's own image is not pushed: it stays pending)."""
    for folder in ("infra", "deployments/work-pools"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "crane").write_text(
        '#!/bin/sh\ncase "$2" in braintl:*|registry.example.com/*) exit 1;; esac\n'
        'printf "sha256:%s\\n" "$(printf %s "$2" | sha256sum | cut -c1-64)"\n'
    )
    (bin_dir / "crane").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    script = [sys.executable, str(tmp_path / "infra" / "pin_images.py"), "--root", str(tmp_path)]
    done = subprocess.run(script, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # the unpushed own image is reported
    assert "not resolved: braintl:0.1.0" in done.stderr
    pin = _pin_images()
    own = {"braintl:0.1.0", "registry.example.com/braintl:0.1.0", "<chart default>:17.6.0"}
    assert pin.pending(tmp_path) == own
    pinned = 0
    for refs in pin.references(tmp_path).values():
        for ref in refs:
            if ref in own:
                continue
            name_tag, digest = ref.split("@")
            expected = hashlib.sha256(name_tag.encode()).hexdigest()
            assert digest == f"sha256:{expected}", ref
            pinned += 1
    assert pinned >= 6
    assert (
        "ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:"
        in (tmp_path / "infra" / "Dockerfile").read_text()
    )
    again = subprocess.run(script, env=env, capture_output=True, text=True)
    assert "pinned" not in again.stdout  # nothing left to pin but the own image
