"""Where the files bundled with the package live: the one place that knows.

Importing this module costs nothing (no torch, no MNE), so model-free commands can find the
bundled recording and model without paying for the model library.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: The bundled model directory (``config.json`` + ``model.safetensors``); ``--model default``.
DEFAULT_MODEL_DIR = PACKAGE_DIR / "default_model"

#: The bundled real recording: 60 EEG + 306 MEG of the MNE sample subject, 600.615 Hz, 24 s.
SAMPLE_RECORDING = PACKAGE_DIR / "recordings" / "test_raw.fif"
