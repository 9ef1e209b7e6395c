"""The package layout keeps its promises: model-free commands never import torch or transformers,
imports point one way (serving ← tools ← commands), and no module imports itself in a circle.

The import checks run real commands in fresh interpreters, since a module imported once by any
earlier test would hide the cost here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("brainformer", "brainformer_rt")
HEAVY = ("torch", "transformers")

# Runs one command line in-process, then reports which heavy modules it pulled in. The command's
# own exit code is kept, so a command that failed early (and so imported little) is caught.
_PROBE = textwrap.dedent("""
    import json, sys
    cli, argv = sys.argv[1], sys.argv[2:]
    if cli == "module":
        import runpy
        sys.argv = argv
        try:
            runpy.run_module(argv[0], run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
    else:
        from importlib import import_module
        app = import_module(cli).app
        try:
            app(argv, standalone_mode=False)
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
    heavy = [name for name in ("torch", "transformers") if name in sys.modules]
    print("PROBE " + json.dumps({"code": code, "heavy": heavy}))
""")


def _probe(cli: str, *argv: str, cwd: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE, cli, *argv], capture_output=True, text=True,
                            timeout=240, cwd=cwd)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"no probe line; stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(lines[-1].removeprefix("PROBE "))


@pytest.mark.parametrize("name, cli, argv, expected_code", [
    ("streams", "brainformer_rt.cli", ["streams", "--timeout", "0.2"], 0),
    ("listen", "brainformer_rt.cli", ["listen", "--zmq", "tcp://127.0.0.1:{port}", "--duration", "0.3"], 0),
    ("simulate --file", "brainformer_rt.cli", ["simulate", "--file", "{sample}", "--duration", "0.5",
                                               "--name", "{stream}"], 0),
    ("simulate --synthetic", "brainformer_rt.cli", ["simulate", "--synthetic", "sample", "--duration", "0.5",
                                                    "--name", "{stream}"], 0),
    ("engine status", "brainformer_rt.cli", ["engine", "status"], 0),
    ("relay", "module", ["brainformer_rt.tools.relay", "--stream", "{stream}", "--model", "default",
                         "--lsl-name", "{stream}-out", "--wait", "0.3"], 2),
    ("prepare", "brainformer.cli", ["prepare", "--data", "{sample}", "--out", "{tmp}/prepared"], 0),
    ("simulate-data", "brainformer.cli", ["simulate-data", "--duration", "2", "--out", "{tmp}/sim_raw.fif"], 0),
])
def test_model_free_commands_never_import_torch_or_transformers(name, cli, argv, expected_code, tmp_path,
                                                                 sample_fif):
    from brainformer_rt.tools._proc import free_tcp_address

    values = {"sample": str(sample_fif), "tmp": str(tmp_path), "stream": f"layout-{uuid.uuid4().hex[:8]}",
              "port": free_tcp_address().rsplit(":", 1)[1]}
    result = _probe(cli, *[arg.format(**values) for arg in argv], cwd=tmp_path)
    assert result["code"] == expected_code, f"{name} exited with {result['code']}"
    assert result["heavy"] == [], f"{name} imported {result['heavy']}"


def test_import_brainformer_is_lazy_and_still_registers_the_auto_classes(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import brainformer
        assert not any(name in sys.modules for name in {HEAVY!r}), "import brainformer imported a model"
        from transformers import AutoConfig, AutoModel  # imported after brainformer: registered all the same
        model = AutoModel.from_pretrained({str(REPO / "brainformer" / "default_model")!r})
        print(type(model).__name__, type(AutoConfig.for_model("brainformer")).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BrainformerModel", "BrainformerConfig"]


# ----------------------------------------------------------------------------------------------
# The import graph, read from the source (every import statement, also those inside functions)
# ----------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules ``module`` imports (``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return {name for name in found if name in known and name != module}


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (child for branch in node.orelse for child in _runtime_nodes_with(branch))
            continue
        yield node
        yield from _runtime_nodes(node)


def _runtime_nodes_with(node: ast.AST):
    yield node
    yield from _runtime_nodes(node)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {module: _imports(path, module, known) for module, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles: " + "; ".join(" → ".join(cycle) for cycle in cycles)


def test_imports_point_one_way():
    """serving/ is the pipe: it imports neither the companion tools nor the command layer; tools
    never import the command layer; typer and rich live in the command layers only, matplotlib
    there and in the evaluation's plots."""
    graph = _graph()
    wrong: list[str] = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("brainformer_rt.serving") and target.startswith(
                    ("brainformer_rt.tools", "brainformer_rt.commands", "brainformer_rt.cli")):
                wrong.append(f"{module} → {target}")
            if module.startswith("brainformer_rt.tools") and target.startswith(
                    ("brainformer_rt.commands", "brainformer_rt.cli")):
                wrong.append(f"{module} → {target}")
            if not module.endswith((".cli", ".commands")) and ".commands" not in module and target.startswith(
                    ("brainformer.commands", "brainformer_rt.commands")):
                wrong.append(f"{module} → {target}")
    modules = _modules()
    for module, path in modules.items():
        if ".commands" in module or module.endswith(".cli"):
            continue
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            presentation = ("typer", "rich") if module.endswith(".plots") else ("typer", "rich", "matplotlib")
            wrong += [f"{module} → {name}" for name in names if name.split(".")[0] in presentation]
    assert wrong == [], "imports against the layout: " + ", ".join(sorted(set(wrong)))
