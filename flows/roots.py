"""Where deployed flows may read and write: under the roots in the Prefect variable
``braintl_allowed_roots`` (a JSON list of URLs, e.g. ``["s3://scans", "s3://braintl"]``).

Whoever may start a deployment chooses its URLs, and the run uses the worker's credentials:
without this check a run form could point ``out_url`` at another team's bucket, or
``data_url`` at the worker's own files. The variable lives on the Prefect server, so the
operator sets it once for every deployment; unset, nothing is confined (a local ``braintl
run``) and a deployment's run says so in its log.
"""

from __future__ import annotations

from prefect.logging import get_run_logger
from prefect.runtime import deployment
from prefect.variables import Variable

from braintl.errors import UserError
from braintl.urls import outside_roots

VARIABLE = "braintl_allowed_roots"


def allowed_roots() -> list[str] | None:
    """The roots in the variable; None when it is unset. A comma-separated text works too."""
    value = Variable.get(VARIABLE, default=None)
    if value is None:
        return None
    roots = value.split(",") if isinstance(value, str) else value
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise UserError(
            f"the Prefect variable {VARIABLE} holds {value!r}: set it to a JSON list of URLs, "
            f'e.g. prefect variable set {VARIABLE} \'["s3://scans", "s3://braintl"]\''
        )
    return [r.strip() for r in roots if r.strip()]


def confine(**urls: str | None) -> None:
    """Refuse the run when any of ``urls`` lies outside the allowed roots, before any work."""
    roots = allowed_roots()
    if roots is None:
        if deployment.id:
            get_run_logger().warning(
                "the Prefect variable %s is unset: this deployment's URLs are not confined",
                VARIABLE,
            )
        return
    problems = outside_roots(urls, roots, f"the Prefect variable {VARIABLE}")
    if problems:
        raise UserError("; ".join(problems) + ".")
