"""Imports TF Model Garden's RPN pieces for side-by-side benchmarks, without its heavy package imports.

Install for the benchmarks only (not a dependency of rpn-tf):

    pip install --no-deps tf-models-official==2.20.0 tf-keras==2.21.0 pyyaml gin-config

``official/vision/__init__.py`` imports every task and config of the Model Garden (TFDS, pycocotools, …); the ops
used here need none of it, so the package modules on the way are created empty and only the needed files are
imported: ``official.vision.ops.anchor`` (``RpnAnchorLabeler``) and
``official.vision.modeling.layers.roi_generator`` (``MultilevelROIGenerator``).
"""

import importlib
import os
import sys
import types

INSTALL = "pip install --no-deps tf-models-official==2.20.0 tf-keras==2.21.0 pyyaml gin-config"


def import_model_garden(modules=("official.vision.ops.anchor", "official.vision.modeling.layers.roi_generator"),
                        empty=()):
    """The named modules of the installed tf-models-official (default: ``(anchor, roi_generator)``), or ``None`` if
    absent. The packages on the way are created empty (their ``__init__`` imports all of Model Garden); ``empty``
    names further modules to stand in as empty ones (imported by a module but unused on the paths benchmarked)."""
    try:
        import official
    except ImportError:
        return None
    base = os.path.dirname(official.__file__)
    for package in ("vision", "vision/modeling", "vision/modeling/layers", "vision/ops"):
        name = "official." + package.replace("/", ".")
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [os.path.join(base, package)]
            sys.modules[name] = module
    for name in empty:
        sys.modules.setdefault(name, types.ModuleType(name))
    return tuple(importlib.import_module(name) for name in modules)
