"""Cache policy of the stages that compute results: a cached result is reused only while the
task's inputs, its own source and the braintl library that does the work are all unchanged."""

from __future__ import annotations

from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy

from braintl.codeversion import code_key

LIBRARY_SOURCE = CacheKeyFnPolicy(cache_key_fn=lambda context, inputs: code_key())
COMPUTED = INPUTS + TASK_SOURCE + LIBRARY_SOURCE
