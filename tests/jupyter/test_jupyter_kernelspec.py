"""`spindle kernel install` and what Jupyter makes of it."""
import json
import os
import subprocess
import sys
import pathlib

BIN = pathlib.Path(sys.executable).parent
NAMES = {"spindle-python": "python", "spindle-bash": "bash", "spindle-node": "javascript"}


def test_kernelspec_list_shows_the_three_kernels():
    out = subprocess.run([str(BIN / "jupyter"), "kernelspec", "list", "--json"],
                         capture_output=True, text=True, check=True, timeout=60, env=os.environ)
    specs = json.loads(out.stdout)["kernelspecs"]
    for name, language in NAMES.items():
        spec = specs[name]["spec"]
        assert spec["language"] == language
        assert spec["interrupt_mode"] == "signal"
        assert "Spindle" in spec["display_name"]
        assert spec["metadata"]["spindle"]["language"] == name.split("-")[1]
        argv = spec["argv"]
        assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
        assert argv[-4:-2] == ["-f", "{connection_file}"] and argv[-2:] == ["--language", name.split("-")[1]]


def install(spindle_bin, *args, env_extra=None, cwd=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([str(spindle_bin), "kernel", "install", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def test_user_install_goes_to_the_jupyter_data_dir(spindle_bin, tmp_path):
    r = install(spindle_bin, "--user", "--name", "mine", "--languages", "bash",
                env_extra={"JUPYTER_DATA_DIR": str(tmp_path / "data")})
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "data/kernels/mine-bash/kernel.json").read_text())
    assert spec["display_name"] == "Bash (Spindle)"
    assert not (tmp_path / "data/kernels/mine-python").exists()


def test_sys_prefix_uses_the_active_virtualenv(spindle_bin, tmp_path):
    r = install(spindle_bin, "--sys-prefix", env_extra={"VIRTUAL_ENV": str(tmp_path / "venv")})
    assert r.returncode == 0, r.stderr
    for name in NAMES:
        assert (tmp_path / "venv/share/jupyter/kernels" / name / "kernel.json").is_file()


def test_sys_prefix_without_virtualenv_asks_python3(spindle_bin, tmp_path):
    # A fake python3 first on PATH stands for "the python3 on PATH".
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(f"#!/bin/sh\necho {tmp_path / 'pyprefix'}\n")
    (fake / "python3").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "VIRTUAL_ENV": ""}
    r = install(spindle_bin, "--sys-prefix", "--languages", "python", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pyprefix/share/jupyter/kernels/spindle-python/kernel.json").is_file()


def test_interpreter_chosen_at_install_is_pinned(spindle_bin, tmp_path):
    env = dict(os.environ)
    r = subprocess.run([str(spindle_bin), "--python", sys.executable, "kernel", "install",
                        "--prefix", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/spindle-python/kernel.json").read_text())
    assert spec["argv"][1:3] == ["--python", sys.executable]


def test_conflicting_locations_are_refused(spindle_bin, tmp_path):
    r = install(spindle_bin, "--user", "--prefix", str(tmp_path))
    assert r.returncode != 0
    assert not (tmp_path / "share").exists()


def test_kernel_without_connection_file_explains(spindle_bin):
    r = subprocess.run([str(spindle_bin), "kernel"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "connection file" in r.stderr
