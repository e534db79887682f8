"""Building models without loading torch._dynamo: about 2 CPU seconds of import that
building and running a model do not need (``torch.compile`` does, and so does training:
torch.optim's optimizers import it when built, ``braintl.training.TRAINING_IMPORTS``). What
gains is every process that scores without training, ``braintl predict`` first:
``benchmarks/bench_cold_start.py``. Two paths load it as a side effect:

- **torchvision's import.** ``torchvision/ops/roi_align.py`` imports ``is_compile_supported``
  from ``torch._dynamo.utils`` when it loads (the eager import its own ``lazy_compile`` set out
  to avoid). roi_align calls it only when torchvision's compiled ops are missing, or in
  deterministic mode on a GPU, and braintl calls roi_align nowhere. :func:`import_library`
  gives that import a stand-in whose names import the real module when first read.
- **Random fills of meta tensors.** On the meta device torch runs ``normal_``, ``uniform_`` and
  the like through its Python references, whose first call imports torch._dynamo.
  :func:`meta_build` skips them and ``torch.nn.init``'s initialisers: a meta tensor has no
  values to fill.

timm imports torch._dynamo itself (``torch.compiler.disable`` in its model modules), so an
Xception build still loads it; nothing here changes a model's arithmetic or its weights.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

import torch
from torch.overrides import TorchFunctionMode

DYNAMO = "torch._dynamo"
DYNAMO_UTILS = "torch._dynamo.utils"
_lock = threading.Lock()  # one stand-in at a time: preload's thread and a builder may race
_RANDOM_FILLS = frozenset(
    getattr(torch.Tensor, name)
    for name in ("normal_", "uniform_", "bernoulli_", "exponential_", "random_", "cauchy_")
    + ("log_normal_", "geometric_")
)


def import_library(module: str) -> ModuleType:
    """``importlib.import_module(module)``; when this import is what first loads torchvision,
    without loading torch._dynamo."""
    with _lock:
        if "torchvision" in sys.modules or DYNAMO_UTILS in sys.modules:
            return importlib.import_module(module)
        standin = _Standin()
        sys.modules[DYNAMO_UTILS] = standin
        sys.meta_path.insert(0, standin.finder)
        try:
            return importlib.import_module(module)
        finally:
            sys.meta_path.remove(standin.finder)
            standin.leave()


class _Standin(ModuleType):
    """``torch._dynamo.utils`` while torchvision loads. Reading any name imports the real
    module; so does any import of torch._dynamo meanwhile (timm's), which first takes the
    stand-in out of ``sys.modules`` so that dynamo loads whole, with its real ``utils``."""

    def __init__(self):
        super().__init__(DYNAMO_UTILS, "Stands in for torch._dynamo.utils while torchvision loads.")
        standin = self

        class Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == DYNAMO:
                    standin.leave()
                return None  # the regular finders load it

        self.finder = Finder()

    def leave(self) -> None:
        if sys.modules.get(DYNAMO_UTILS) is self:
            del sys.modules[DYNAMO_UTILS]

    def real(self) -> ModuleType:
        self.leave()
        return importlib.import_module(DYNAMO_UTILS)

    def is_compile_supported(self, device_type: str) -> bool:
        """The one name roi_align imports, bound there: dynamo loads on its first call."""
        return self.real().is_compile_supported(device_type)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # the import system's probes (__path__...): a plain module
            raise AttributeError(name)
        return getattr(self.real(), name)


class _SkipRandomFills(TorchFunctionMode):
    """Random fills of meta tensors, and ``torch.nn.init``'s initialisers (which a mode sees
    whole, not the fills they make), return the tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS or getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init's keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """``torch.device("meta")`` for building a module whose values are set afterwards
    (``to_empty`` then an initialisation, or a state dict); its random initialisation is
    skipped. Thread-local, as torch's function modes are."""
    with torch.device("meta"), _SkipRandomFills():
        yield
