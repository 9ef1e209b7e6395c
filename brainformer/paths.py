"""Where the files bundled with the package live: the one place that knows.

Importing this module costs nothing (no torch, no MNE), so model-free commands can find the
bundled recording and model without paying for the model library.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: The bundled model directory (``config.json`` + ``model.safetensors``); ``--model default``.
DEFAULT_MODEL_DIR = PACKAGE_DIR / "default_model"

#: The bundled low-delay model: trained on the zero-phase MEG (the brain as it is now);
#: ``--model default-lowdelay``.
LOWDELAY_MODEL_DIR = PACKAGE_DIR / "default_lowdelay_model"

#: Names that stand for a bundled model wherever a model directory is asked for.
BUNDLED_MODELS = {"default": DEFAULT_MODEL_DIR, "default-lowdelay": LOWDELAY_MODEL_DIR}

#: The bundled real recording: 60 EEG + 306 MEG of the MNE sample subject, 600.615 Hz, 24 s.
SAMPLE_RECORDING = PACKAGE_DIR / "recordings" / "test_raw.fif"
