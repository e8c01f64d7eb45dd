"""Driving the real `spindle` REPL in a real terminal: tmux, one private server (`-L`) per test.

`Pane` (tests/tmux_pane.py, shared with tests/llm) starts the REPL in a detached tmux session,
types with `send-keys`, and reads the screen with `capture-pane`, polling with time limits (never
sleeping blindly). Every process the test started (tmux, the REPL, its language sessions) must be
gone 10 s after tmux is: the fixture fails naming any that is not (and kills it).
"""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from tmux_pane import Pane  # noqa: E402


@pytest.fixture
def repl_env(test_env, tmp_path):
    """The test environment with history and saved outputs kept under tmp_path."""
    env = dict(test_env)
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.pop("NO_COLOR", None)
    env.pop("TMUX", None)
    env.pop("SPINDLE_IMAGES", None)
    return env


@pytest.fixture
def start_repl(tmux, spindle_bin, repl_env, tmp_path):
    """Start `spindle repl ARGS` in a fresh tmux server; every pane is closed afterwards."""
    panes = []
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)

    def start(*args, env=None, cwd=None, first_prompt=("python", 1), **kw):
        pane = Pane(tmux, [spindle_bin, "repl", *args], env or repl_env, cwd or workdir, **kw)
        panes.append(pane)
        if first_prompt:
            pane.wait_prompt(*first_prompt)
        return pane

    yield start
    left = []
    for p in panes:
        left += p.close()
    assert not left, "the REPL left processes behind (now killed): " + "; ".join(left)


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir(exist_ok=True)
    return d
