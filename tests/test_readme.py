"""README.md and the docs/ pages kept true: what they show runs, with small inputs and short durations.

- Command lines (bash blocks, the command tables, inline code) of the README and of every
  docs/*.md page: each names a real command of `brainformer` / `brainformer-rt`, and each
  `--flag` is in that command's `--help`; every command of both programs is in the tables of
  docs/cli.md.
- README "The model": the Python snippet runs as is.
- README "Read the output": the ZeroMQ subscriber snippet runs against a live `serve` (its
  address and its endless loop substituted, see `bounded_subscriber`), and the header keys
  docs/wire-formats.md lists are the ones the daemon sends.
- README "Train on your own data": the four commands on a tiny BIDS root made from the bundled
  recording (substitutions listed in `training_commands`).
- README "Quickstart": `make demo` / `make test` stay wired to the demo and to pytest (the demo
  itself runs in tests/rt/test_demo.py; CI runs `make test`).
- Paths the pages name exist; their relative links resolve (files and headings); the README
  links every docs page.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import mne
import mne_bids
import pytest
import torch
import typer
import zmq
from typer.testing import CliRunner

from brainformer.data import is_prepared_dataset
from brainformer_rt.tools._proc import free_tcp_address
from tests.rt.conftest import rt_cli, stop_process

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
#: Every page whose commands and paths are checked: the README, then docs/*.md.
PAGES = [README, *sorted(DOCS.glob("*.md"))]
#: The page whose tables document every command with every option.
CLI_PAGE = DOCS / "cli.md"
#: The page that defines the ZeroMQ messages field by field.
WIRE_PAGE = DOCS / "wire-formats.md"
#: The programs the README documents and the modules behind them (as in pyproject's scripts).
PROGRAMS = {"brainformer": "brainformer.cli", "brainformer-rt": "brainformer_rt.cli"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Top-level folders of the repository: a path a page names starting with one of them must exist.
REPO_DIRS = ("brainformer", "brainformer_rt", "configs", "scripts", "docs", "benchmarks", "tests", "examples")
#: Harness settings for the daemons started here: the CPU (the README's commands name no device,
#: and on a GPU machine `auto` would serve with another engine than the one meant here), one torch
#: thread (the cores are shared with the player and the subscriber) and no stale-window dropping
#: (a loaded test machine must not turn into zero windows served).
SERVE_TOML = 'device = "cpu"\ntorch_threads = 1\nmax_input_age_s = inf\n'
#: The environment of every program started here: no GPU visible, so the README's training
#: command (which names no device either) trains on the CPU on every machine.
CPU_ONLY_ENV = {"CUDA_VISIBLE_DEVICES": ""}
#: Seconds of the bundled recording in the tiny BIDS root (75 % train, 25 % held out).
BIDS_SECONDS = 12.0

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


# ----------------------------------------------------------------------------------------------
# Reading the pages
# ----------------------------------------------------------------------------------------------
@functools.lru_cache
def page_text(page: Path = README) -> str:
    return page.read_text(encoding="utf-8")


def page_name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def sections(page: Path = README) -> dict[str, str]:
    """``{"## title": body}`` of a page's second-level sections."""
    parts = re.split(r"^(## .+)$", page_text(page), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def section(prefix: str, page: Path = README) -> str:
    found = [body for title, body in sections(page).items() if title.startswith(f"## {prefix}")]
    assert len(found) == 1, f"{page_name(page)}: expected one section '## {prefix}…', found {len(found)}"
    return found[0]


def fenced_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def bash_lines(block: str) -> list[str]:
    """Command lines of a bash block: continuations joined, comments and blank lines dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def command_lines(page: Path = README) -> list[str]:
    """Every `brainformer …` / `brainformer-rt …` command line of a page: bash blocks, then
    inline code (the command tables and the prose), with the tables' escaped `\\|` unescaped."""
    text = page_text(page)
    lines = [line for block in fenced_blocks(text, "bash") for line in bash_lines(block)]
    prose = FENCE.sub("", text)
    lines += [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", prose)]
    return [line for line in lines if re.match(r"brainformer(-rt)? [a-z]", line)]


def parse_command_line(line: str) -> tuple[str, str, list[str]]:
    """``(program, command, flags)`` of ``brainformer-rt serve --stream X [--hop N]``; the command
    of a group's is both words (``engine build``)."""
    words = line.split()
    program, command = words[:2]
    if len(words) > 2 and command in program_groups(program):
        command = f"{command} {words[2]}"
    return program, command, FLAG.findall(line)


def table_commands(page: Path = CLI_PAGE) -> set[tuple[str, str]]:
    """``(program, command)`` of every row of a page's command tables (a group's command: both
    words, ``engine build``)."""
    rows = re.findall(r"^\| `(brainformer(?:-rt)? [a-z][a-z -]*)", page_text(page), flags=re.M)
    return {parse_command_line(row)[:2] for row in rows}


# ----------------------------------------------------------------------------------------------
# The programs
# ----------------------------------------------------------------------------------------------
def app_of(program: str) -> typer.Typer:
    return importlib.import_module(PROGRAMS[program]).app


@functools.lru_cache
def help_text(program: str, command: str) -> str:
    """What ``PROGRAM COMMAND --help`` prints, 200 columns wide so that no flag is cut.

    In-process through typer's runner (the same `app` the console scripts call): a subprocess per
    call would import torch and transformers again for each `brainformer` command.
    """
    result = CliRunner().invoke(app_of(program), [*command.split(), "--help"],
                                env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, f"{program} {command} --help exited {result.exit_code}: {result.output}"
    return result.output


def program_commands(program: str) -> set[str]:
    """Every command of ``program``; a group's as ``group command`` (``engine build``)."""
    commands = set()
    for name, command in typer.main.get_command(app_of(program)).commands.items():
        commands |= {f"{name} {sub}" for sub in command.commands} if hasattr(command, "commands") else {name}
    return commands


def program_groups(program: str) -> set[str]:
    """The command groups of ``program`` (``engine``)."""
    return {name for name, command in typer.main.get_command(app_of(program)).commands.items()
            if hasattr(command, "commands")}


def click_command(program: str, command: str):
    """The click command behind ``command`` (one word, or a group's two)."""
    found = typer.main.get_command(app_of(program))
    for word in command.split():
        found = found.commands[word]
    return found


def cli(program: str, *args: str) -> list[str]:
    """Command line of ``PROGRAM ARGS`` run by this interpreter."""
    return [sys.executable, "-m", PROGRAMS[program], *args]


def start_logged(command: list[str], log_stem: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A subprocess whose stdout/stderr go to ``<log_stem>.out`` / ``.err`` (no pipe to fill)."""
    with log_stem.with_suffix(".out").open("w") as out, log_stem.with_suffix(".err").open("w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, env=dict(os.environ, **CPU_ONLY_ENV))


def logs(log_stem: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in (log_stem.with_suffix(".out"), log_stem.with_suffix(".err")))


def start_player(log_stem: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``brainformer-rt simulate --loop`` under a name and source id no other stream has."""
    name = f"readme-eeg-{uuid.uuid4().hex[:8]}"
    player = start_logged(rt_cli("simulate", "--loop", "--name", name, "--source-id", f"test-{uuid.uuid4()}", *args),
                          log_stem)
    return player, name


# ----------------------------------------------------------------------------------------------
# Command lines: real commands, real flags
# ----------------------------------------------------------------------------------------------
#: ``(page, line)`` for every command line of every page.
COMMAND_LINES = [(page, line) for page in PAGES for line in command_lines(page)]
COMMAND_LINE_IDS = [f"{page_name(page)}: {' '.join(line.split()[:2])}" for page, line in COMMAND_LINES]


def test_the_readme_shows_command_lines_of_both_programs():
    programs = {parse_command_line(line)[0] for line in command_lines(README)}
    assert programs == set(PROGRAMS), command_lines(README)


@pytest.mark.parametrize("page, line", COMMAND_LINES, ids=COMMAND_LINE_IDS)
def test_command_line_names_a_real_command_and_real_flags(page, line):
    program, command, flags = parse_command_line(line)
    where = page_name(page)
    assert command in program_commands(program), f"{where}: `{line}`: {program} has no command {command!r}"
    help_output = help_text(program, command)
    unknown = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_output)]
    assert not unknown, f"{where}: `{line}`: not in `{program} {command} --help`: {unknown}"


@pytest.mark.parametrize("page, line", COMMAND_LINES, ids=COMMAND_LINE_IDS)
def test_listed_choices_are_named_in_the_help(page, line):
    """`--engine auto|eager|…`: each choice (not a placeholder like DIR) is named in the help."""
    program, command, _ = parse_command_line(line)
    help_output = help_text(program, command) if command in program_commands(program) else ""
    for flag, choices in re.findall(r"(--[a-z-]+) ([\w.:-]+(?:\|[\w.:-]+)+)", line):
        for choice in choices.split("|"):
            if choice != choice.upper():  # DIR, MODEL_DIR: placeholders, not values
                assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", help_output), (
                    f"{page_name(page)}: `{line}`: {flag} {choice!r} is not named in `{program} {command} --help`"
                )


def test_the_command_tables_document_every_command():
    documented = table_commands(CLI_PAGE)
    existing = {(program, command) for program in PROGRAMS for command in program_commands(program)}
    assert existing - documented == set(), "commands missing from the tables of docs/cli.md"
    assert documented - existing == set(), "docs/cli.md's tables list commands that do not exist"


def table_rows() -> list[tuple[Path, str]]:
    """``(page, command cell)`` of every command table row of every page, `\\|` unescaped."""
    return [(page, cell.replace("\\|", "|")) for page in PAGES
            for cell in re.findall(r"^\| `(brainformer(?:-rt)? [^`]+)` \|", page_text(page), flags=re.M)]


TABLE_ROWS = table_rows()


@pytest.mark.parametrize("page, row", TABLE_ROWS,
                         ids=[f"{page_name(page)}: {' '.join(row.split()[:2])}" for page, row in TABLE_ROWS])
def test_required_options_are_shown_unbracketed(page, row):
    """A table row shows optional flags in `[…]`: a required option must appear outside them."""
    program, command, _ = parse_command_line(row)
    unbracketed = row
    while re.search(r"\[[^\[\]]*\]", unbracketed):
        unbracketed = re.sub(r"\[[^\[\]]*\]", "", unbracketed)
    required = [max(param.opts, key=len) for param in click_command(program, command).params if param.required]
    assert not [flag for flag in required if flag not in FLAG.findall(unbracketed)], f"{page_name(page)}: {row}"


def test_the_command_tables_are_found():
    """The row checks above ran on docs/cli.md's tables, one row per command."""
    rows = [row for page, row in TABLE_ROWS if page == CLI_PAGE]
    assert len(rows) == sum(len(program_commands(program)) for program in PROGRAMS), rows


def test_every_lsl_command_takes_lsl_config():
    """docs/cli.md: "Every LSL command takes `--lsl-config FILE`" (every `brainformer-rt` command but
    those of `engine`, which handle the compiled forward's cache and never open LSL)."""
    missing = [command for command in sorted(program_commands("brainformer-rt"))
               if not command.startswith("engine ") and "--lsl-config" not in help_text("brainformer-rt", command)]
    assert not missing


def test_console_scripts_are_the_documented_programs():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {program: f"{module}:app" for program, module in PROGRAMS.items()}


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
def named_paths(page: Path) -> set[str]:
    """The repository paths a page names: written out from a top-level folder, the daemon's
    modules in a pipe diagram, the files on a layout block's configs/ line."""
    text = page_text(page)
    repo_path = re.compile(rf"(?<![\w./-])((?:{'|'.join(REPO_DIRS)})/[\w./*-]*)")
    named = {match.rstrip(".,") for match in repo_path.findall(text)}
    # A pipe diagram names the daemon's modules relative to brainformer_rt/serving/.
    for diagram in [block for block in fenced_blocks(text, "") if "LSL inlet" in block]:
        named |= {f"brainformer_rt/serving/{module}" for module in re.findall(r"[\w/]+\.py", diagram)}
    # A layout block's configs/ line names its files.
    for box in [block for block in fenced_blocks(text, "") if block.startswith("brainformer/")]:
        for configs_line in [line for line in box.splitlines() if line.startswith("configs/")]:
            named |= {f"configs/{name}" for name in re.findall(r"[\w-]+\.toml", configs_line)}
    return named


def test_the_readme_names_paths():
    assert len(named_paths(README)) > 10, named_paths(README)


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_paths_a_page_names_exist(page):
    missing = sorted(path for path in named_paths(page) if not list(REPO.glob(path.rstrip("/"))))
    assert not missing, f"{page_name(page)} names paths that do not exist: {missing}"


# ----------------------------------------------------------------------------------------------
# Links between the pages
# ----------------------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces → -."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page_text(page)), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links(page: Path) -> list[str]:
    return [link for link in LINK.findall(FENCE.sub("", page_text(page))) if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_relative_links_resolve(page):
    """Every relative link of a page names a file that exists, and a heading of it where it names one."""
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file)")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
            broken.append(f"{link} (no heading #{anchor})")
    assert not broken, f"{page_name(page)}: broken links: {broken}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in relative_links(README)}
    unlinked = [page_name(page) for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not unlinked, f"README links no docs page of: {unlinked}"


# ----------------------------------------------------------------------------------------------
# Quickstart
# ----------------------------------------------------------------------------------------------
def make_recipe(target: str) -> str:
    """The recipe lines of `target` in the Makefile."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", (REPO / "Makefile").read_text(), flags=re.M)
    assert match, f"Makefile has no target {target!r} with a recipe"
    return match.group(1)


def test_quickstart_commands_are_wired_to_the_demo_and_the_suite():
    [block] = fenced_blocks(section("Quickstart"), "bash")
    assert bash_lines(block) == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^NETNS\s*:=\s*scripts/netns-run\s*$", makefile, flags=re.M)
    # Both run in the loopback-only namespace, as the README says.
    assert re.search(r"^\t\$\(NETNS\) \$\(BIN\)/brainformer-rt demo\b", make_recipe("demo"), flags=re.M)
    assert re.search(r"^\t\$\(NETNS\) \$\(BIN\)/python -m pytest\b", make_recipe("test"), flags=re.M)
    # "Both set up .venv on first use", "After `make setup`".
    assert all(re.search(rf"^{target}: setup\b", makefile, flags=re.M) for target in ("demo", "test"))
    assert re.search(r"^setup:", makefile, flags=re.M)
    # CI runs the README's test command.
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci_lines
    # "~20 s, writes brainformer-demo.png": the demo's defaults.
    demo_help = help_text("brainformer-rt", "demo")
    assert "brainformer-demo.png" in demo_help and re.search(r"--duration\b.*\[default: 20(\.0)?\]", demo_help)


# ----------------------------------------------------------------------------------------------
# "The model": the snippet as is
# ----------------------------------------------------------------------------------------------
def test_the_model_snippet_runs_as_is(tmp_path, monkeypatch):
    [snippet] = fenced_blocks(section("The model"), "python")
    path = tmp_path / "snippet.py"
    path.write_text(snippet)
    monkeypatch.chdir(tmp_path)
    names = runpy.run_path(str(path), run_name="__main__")
    assert sorted(p.name for p in (tmp_path / "my-model").iterdir()) == ["config.json", "model.safetensors"]
    # What the daemon loads is the model that was saved.
    model, served = names["model"].state_dict(), names["served"].state_dict()
    assert model.keys() == served.keys()
    assert all(torch.equal(model[key], served[key]) for key in model)
    assert type(names["served"]) is type(names["model"])
    assert names["trunk"].config.window_samples == 256


# ----------------------------------------------------------------------------------------------
# "Read the output": the ZeroMQ subscriber against a live daemon
# ----------------------------------------------------------------------------------------------
def bounded_subscriber(snippet: str, address: str, messages: int) -> str:
    """The README's subscriber with two textual substitutions, each required to apply once: its
    address → `address`, and ``while True:`` → a loop of `messages` iterations."""
    for old in ('"tcp://127.0.0.1:5556"', "while True:"):
        assert snippet.count(old) == 1, f"README subscriber: expected {old!r} once"
    return snippet.replace('"tcp://127.0.0.1:5556"', repr(address)).replace(
        "while True:", f"for _ in range({messages}):")


def documented_header_keys() -> set[str]:
    match = re.search(r"header: UTF-8 JSON `\{([^}]*)\}`", section("ZeroMQ PUB", WIRE_PAGE))
    assert match, "docs/wire-formats.md: the ZeroMQ header keys are not listed as `{…}`"
    return {key.strip() for key in match.group(1).split(",")}


@pytest.mark.timeout(120)
def test_the_zeromq_subscriber_snippet_reads_a_live_daemon(tmp_path):
    [snippet] = fenced_blocks(section("Read the output"), "python")
    address = free_tcp_address()
    script = tmp_path / "subscriber.py"
    script.write_text(bounded_subscriber(snippet, address, messages=3))
    config = tmp_path / "serve.toml"
    config.write_text(SERVE_TOML)
    player, stream = start_player(tmp_path / "player")
    serve = start_logged(rt_cli("serve", "--stream", stream, "--model", "default", "--zmq", address,
                                "--lsl-name", f"{stream}-meg", "--wait", "30", "--config", str(config)),
                         tmp_path / "serve")
    subscriber = start_logged([sys.executable, str(script)], tmp_path / "subscriber", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while subscriber.poll() is None:
            assert serve.poll() is None, f"serve exited with {serve.returncode}:\n{logs(tmp_path / 'serve')}"
            assert time.monotonic() < deadline, f"the subscriber got no 3 messages:\n{logs(tmp_path / 'serve')}"
            time.sleep(0.1)
        output = logs(tmp_path / "subscriber")
        assert subscriber.returncode == 0, output
        lines = (tmp_path / "subscriber.out").read_text().splitlines()
        parsed = [re.fullmatch(r"(\d+) \((\d+), 306\) latency (-?\d+\.\d\d) ms", line) for line in lines]
        assert len(lines) == 3 and all(parsed), output
        sequence = [int(match.group(1)) for match in parsed]
        assert sequence == sorted(set(sequence)) and all(int(match.group(2)) > 0 for match in parsed)

        # The header keys docs/wire-formats.md lists are those the daemon sends.
        context = zmq.Context.instance()
        with context.socket(zmq.SUB) as sub:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"meg")
            sub.connect(address)
            for _ in range(3):
                assert sub.poll(30_000), "no message within 30 s"
                topic, header, payload = sub.recv_multipart()
                header = json.loads(header)
                assert topic == b"meg"  # one input stream
                assert set(header) - {"channels", "channel_types", "delay"} == documented_header_keys()
                assert ("channels" in header) == ("delay" in header) == (header["seq"] % 100 == 0)
                assert header["dtype"] == "float32"
                assert len(payload) == 4 * header["n_samples"] * header["n_channels"]
    finally:
        for process in (subscriber, serve, player):
            stop_process(process)


# ----------------------------------------------------------------------------------------------
# "Train on your own data": prepare → train → evaluate → serve on a tiny BIDS root
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bids_root(tmp_path_factory, sample_fif) -> Path:
    """A ds000117-like BIDS root: sub-01/ses-meg/meg/sub-01_ses-meg_task-facerecognition_run-01_meg.fif,
    the first `BIDS_SECONDS` of the bundled recording (so the README's evaluate path applies as is)."""
    work = tmp_path_factory.mktemp("readme-bids")
    cropped = work / "cropped_raw.fif"
    mne.io.read_raw_fif(sample_fif, verbose="error").crop(0, BIDS_SECONDS).save(cropped, verbose="error")
    raw = mne.io.read_raw_fif(cropped, verbose="error")
    raw.info["line_freq"] = 60.0
    root = work / "ds000117"
    bids_path = mne_bids.BIDSPath(subject="01", session="meg", task="facerecognition", run="01", datatype="meg",
                                  root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "No events found": the recording has none
        mne_bids.write_raw_bids(raw, bids_path, overwrite=True, verbose=False)
    return root


def training_commands(bids_root: Path, stream: str, zmq_address: str, serve_config: Path) -> list[list[str]]:
    """The README's four training commands, run in a scratch directory (so `runs/`, `eval.json`
    and `eval-plots` land there), with these substitutions:

    - ``/data/ds000117`` → the tiny BIDS root; ``configs/`` → this repository's configs;
    - train: ``--epochs 1`` added (speed);
    - serve: ``--stream EEG`` → the test's player (a unique name), and for an isolated run
      ``--wait 30 --stats-json stats.json``, a free ZeroMQ port, a unique LSL output name and the
      harness serve settings (`SERVE_TOML`); it is stopped by SIGTERM once it has published.
    """
    [block] = fenced_blocks(section("Train on your own data"), "bash")
    lines = bash_lines(block)
    assert [line.split()[:2] for line in lines] == [
        ["brainformer", "prepare"], ["brainformer", "train"], ["brainformer", "evaluate"], ["brainformer-rt", "serve"]
    ], lines
    commands = []
    for line in lines:
        line = line.replace("/data/ds000117", str(bids_root)).replace(" configs/", f" {REPO}/configs/")
        program, command, *args = shlex.split(line)
        if command == "train":
            args += ["--epochs", "1"]
        if command == "serve":
            assert args[:2] == ["--stream", "EEG"], args
            args = ["--stream", stream, *args[2:], "--wait", "30", "--stats-json", "stats.json",
                    "--zmq", zmq_address, "--lsl-name", f"{stream}-meg", "--config", str(serve_config)]
        commands.append(cli(program, command, *args))
    return commands


def run_step(command: list[str], cwd: Path, timeout_s: float = 150) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                            env=dict(os.environ, **CPU_ONLY_ENV))
    assert result.returncode == 0, (
        f"{' '.join(command[2:])} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_training_on_your_own_data(bids_root, tmp_path):
    serve_config = tmp_path / "serve.toml"
    serve_config.write_text(SERVE_TOML)
    run_file = next(bids_root.glob("sub-01/ses-meg/meg/*_meg.fif"))
    player, stream = start_player(tmp_path / "player", "--file", str(run_file))
    try:
        prepare, train, evaluate, serve = training_commands(bids_root, stream, free_tcp_address(), serve_config)
        assert Path(evaluate[evaluate.index("--data") + 1]) == run_file  # the README's run path, under the root

        run_step(prepare, tmp_path)
        assert is_prepared_dataset(tmp_path / "runs" / "ds117-data")

        run_step(train, tmp_path)
        model_dir = tmp_path / "runs" / "ds117-model"
        assert {"config.json", "model.safetensors"} <= {p.name for p in model_dir.iterdir()}
        assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))

        run_step(evaluate, tmp_path)
        scores = json.loads((tmp_path / "eval.json").read_text())
        for method in ("model", "ridge", "lagged_ridge"):
            assert math.isfinite(scores[method]["r_mean"]), method
        # The trained model predicts the held-out MEG: the 95 % bootstrap interval of its mean r
        # excludes chance (r = 0), and it beats the trivial predictor of the test mean (NMSE 1).
        model_scores = scores["model"]
        assert model_scores["bootstrap"]["r_mean"]["ci95"][0] > 0, model_scores["bootstrap"]["r_mean"]
        assert model_scores["nmse"] < 1.0, model_scores["nmse"]
        plots = sorted((tmp_path / "eval-plots").glob("*.png"))
        assert plots and all(p.read_bytes()[:8] == PNG_MAGIC for p in plots)

        # Served until its first prediction is published (an event, not a duration), then stopped.
        daemon = start_logged(serve, tmp_path / "serve", cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while "event=first_prediction" not in (tmp_path / "serve.err").read_text():
                assert daemon.poll() is None, f"serve exited with {daemon.returncode}:\n{logs(tmp_path / 'serve')}"
                assert time.monotonic() < deadline, f"serve published nothing:\n{logs(tmp_path / 'serve')}"
                time.sleep(0.1)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, logs(tmp_path / "serve")
        finally:
            stop_process(daemon)
        stats = json.loads((tmp_path / "stats.json").read_text())
        assert stats["streams"][stream]["windows_served"] > 0
    finally:
        stop_process(player)
