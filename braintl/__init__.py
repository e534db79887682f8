"""braintl: transfer-learning experiments on medical images, as a batch system."""

__version__ = "0.1.0"
