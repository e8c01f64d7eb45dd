"""Connection files hold the signing key, and often live in shared directories (`/tmp`): nothing
another user planted there may end up holding it (issue 12, fault 4).

Spindle used to write them through a predictable temporary name, `<name>.tmp<pid>`, opened with
create and truncate, so a file pre-created there with mode 0644 kept that mode (and got the key),
and a symbolic link planted there was followed. These tests plant both at exactly that name (the
shell learns its pid with `$$` and then `exec`s spindle, which keeps it) and check the real
binary: the connection file is a regular file of mode 0600 whatever the umask, and nothing is
written through a link. A link at the connection file's own path is refused with a clear error.
"""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.timeout(120)

VICTIM_TEXT = "the victim's own file\n"


def start(spindle_bin, env, tmp_path, plant, *args):
    """`spindle ARGS` under umask 022, after `plant` (shell code; `$T$$` is the old temporary
    name of `conn.json` for the pid spindle will have)."""
    script = f"umask 022; {plant}; exec \"$@\""
    env = dict(env, T=str(tmp_path / "conn.tmp"))
    log = open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen(["sh", "-c", script, "sh", str(spindle_bin), *args], env=env,
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)
    return proc, log


def wait_written(proc, path, done, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = json.loads(path.read_text())
            if done(info):
                return info
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert proc.poll() is None, f"spindle exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.02)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def observed(path):
    """What the connection file is while spindle runs (serve removes it when it stops)."""
    return {"symlink": path.is_symlink(), "mode": os.lstat(path).st_mode & 0o777}


def assert_private_regular(seen):
    assert not seen["symlink"], "the connection file is a symbolic link"
    assert seen["mode"] == 0o600, oct(seen["mode"])


def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text(VICTIM_TEXT)
    v.chmod(0o644)
    return v


PRECREATED = 'printf stale > "$T$$"; chmod 644 "$T$$"'
SYMLINKED = 'ln -s victim.txt "$T$$"'


def serve(spindle_bin, test_env, tmp_path, plant):
    conn = tmp_path / "conn.json"
    proc, log = start(spindle_bin, test_env, tmp_path, plant,
                      "serve", "--connection-file", str(conn))
    try:
        info = wait_written(proc, conn, lambda i: "key" in i)
        return observed(conn), info
    finally:
        stop(proc)
        log.close()


def kernel(spindle_bin, test_env, tmp_path, plant):
    """`spindle kernel -f conn.json` with every port 0: it writes the ports it bound back."""
    conn = tmp_path / "conn.json"
    key = os.urandom(16).hex()
    conn.write_text(json.dumps({
        "ip": "127.0.0.1", "transport": "tcp", "shell_port": 0, "iopub_port": 0,
        "stdin_port": 0, "control_port": 0, "hb_port": 0, "key": key,
        "signature_scheme": "hmac-sha256", "kernel_name": "spindle-python"}))
    conn.chmod(0o600)
    env = dict(test_env)
    env.pop("JPY_PARENT_PID", None)
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    proc, log = start(spindle_bin, env, tmp_path, plant, "kernel", "-f", str(conn))
    try:
        info = wait_written(proc, conn, lambda i: i.get("shell_port", 0) != 0)
        assert info["key"] == key
        return observed(conn), info
    finally:
        stop(proc)
        log.close()


@pytest.mark.parametrize("host", [serve, kernel], ids=["serve", "kernel"])
def test_connection_file_is_private_despite_a_precreated_temporary(host, spindle_bin, test_env,
                                                                    tmp_path):
    seen, _ = host(spindle_bin, test_env, tmp_path, PRECREATED)
    assert_private_regular(seen)
    # The planted file was never opened.
    stale = [p for p in tmp_path.glob("conn.tmp*")]
    assert [p.read_text() for p in stale] == ["stale"], stale


@pytest.mark.parametrize("host", [serve, kernel], ids=["serve", "kernel"])
def test_connection_file_is_not_written_through_a_symlinked_temporary(host, spindle_bin,
                                                                      test_env, tmp_path):
    v = victim(tmp_path)
    seen, info = host(spindle_bin, test_env, tmp_path, SYMLINKED)
    assert_private_regular(seen)
    assert v.read_text() == VICTIM_TEXT, "the key was written through the planted link"
    assert info["key"] not in v.read_text()


def test_a_symlink_at_the_connection_file_is_refused(spindle_bin, test_env, tmp_path):
    v = victim(tmp_path)
    conn = tmp_path / "conn.json"
    conn.symlink_to("victim.txt")
    proc, log = start(spindle_bin, test_env, tmp_path, "true",
                      "serve", "--connection-file", str(conn))
    try:
        code = proc.wait(30)
    finally:
        stop(proc)
        log.close()
    err = (tmp_path / "stderr.log").read_text()
    assert code != 0, err
    assert "symbolic link" in err and str(conn) in err, err
    assert conn.is_symlink()
    assert v.read_text() == VICTIM_TEXT
    assert not list(tmp_path.glob(".conn.json.*")), "a temporary was left behind"
