"""The ``edgesam`` console entry point: dispatch, help listings, and no Ray import for help."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgesam.cli import COMMANDS, main
from edgesam.config_help import iter_keys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgesam.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0
    for name in ("cache", "distill", "eval", "export", "annotate", "serve", "bench"):
        assert f"  {name} " in out.stdout


def test_unknown_command_is_an_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.config])
def test_command_help_lists_every_config_key(name):
    from edgesam.cli import _resolve

    out = _run(name, "--help")
    assert out.returncode == 0, out.stderr
    keys = [k for k, _, _ in iter_keys(_resolve(COMMANDS[name].config))]
    assert len(keys) > 5
    for key in keys:
        assert f"  {key} = " in out.stdout, key


def test_help_does_not_import_ray():
    code = ("import sys; from edgesam.cli import command_help; command_help('distill'); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_docs_come_from_field_comments():
    from pipelines.distill_config import DistillConfig

    docs = {k: d for k, _, d in iter_keys(DistillConfig)}
    assert "tiny" in docs["cache.teacher.name"]
