"""Building a model leaves torch._dynamo unloaded (about 2 CPU s a process), and dynamo still
works whole afterwards: torchvision's roi_align, torch.compile, timm's import of it."""

from __future__ import annotations

import json
import textwrap
import threading

import torch
from support import REPO, run_python
from torch import nn

from braintl.models.without_dynamo import meta_build


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    proc = run_python(["-c", textwrap.dedent(code)], cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_building_torchvision_backbones_leaves_dynamo_unloaded_and_working():
    out = _fresh(
        """
        import json, sys
        import torch
        from braintl.models import create_model
        shapes = {}
        for name in ("mobilenet_v2", "vgg16", "resnet50", "scratch_cnn"):
            model = create_model(name, image_size=64).eval()
            shapes[name] = list(model(torch.zeros(1, 3, 64, 64)).shape)
        loaded = [m for m in ("torch._dynamo", "torch._dynamo.utils") if m in sys.modules]
        roi = sys.modules["torchvision.ops.roi_align"]  # the package's roi_align is a function
        supported = roi.is_compile_supported("cpu")  # the stand-in's function: loads dynamo
        import torch._dynamo.utils as real
        compiled = torch.compile(lambda x: torch.sin(x) * 2, backend="eager")
        x = torch.linspace(-3, 3, 7)
        print(json.dumps({
            "loaded_after_build": loaded,
            "shapes": shapes,
            "supported": supported,
            "real_supported": real.is_compile_supported("cpu"),
            "real_is_module": type(real).__name__ == "module" and hasattr(real, "counters"),
            "compiled_ok": bool(torch.equal(compiled(x), torch.sin(x) * 2)),
        }))
        """
    )
    assert out["loaded_after_build"] == []
    assert out["shapes"] == {name: [1] for name in out["shapes"]}
    assert out["supported"] is out["real_supported"] is True
    assert out["real_is_module"] and out["compiled_ok"]


def test_timm_loads_dynamo_whole_through_the_stand_in():
    """timm imports torch._dynamo itself while torchvision is loading under the stand-in:
    dynamo must then load with its real ``utils``, not the stand-in."""
    out = _fresh(
        """
        import json, sys
        import torch
        from braintl.models.without_dynamo import import_library
        import_library("timm")
        utils = sys.modules["torch._dynamo.utils"]
        import torch._dynamo
        compiled = torch.compile(lambda x: x + 1, backend="eager")
        print(json.dumps({
            "utils_type": type(utils).__name__,
            "bound": torch._dynamo.utils is utils,
            "compiled_ok": bool(torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))),
        }))
        """
    )
    assert out == {"utils_type": "module", "bound": True, "compiled_ok": True}


def test_a_failed_import_leaves_no_stand_in_behind():
    out = _fresh(
        """
        import json, sys
        import torch
        from braintl.models.without_dynamo import DYNAMO_UTILS, import_library
        finders = list(sys.meta_path)
        try:
            import_library("braintl_no_such_library")
            error = None
        except ModuleNotFoundError as exc:
            error = exc.name
        print(json.dumps({
            "error": error,
            "left": DYNAMO_UTILS in sys.modules,
            "finders_restored": sys.meta_path == finders,
        }))
        """
    )
    assert out == {"error": "braintl_no_such_library", "left": False, "finders_restored": True}


def test_meta_build_skips_random_fills_without_touching_the_generator_or_other_threads():
    state = torch.random.get_rng_state()
    with meta_build():
        layer = nn.Linear(64, 32)
        nn.init.kaiming_normal_(layer.weight, mode="fan_out")
        nn.init.trunc_normal_(tensor=layer.bias, std=0.02)  # the keyword form
        here = torch.empty(5, device="cpu").normal_()  # a CPU tensor is still filled
        elsewhere = {}
        thread = threading.Thread(target=lambda: elsewhere.update(layer=nn.Linear(4, 2)))
        thread.start()
        thread.join()
    assert layer.weight.is_meta and layer.bias.is_meta
    assert here.std() > 0
    assert not elsewhere["layer"].weight.is_meta  # the mode and device are this thread's
    assert elsewhere["layer"].weight.abs().sum() > 0
    # The CPU fill drew from the generator; rerun it alone: nothing else did.
    torch.random.set_rng_state(state)
    assert torch.equal(torch.empty(5).normal_(), here)
    assert not torch.empty(1).is_meta  # the meta device ends with the block
