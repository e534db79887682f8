"""Prefect tasks: thin wrappers over the braintl library that add retries, caching and names."""
