"""Where deployed flows may read and write: under the roots in the Prefect variable
``braintl_allowed_roots`` (a JSON list of URLs, e.g. ``["s3://scans", "s3://braintl"]``).

Whoever may start a deployment chooses its URLs, and the run uses the worker's credentials:
without this check a run form could point ``out_url`` at another team's bucket, or
``data_url`` at the worker's own files. The variable lives on the Prefect server, so the
operator sets it once for every deployment (``deployments/apply.py`` does). A deployment's run
refuses to start while it is unset; a local ``braintl run`` (no deployment) is not confined.
"""

from __future__ import annotations

from prefect.runtime import deployment
from prefect.variables import Variable

from braintl.errors import UserError
from braintl.urls import outside_roots

VARIABLE = "braintl_allowed_roots"
HOW_TO_SET = (
    f'prefect variable set {VARIABLE} \'["s3://scans", "s3://braintl"]\' (your buckets), or '
    "python deployments/apply.py, which sets it from the data and output URLs it deploys "
    "(--allowed-roots to choose them)"
)


def allowed_roots() -> list[str] | None:
    """The roots in the variable; None when it is unset. A comma-separated text works too."""
    value = Variable.get(VARIABLE, default=None)
    if value is None:
        return None
    roots = value.split(",") if isinstance(value, str) else value
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise UserError(
            f"the Prefect variable {VARIABLE} holds {value!r}: set it to a JSON "
            f"list of URLs: {HOW_TO_SET}"
        )
    return [r.strip() for r in roots if r.strip()]


def confine(**urls: str | None) -> None:
    """Refuse the run when any of ``urls`` lies outside the allowed roots, before any work; a
    deployment's run also when no roots are set (it would be confined by nothing)."""
    roots = allowed_roots()
    if roots is None:
        if deployment.id:
            raise UserError(
                f"the Prefect variable {VARIABLE} is unset, so this deployment's URLs would not "
                f"be confined: refused. Set it to the roots its runs may use: {HOW_TO_SET}."
            )
        return
    problems = outside_roots(urls, roots, f"the Prefect variable {VARIABLE}")
    if problems:
        raise UserError("; ".join(problems) + ".")
