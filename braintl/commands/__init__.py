"""Sub-commands of the ``braintl`` CLI, one module each, each with ``register(subparsers)``."""
