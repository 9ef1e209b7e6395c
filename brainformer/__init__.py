"""brainformer: a transformer that predicts 306-channel MEG from EEG.

The package imports lazily (PEP 562): ``import brainformer`` and the model-free modules
(`brainformer.paths`, `brainformer.settings`, `brainformer.preprocessing`, `brainformer.data`,
`brainformer.simulation`) cost no torch or transformers import; the first use of a model name
below imports the model.

The model registers with the transformers Auto classes when its modules are imported, and
``import brainformer`` makes sure that happens before any Auto class is used, in either order
(``import transformers`` first or last), so a model directory loads with
``AutoConfig.from_pretrained(dir)`` / ``AutoModel.from_pretrained(dir)`` and no
``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

#: Public name → the module that defines it.
_EXPORTS = {
    "BrainformerConfig": "brainformer.configuration_brainformer",
    "BrainformerForMEGPrediction": "brainformer.modeling_brainformer",
    "BrainformerForMEGTokens": "brainformer.modeling_brainformer",
    "BrainformerMEGPredictionOutput": "brainformer.modeling_brainformer",
    "BrainformerMEGTokensOutput": "brainformer.modeling_brainformer",
    "BrainformerModel": "brainformer.modeling_brainformer",
    "BrainformerModelOutput": "brainformer.modeling_brainformer",
    "BrainformerPreTrainedModel": "brainformer.modeling_brainformer",
    "DEFAULT_MODEL_DIR": "brainformer.paths",
    "MEGQuantizer": "brainformer.quantization",
    "ModelDirError": "brainformer.model_dir",
    "load_model": "brainformer.model_dir",
    "resolve_model_dir": "brainformer.model_dir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'brainformer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _register_auto_classes() -> None:
    """Import the model modules, which register themselves with AutoConfig / AutoModel.

    When transformers is being imported by a model module itself (half initialised), that
    module registers at its own end: importing the other one now would be a circular import."""
    for name in ("brainformer.configuration_brainformer", "brainformer.modeling_brainformer"):
        module = sys.modules.get(name)
        if module is not None and getattr(module.__spec__, "_initializing", False):
            return
    importlib.import_module("brainformer.modeling_brainformer")


class _RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Runs `_register_auto_classes` right after ``transformers`` is first imported.

    ``import brainformer`` must not import transformers (seconds, and torch), yet a user who
    imports transformers afterwards expects the Auto classes to know the model already."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # once; and the real finders below find the spec
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
elif not any(isinstance(finder, _RegisterWhenTransformersLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTransformersLoads())
