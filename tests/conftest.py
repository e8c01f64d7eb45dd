"""Shared fixtures for Spindle's end-to-end tests.

Every test here drives the real `spindle` binary (built by the README test command) with real
clients. Nothing is mocked.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _binary() -> pathlib.Path:
    env = os.environ.get("SPINDLE_BIN")
    if env:
        return pathlib.Path(env)
    return ROOT / "target" / "release" / "spindle"


@pytest.fixture(scope="session")
def spindle_bin() -> pathlib.Path:
    path = _binary()
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "spindle"], cwd=ROOT, check=True)
    assert path.exists(), f"spindle binary not found at {path}"
    return path


@pytest.fixture(scope="session")
def test_env() -> dict:
    """Environment for spawned Spindle processes: this venv's python first on PATH, so sessions
    see matplotlib, pandas and friends."""
    env = dict(os.environ)
    venv_bin = str(pathlib.Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["SPINDLE_PYTHON"] = sys.executable
    env.setdefault("SPINDLE_LOG", "warn")
    return env


@pytest.fixture(scope="session")
def tmux():
    path = shutil.which("tmux")
    assert path, "tmux is required (the README test command installs it)"
    return path
