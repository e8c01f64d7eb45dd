"""Fixtures for the Jupyter kernel tests.

Kernelspecs are installed into a temporary prefix that JUPYTER_PATH points at, and the Jupyter
runtime dir (connection files) and Spindle's history store (XDG_DATA_HOME) are temporary too, so
the user's real directories are never touched. jupyter_client starts kernels from this process's
environment, so the variables are set in os.environ for the whole test session.
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

KERNELS = ("spindle-python", "spindle-bash", "spindle-node")


@pytest.fixture(scope="session", autouse=True)
def jupyter_env(spindle_bin, test_env):
    saved = dict(os.environ)
    root = pathlib.Path(tempfile.mkdtemp(prefix="spindle-jupyter-"))
    prefix = root / "prefix"
    env = dict(test_env)
    env.update(
        JUPYTER_PATH=str(prefix / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        XDG_DATA_HOME=str(root / "xdg-data"),
        IPYTHONDIR=str(root / "ipython"),
        JUPYTER_PLATFORM_DIRS="0",
    )
    subprocess.run(
        [str(spindle_bin), "--python", sys.executable, "kernel", "install", "--prefix", str(prefix)],
        env=env, check=True, capture_output=True, timeout=60,
    )
    os.environ.clear()
    os.environ.update(env)
    try:
        yield {"root": root, "prefix": prefix, "env": env}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        subprocess.run(["rm", "-rf", str(root)], check=False)
