"""Keep liblsl on loopback.

liblsl reads its configuration once, at the first LSL call of the process, and silently falls
back to multicast discovery on every interface when no configuration is found. Every entry point
that touches LSL therefore calls :func:`use_loopback_config` before importing pylsl.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

LOOPBACK_CONFIG = Path(__file__).with_name("resources") / "lsl_api.cfg"


def use_loopback_config(config_file: str | os.PathLike | None = None) -> Path:
    """Point liblsl at ``config_file`` (default: the loopback-only config) via ``LSLAPICFG``.

    An ``LSLAPICFG`` already set in the environment wins over the default but not over an
    explicit ``config_file``. Raises ``FileNotFoundError`` for a missing file, because liblsl
    would otherwise fall back to LAN multicast without a word.
    """
    if config_file is not None:
        path = Path(config_file)
    else:
        path = Path(os.environ.get("LSLAPICFG", LOOPBACK_CONFIG))
    if not path.is_file():
        raise FileNotFoundError(f"LSL configuration file not found: {path}")
    os.environ["LSLAPICFG"] = str(path.resolve())
    return path


def in_loopback_namespace() -> bool:
    """True when the only network interface this process can see is ``lo``."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]
