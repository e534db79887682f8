"""Apply braintl's deployments and alerts to the Prefect server in PREFECT_API_URL, from the
repository root:

    python deployments/apply.py

Prefect's CLI cannot do both from one file: `prefect deploy` ignores automations, deployment
triggers can only run deployments, and `prefect automation create --from-file` adds a copy on
every call and cannot name a block. So this script runs `prefect deploy` on prefect.yaml, saves
the URL in the Prefect variable braintl_alert_webhook as the Webhook block "braintl-alerts", and
creates or replaces (by name) the automations of automations.yaml, pointed at that block. The
URL is read here, not when an alert fires: after changing the variable, apply again.

It also sets the Prefect variable braintl_allowed_roots, without which a deployment's run
refuses to start (flows/roots.py): to the URLs of ``--allowed-roots`` when given, else, when
the variable is unset, to the buckets (or local folders) of the data and output URLs that
prefect.yaml deploys (the variables braintl_data_url, braintl_out_url and the data_url/out_url of
braintl_nightly and braintl_adhoc). A variable already set is kept.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import yaml
from prefect import get_client
from prefect.blocks.webhook import Webhook
from prefect.events.schemas.automations import AutomationCore
from prefect.variables import Variable

from braintl.storage import resolve
from flows.roots import VARIABLE as ROOTS_VARIABLE

HERE = Path(__file__).resolve().parent
WEBHOOK_VARIABLE = "braintl_alert_webhook"
WEBHOOK_BLOCK = "braintl-alerts"
URL_VARIABLES = ("braintl_data_url", "braintl_out_url")  # plain URLs
PARAMS_VARIABLES = ("braintl_nightly", "braintl_adhoc")  # RetrainParams with data_url, out_url


def alert_webhook_url() -> str:
    url = Variable.get(WEBHOOK_VARIABLE)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        sys.exit(
            f"The Prefect variable {WEBHOOK_VARIABLE} must be the http(s) URL alerts are posted "
            f"to (now {url!r}): prefect variable set {WEBHOOK_VARIABLE} https://hooks.example.com/..."
        )
    return url


def deployed_roots() -> list[str]:
    """The buckets (s3) or folders (local) of the data and output URLs prefect.yaml deploys."""
    urls = [Variable.get(name, default=None) for name in URL_VARIABLES]
    for name in PARAMS_VARIABLES:
        params = Variable.get(name, default=None)
        if isinstance(params, dict):
            urls += [params.get("data_url"), params.get("out_url")]
    roots = []
    for url in filter(None, urls):
        location = resolve(url)
        root = f"s3://{location.path.split('/')[0]}" if location.protocol == "s3" else url
        roots += [root] if root not in roots else []
    return roots


def set_allowed_roots(chosen: list[str] | None) -> list[str]:
    """Set braintl_allowed_roots to ``chosen``, or, when unset, to :func:`deployed_roots`."""
    current = Variable.get(ROOTS_VARIABLE, default=None)
    if chosen is None and current is not None:
        return current if isinstance(current, list) else [str(current)]
    roots = chosen if chosen is not None else deployed_roots()
    if not roots:
        sys.exit(
            f"No root for the Prefect variable {ROOTS_VARIABLE}: name the buckets or folders "
            "deployed runs may read and write with --allowed-roots s3://scans s3://braintl, or "
            f"set the variables {', '.join(URL_VARIABLES)} first"
        )
    Variable.set(ROOTS_VARIABLE, roots, overwrite=True)
    return roots


def deploy() -> None:
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    deploy_all = ["deploy", "--all", "--prefect-file", str(HERE / "prefect.yaml")]
    subprocess.run([*prefect, *deploy_all], cwd=HERE.parent, check=True)


def save_webhook_block(url: str) -> UUID:
    """The block the automations call; saved again (same id) on every apply."""
    webhook = Webhook(url=url, headers={"Content-Type": "application/json"})
    return webhook.save(WEBHOOK_BLOCK, overwrite=True)


def apply_automations(block_id: UUID) -> list[str]:
    """Create each automation of automations.yaml, or replace the one of its name."""
    specs = yaml.safe_load((HERE / "automations.yaml").read_text())["automations"]
    applied = []
    with get_client(sync_client=True) as client:
        for spec in specs:
            for action in spec["actions"]:
                if action["type"] == "call-webhook":
                    action["block_document_id"] = block_id
            automation = AutomationCore.model_validate(spec)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
            else:
                client.create_automation(automation)
            applied.append(automation.name)
    return applied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--allowed-roots",
        nargs="+",
        metavar="URL",
        help=f"the roots deployed runs may use (sets {ROOTS_VARIABLE}; default: kept when set, "
        "else the buckets of the deployed data and output URLs)",
    )
    args = parser.parse_args(argv)
    url = alert_webhook_url()
    roots = set_allowed_roots(args.allowed_roots)
    print(f"deployed runs may use only URLs under {', '.join(roots)} ({ROOTS_VARIABLE})")
    deploy()
    block_id = save_webhook_block(url)
    for name in apply_automations(block_id):
        print(f"automation {name!r} posts to the {WEBHOOK_BLOCK!r} webhook block")


if __name__ == "__main__":
    main()
