"""docs/feedback.md kept true: its command lines name real commands and flags, the example
consumers it shows exist with the flags it uses, and both run against a live `serve --feedback`
as the page says (bounded by a sample count instead of a duration)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.rt.conftest import Player, Serve, stop_process
from tests.test_readme import bash_lines, fenced_blocks, help_text, parse_command_line, program_commands

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "feedback.md"
EXAMPLES = ("examples/feedback_pylsl.py", "examples/feedback_mne_lsl.py")


def page_lines() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return [line for block in fenced_blocks(text, "bash") for line in bash_lines(block)]


RT_LINES = [line for line in page_lines() if re.match(r"brainformer(-rt)? [a-z]", line)]
EXAMPLE_LINES = [line for line in page_lines() if line.startswith("python examples/")]


def test_the_page_shows_the_daemon_and_both_consumers():
    assert any(line.startswith("brainformer-rt serve") and "--feedback" in line for line in RT_LINES)
    assert any(line.startswith("brainformer-rt listen") for line in RT_LINES)
    assert {line.split()[1] for line in EXAMPLE_LINES} == set(EXAMPLES)


@pytest.mark.parametrize("line", RT_LINES)
def test_command_lines_name_real_commands_and_flags(line):
    program, command, flags = parse_command_line(line)
    assert command in program_commands(program)
    unknown = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])",
                                                       help_text(program, command))]
    assert not unknown, f"docs/feedback.md: `{line}`: not in `{program} {command} --help`: {unknown}"


@pytest.mark.parametrize("line", EXAMPLE_LINES)
def test_example_lines_use_real_flags(line):
    script = REPO / line.split()[1]
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    unknown = [flag for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line) if flag not in result.stdout]
    assert not unknown, f"docs/feedback.md: `{line}`: not in its --help: {unknown}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The page's set-up: the bundled recording played, served by the default model with the
    shipped feedback signals."""
    directory = tmp_path_factory.mktemp("docs-feedback")
    (directory / "serve.toml").write_text("torch_threads = 1\nmax_input_age_s = inf\nwait_s = 60.0\n")
    eeg, out = f"docs-eeg-{uuid.uuid4().hex[:8]}", f"docs-meg-{uuid.uuid4().hex[:8]}"
    player = Player(eeg, f"test-{uuid.uuid4()}")
    serve = Serve(directory, "--stream", eeg, "--model", "default", "--lsl-name", out, "--no-zmq",
                  "--feedback", str(REPO / "configs" / "feedback.toml"), "--config", str(directory / "serve.toml"))
    try:
        serve.wait_for_output("stop with Ctrl-C", timeout_s=240)
        yield f"{out}-feedback"
    finally:
        serve.close()
        player.stop()


@pytest.mark.parametrize("script", EXAMPLES)
def test_the_example_consumer_reads_the_live_feedback_stream(daemon, script, tmp_path):
    summary_path = tmp_path / "delays.json"
    process = subprocess.Popen([sys.executable, str(REPO / script), "--stream", daemon, "--samples", "12",
                                "--duration", "240", "--wait", "60", "--json", str(summary_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        out, err = process.communicate(timeout=280)
    finally:
        stop_process(process)
    assert process.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    transport = summary["delays"]["transport"]
    assert transport["n"] == 12 and transport["median_ms"] > 0
    assert summary["delays"]["display"]["n"] == 12
    if script.endswith("pylsl.py"):
        assert list(summary["signals"]) == ["alpha", "beta", "alpha_phase"]
        assert summary["signals"]["alpha_phase"]["unit"] == "rad" and summary["signals"]["alpha"]["delay_ms"] > 0
        assert "transport: median" in out
    else:
        assert summary["channels"] == ["alpha", "beta", "alpha_phase"]
