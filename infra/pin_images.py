"""Pin every base image of the manifests by digest, on a machine that reaches the registries:

    python infra/pin_images.py            # rewrites name:tag as name:tag@sha256:<digest>

Each ``name:tag`` of docker-compose.yml, k8s/*.yaml (``image:``, Helm ``repository`` with
``tag``/``prefectTag``), the work-pool templates (the ``image`` default) and the Dockerfile's
``ARG CUDA_BASE`` is resolved with ``crane digest`` or ``docker buildx imagetools inspect``
and the digest written after the tag, in place; what is pinned leaves
``infra/digest-pending.txt``. That file lists the references still pinned by tag only (the
tests allow no other): where braintl was written no registry was reachable, and braintl's own
image gets its digest when it is pushed. A reference the tools cannot resolve stays listed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PENDING = Path("infra/digest-pending.txt")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _helm_or_image(node, found: list[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("image"), str):
            found.append(node["image"])
        tag = node.get("prefectTag") or node.get("tag")
        if isinstance(tag, str) and ("repository" in node or "tag" in node):
            found.append(f"{node.get('repository', '<chart default>')}:{tag}")
        for value in node.values():
            _helm_or_image(value, found)
    elif isinstance(node, list):
        for value in node:
            _helm_or_image(value, found)


def references(root: Path = REPO) -> dict[str, list[str]]:
    """Image references (``name:tag`` or ``name:tag@sha256:...``) of each manifest, by path."""
    found: dict[str, list[str]] = {}
    for path in [*sorted((root / "infra/k8s").glob("*.yaml")), root / "infra/docker-compose.yml"]:
        images: list[str] = []
        for doc in yaml.safe_load_all(path.read_text()):
            _helm_or_image(doc, images)
        found[str(path.relative_to(root))] = images
    for path in sorted((root / "deployments/work-pools").glob("*.json")):
        image = json.loads(path.read_text())["variables"]["properties"]["image"]["default"]
        found[str(path.relative_to(root))] = [image]
    dockerfile = root / "infra/Dockerfile"
    found["infra/Dockerfile"] = re.findall(r"^ARG CUDA_BASE=(\S+)", dockerfile.read_text(), re.M)
    return {
        path: [re.sub(r"^\$\{\w+:-(.+)\}$", r"\1", i) for i in refs] for path, refs in found.items()
    }


def pending(root: Path = REPO) -> set[str]:
    lines = (root / PENDING).read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def digest_of(reference: str) -> str | None:
    """``sha256:...`` of ``reference`` from its registry, or None when no tool resolves it."""
    commands = [["crane", "digest", reference]]
    commands.append(
        ["docker", "buildx", "imagetools", "inspect", reference, "--format", "{{json .Manifest}}"]
    )
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        text = done.stdout.strip()
        if done.returncode == 0 and text.startswith("{"):
            text = json.loads(text).get("digest", "")
        if done.returncode == 0 and re.fullmatch(r"sha256:[0-9a-f]{64}", text):
            return text
    return None


def pin(root: Path = REPO) -> tuple[dict[str, str], list[str]]:
    """Write a digest after every tag-only reference that resolves; (pinned, unresolved)."""
    pinned, unresolved = {}, []
    for path, refs in references(root).items():
        text = (root / path).read_text()
        for ref in refs:
            if DIGEST.search(ref) or ref in pinned or ref in unresolved:
                continue
            digest = None if ref.startswith("<") else digest_of(ref)
            if digest is None:
                unresolved.append(ref)
                continue
            pinned[ref] = digest
        for ref, digest in pinned.items():
            tag = ref.rpartition(":")[2]
            # name:tag (image lines, JSON defaults, the ARG) or the tag alone (Helm values)
            text = re.sub(
                rf"(?<![\w./])(?<!\w-){re.escape(ref)}(?![\w.@-])", f"{ref}@{digest}", text
            )
            text = re.sub(
                rf"(Tag|tag): {re.escape(tag)}$", rf"\1: {tag}@{digest}", text, flags=re.M
            )
        (root / path).write_text(text)
    kept = [
        line
        for line in (root / PENDING).read_text().splitlines()
        if line.split("#")[0].strip() not in pinned
    ]
    (root / PENDING).write_text("\n".join(kept) + "\n")
    return pinned, unresolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the repository (default: this)")
    root = parser.parse_args(argv).root
    pinned, unresolved = pin(root)
    for ref, digest in pinned.items():
        print(f"pinned {ref}@{digest}")
    for ref in unresolved:
        print(
            f"not resolved: {ref} (no crane or docker buildx, no registry access, or not "
            f"pushed yet); it stays in {PENDING}",
            file=sys.stderr,
        )
    return 1 if unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
