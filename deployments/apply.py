"""Apply braintl's deployments and alerts to the Prefect server in PREFECT_API_URL, from the
repository root:

    python deployments/apply.py

Prefect's CLI cannot do both from one file: `prefect deploy` ignores automations, deployment
triggers can only run deployments, and `prefect automation create --from-file` adds a copy on
every call and cannot name a block. So this script runs `prefect deploy` on prefect.yaml, saves
the URL in the Prefect variable braintl_alert_webhook as the Webhook block "braintl-alerts", and
creates or replaces (by name) the automations of automations.yaml, pointed at that block. The
URL is read here, not when an alert fires: after changing the variable, apply again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import UUID

import yaml
from prefect import get_client
from prefect.blocks.webhook import Webhook
from prefect.events.schemas.automations import AutomationCore
from prefect.variables import Variable

HERE = Path(__file__).resolve().parent
WEBHOOK_VARIABLE = "braintl_alert_webhook"
WEBHOOK_BLOCK = "braintl-alerts"


def alert_webhook_url() -> str:
    url = Variable.get(WEBHOOK_VARIABLE)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        sys.exit(
            f"The Prefect variable {WEBHOOK_VARIABLE} must be the http(s) URL alerts are posted "
            f"to (now {url!r}): prefect variable set {WEBHOOK_VARIABLE} https://hooks.example.com/..."
        )
    return url


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


def main() -> None:
    url = alert_webhook_url()
    deploy()
    block_id = save_webhook_block(url)
    for name in apply_automations(block_id):
        print(f"automation {name!r} posts to the {WEBHOOK_BLOCK!r} webhook block")


if __name__ == "__main__":
    main()
