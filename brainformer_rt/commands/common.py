"""What every `brainformer-rt` command shares: the liblsl configuration option."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["LSL_CONFIG_HELP", "enter_loopback_namespace", "use_lsl_config"]

LSL_CONFIG_HELP = "liblsl configuration file (default: the loopback-only one shipped with the package)."


def use_lsl_config(config_file: Optional[Path]) -> None:
    """Point liblsl at ``config_file`` (default: the loopback-only one) before pylsl is imported."""
    from brainformer_rt.serving.lsl_config import use_loopback_config

    use_loopback_config(config_file)


def enter_loopback_namespace(err_console) -> None:
    """Re-execute this command inside a loopback-only network namespace when the machine allows
    it (root or user namespaces); otherwise warn on ``err_console`` and go on with the loopback
    LSL configuration alone."""
    from brainformer_rt.serving.lsl_config import NO_NAMESPACE_WARNING, reexec_in_loopback_namespace

    if not reexec_in_loopback_namespace():
        err_console.print(f"[yellow]warning:[/] {NO_NAMESPACE_WARNING}", highlight=False, soft_wrap=True)
