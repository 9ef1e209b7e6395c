"""Compiles the ``aot`` engine's packages in a process of its own, at the lowest CPU priority.

The ``auto`` engine runs this while the daemon serves with ``eager`` (`engine_switch`):
compiling inside the daemon would hold Python's GIL for seconds at a time and stall serving.

    python -m brainformer_rt.serving.aot_build --model DIR --window 128 --output-samples 32 \\
        --threads 1 --package 1=CACHE/KEY.pt2 [--package 2=...]

The daemon names each package's path: the cache key is computed there, from the model it
serves, so that the next start finds the package under the same key. This process loads the
same weights (``DIR`` holds what the daemon saved of its model) and writes the packages.
Exit 0 when every package was written; 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional


def _packages(values: List[str]) -> Dict[int, Path]:
    packages = {}
    for value in values:
        bucket, sep, path = value.partition("=")
        if not sep or not bucket.isdigit() or not path:
            raise SystemExit(f"aot_build: --package must be BUCKET=PATH, got {value!r}")
        packages[int(bucket)] = Path(path)
    return packages


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainformer_rt.serving.aot_build", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json + model.safetensors)")
    parser.add_argument("--window", type=int, required=True, help="samples per window")
    parser.add_argument("--output-samples", type=int, required=True, help="newest samples predicted per window")
    parser.add_argument("--threads", type=int, required=True, help="torch threads of the serving process")
    parser.add_argument("--package", action="append", required=True, metavar="BUCKET=PATH")
    args = parser.parse_args(argv)
    packages = _packages(args.package)

    import torch

    from brainformer.model_dir import load_model
    from brainformer_rt.serving.engine import AotEngine

    # The kernels are compiled for the serving process's thread count (part of the cache key).
    torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model, device="cpu")
        engine = AotEngine(model, torch.device("cpu"), max(packages), args.window,
                           buckets=sorted(packages), output_samples=args.output_samples)
        for bucket, path in sorted(packages.items()):
            engine.compile_package(bucket, path)
    except Exception as error:  # noqa: BLE001 - reported to the daemon as one line
        print(f"aot_build: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
