"""Where storage credentials may travel: from the environment (or a Prefect block or Kubernetes
Secret that fills it) to the process that uses them, and nowhere else.
"""

from __future__ import annotations

AWS_KEYS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)


def keep_out_of_ray_logs() -> None:
    """Stop Ray Tune copying the driver's AWS keys into every trial's ``runtime_env``.

    Ray's runtime-env agent logs each runtime_env it creates in clear text
    (``runtime_env_agent.log``, shown in the Ray dashboard), keys included. The copy is not
    needed: a local Ray's workers inherit the driver's environment, and a cluster's workers get
    theirs from their own pods (a Kubernetes Secret), as the driver does.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - AWS_KEYS
