"""Keep liblsl on loopback.

liblsl reads its configuration once, at the first LSL call of the process, and silently falls
back to multicast discovery on every interface when no configuration is found. Every entry point
that touches LSL therefore calls :func:`use_loopback_config` before importing pylsl.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# Bundled with the package, beside serving/ (brainformer_rt/resources/).
LOOPBACK_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "lsl_api.cfg"


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


_NETNS_MARK = "BRAINFORMER_NETNS_REEXEC"


def reexec_in_loopback_namespace() -> bool:
    """Re-run this command inside a private network namespace that has only ``lo``.

    Used by the commands that start their own LSL streams (``demo``, ``bench``): inside such a
    namespace nothing they send can leave the machine, whatever liblsl does. Needs root or
    unprivileged user namespaces; when neither works, returns False (the caller warns and goes
    on with the loopback-only config alone). Does not return when the re-exec happens.
    """
    if in_loopback_namespace():
        return True
    if os.environ.get(_NETNS_MARK):
        return False  # we already tried once; the namespace did not come up
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return False
    flag = "-n" if os.geteuid() == 0 else "-rn"
    probe = subprocess.run([unshare, flag, ip, "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        logger.debug("no private network namespace: %s", probe.stderr.decode(errors="replace").strip())
        return False
    env = dict(os.environ, **{_NETNS_MARK: "1"})
    script = 'ip link set lo up && exec "$@"'
    argv = [unshare, flag, "sh", "-c", script, "netns", sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(unshare, argv, env)
    return True  # unreachable


#: What a command says when it has to go on without a private namespace.
NO_NAMESPACE_WARNING = ("no loopback-only network namespace here (needs root or unprivileged user namespaces); "
                        "LSL stays on the loopback-only configuration alone")


def loopback_only(config_file: str | os.PathLike | None = None) -> bool:
    """The loopback LSL configuration, then a re-exec into a private namespace when the machine
    allows it: what a script that opens its own LSL streams does first. False (and a warning
    on stderr) when it goes on without the namespace."""
    use_loopback_config(config_file)
    if reexec_in_loopback_namespace():
        return True
    print(f"warning: {NO_NAMESPACE_WARNING}", file=sys.stderr)
    return False
