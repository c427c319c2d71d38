"""Import diffusers' UNet and VAE modules without the parts of diffusers rdeic never runs.

``from diffusers import UNet2DConditionModel`` costs about 3.5 s on the project's 2-core CPU on top of
torch (``python -X importtime``): diffusers imports ``torch._dynamo`` (about 1 s) for decorators that
only matter under ``torch.compile``, ``scipy.stats`` (about 1.2 s) for schedulers rdeic does not use,
and the package ``__init__`` of ``diffusers.models.unets``/``autoencoders``/``transformers`` imports
every model diffusers has. :func:`import_module` imports one concrete module (and what it imports)
with, for the duration of that import only:

* ``torch._dynamo`` unavailable and ``torch.compiler.disable`` the identity: diffusers then uses its
  own no-op fallback for ``allow_in_graph``. The classes are the same; only ``torch.compile`` of them
  would trace differently, and rdeic never compiles.
* diffusers' "is scipy available" flag false, so its scheduler modules skip ``import scipy.stats``
  (used only for beta-sigma schedules).
* ``importlib.metadata.packages_distributions`` returning nothing: diffusers calls it once to map
  module names to distribution names (0.2 s scanning every installed package), needed only for three
  optional integrations rdeic does not use (optimum-quanto, flashinfer, modelopt);
* placeholder packages for the three ``__init__`` files above, so that only the submodules imported
  are executed. They are removed afterwards: a later ``import diffusers.models.transformers`` runs the
  real ``__init__``, which finds the modules imported here already loaded.

Anything unexpected (another diffusers layout) falls back to a plain import, which is slower but
correct.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import sys
import types

_PLACEHOLDER_PACKAGES = ("diffusers.models.unets", "diffusers.models.autoencoders", "diffusers.models.transformers")
_SKIPPED = ("torch._dynamo",)


class _Skip(importlib.abc.MetaPathFinder):
    """Makes the listed modules (and their submodules) raise ImportError while it is installed."""

    def find_spec(self, name, path=None, target=None):
        if any(name == s or name.startswith(s + ".") for s in _SKIPPED):
            raise ImportError(f"{name} is skipped while rdeic imports diffusers")
        return None


def _identity_disable(fn=None, recursive=True, **kwargs):
    return fn if fn is not None else (lambda f: f)


def import_module(name: str) -> types.ModuleType:
    """Import ``name`` (a module inside ``diffusers``), cheaply when possible.

    Args:
        name: a concrete module, e.g. ``diffusers.models.unets.unet_2d_condition``.
    """
    if name in sys.modules:
        return sys.modules[name]
    import torch

    # Once torch._dynamo is loaded (say, by training code) there is nothing to gain from skipping it.
    skip = _Skip() if "torch._dynamo" not in sys.modules else None
    real_disable = torch.compiler.disable
    real_distributions = importlib.metadata.packages_distributions
    placeholders: list[str] = []
    flags, real_scipy = None, None
    try:
        if skip is not None:
            sys.meta_path.insert(0, skip)
            torch.compiler.disable = _identity_disable
        importlib.metadata.packages_distributions = dict
        import diffusers.models  # noqa: F401 - the (lazy) package; its __init__ imports no model
        import diffusers.utils.import_utils

        flags = diffusers.utils.import_utils
        real_scipy = flags._scipy_available
        flags._scipy_available = False
        for package in _PLACEHOLDER_PACKAGES:
            if package not in sys.modules:
                spec = importlib.util.find_spec(package)
                module = types.ModuleType(package)
                module.__path__ = list(spec.submodule_search_locations)
                module.__spec__ = spec
                sys.modules[package] = module
                placeholders.append(package)
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any surprise: undo below, then import the ordinary way
        pass
    finally:
        importlib.metadata.packages_distributions = real_distributions
        if skip is not None:
            sys.meta_path.remove(skip)
            torch.compiler.disable = real_disable
        if real_scipy is not None:
            flags._scipy_available = real_scipy
        for package in placeholders:
            del sys.modules[package]
            parent, _, child = package.rpartition(".")
            vars(sys.modules[parent]).pop(child, None)
    return importlib.import_module(name)
