"""No log level may contain what the user typed, input replies or keys (issue 12, fault 6).

At SPINDLE_LOG=trace the REPL logged each line typed while code ran (a getpass() answer
included), and at SPINDLE_LOG=debug, which the README suggests, rustyline logged every keystroke
at the prompt; `spindle mcp` at debug logged whole requests, a `send_input` answer included.
These tests type marked secrets into the real binary at every level with stderr kept in a file,
and look for the markers in every shape a log could hold them: verbatim, as the bytes of a
`Vec<u8>` (`[80, 119, ...]`), as hex, and one character at a time (`'P'`, `'w'`, ... in key and
edit logs). At debug and trace the log must not be empty, so logging was on.
"""
import json
import os
import pathlib
import re
import secrets
import signal
import string
import subprocess
import sys
import time

import anyio
import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tmux_pane import Pane

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "native"))
from native_helpers import Server, is_finished  # noqa: E402

pytestmark = pytest.mark.timeout(180)

LEVELS = ["error", "warn", "info", "debug", "trace"]
TIMEOUT = 60


def marker(tag):
    """A secret-looking marker: letters only, so each shape of it is unambiguous."""
    return tag + "".join(secrets.choice(string.ascii_uppercase) for _ in range(16))


def leaks(log, secret):
    """How `secret` shows in `log`, or None."""
    if secret in log:
        return "verbatim"
    raw = secret.encode()
    if ", ".join(str(b) for b in raw) in log:
        return "as a byte list"
    if raw.hex() in log.lower():
        return "as hex"
    # One character at a time: the quoted characters of the log, in order, contain the secret.
    chars = iter(re.findall(r"'(.)'", log))
    if all(c in chars for c in secret):
        return "one character at a time"
    return None


def assert_no_leak(log, level, **markers):
    found = {name: how for name, m in markers.items() if (how := leaks(log, m))}
    assert not found, f"SPINDLE_LOG={level}: in the log: " + ", ".join(
        f"the {name} {how}" for name, how in found.items())
    if level in ("debug", "trace"):
        assert log.strip(), f"SPINDLE_LOG={level} logged nothing: the test proves nothing"


@pytest.fixture
def env(test_env, tmp_path):
    e = dict(test_env)
    e["XDG_DATA_HOME"] = str(tmp_path / "data")
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    for k in ("NO_COLOR", "TMUX", "SPINDLE_IMAGES", "RUST_LOG", "JPY_PARENT_PID"):
        e.pop(k, None)
    return e


@pytest.mark.parametrize("level", LEVELS)
def test_repl_logs_no_typed_input_at_any_level(level, spindle_bin, tmux, env, tmp_path):
    log = tmp_path / "stderr.log"
    env = dict(env, SPINDLE_LOG=level)
    at_prompt, password, answer, stdin_line = (
        marker("Prompt"), marker("Password"), marker("Answer"), marker("Stdin"))
    work = tmp_path / "work"
    work.mkdir()
    p = Pane(tmux, ["sh", "-c", 'exec "$0" repl 2>"$1"', spindle_bin, log], env, work)
    try:
        p.wait_prompt("python", 1, timeout=TIMEOUT)
        # Typed at the prompt (rustyline's keys and edits).
        p.run(f'at_prompt = "{at_prompt}"', "python", 2, timeout=TIMEOUT)
        # A getpass() answer, typed while code runs.
        p.line('import getpass; pw = getpass.getpass("Password: ")')
        p.wait_for(re.compile(r"^Password: $", re.M))
        p.line(password)
        p.wait_prompt("python", 3, timeout=TIMEOUT)
        # An input() answer.
        p.line('name = input("Name? ")')
        p.wait_for(re.compile(r"^Name\? $", re.M))
        p.line(answer)
        p.wait_prompt("python", 4, timeout=TIMEOUT)
        # A line a program reads from its terminal (no input request: written to stdin).
        p.line('%% read -r -p "line? " v; echo "read ${#v}"')
        p.wait_for(re.compile(r"^line\? $", re.M), timeout=TIMEOUT)
        p.line(stdin_line)
        p.wait_for(f"read {len(stdin_line)}")
        p.wait_prompt("python", 4, timeout=TIMEOUT)
        p.run("print(len(pw) + len(name), pw == at_prompt)", "python", 5, timeout=TIMEOUT)
        assert f"{len(password) + len(answer)} False" in p.output_after(
            "print(len(pw) + len(name), pw == at_prompt)")
        p.keys("C-d")
        p.wait_for("[exited 0]", timeout=TIMEOUT)
    finally:
        p.close()
    assert_no_leak(log.read_text(errors="replace"), level, typed_line=at_prompt,
                   password=password, input_answer=answer, stdin_line=stdin_line)


def test_jupyter_input_reply_is_not_logged_at_trace(spindle_bin, env, tmp_path):
    secret = marker("Jupyter")
    cf = str(tmp_path / "kernel.json")
    write_connection_file(cf, ip="127.0.0.1", key=os.urandom(16).hex().encode())
    log = tmp_path / "kernel.log"
    proc = subprocess.Popen([str(spindle_bin), "kernel", "-f", cf, "--language", "python"],
                            env=dict(env, SPINDLE_LOG="trace"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    kc = BlockingKernelClient(connection_file=cf)
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        msg_id = kc.execute('import getpass; pw = getpass.getpass("Password: ")',
                            allow_stdin=True)
        req = kc.get_stdin_msg(timeout=TIMEOUT)
        assert req["msg_type"] == "input_request" and req["content"]["password"]
        kc.input(secret)
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"
        reply = kc.execute("len(pw)", reply=True, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok"
        kc.shutdown()
        proc.wait(30)
    finally:
        kc.stop_channels()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert_no_leak(log.read_text(errors="replace"), "trace", input_reply=secret)


def test_native_input_reply_is_not_logged_at_trace(spindle_bin, env, tmp_path):
    secret = marker("Native")
    server = Server(spindle_bin, dict(env, SPINDLE_LOG="trace"), tmp_path)
    try:
        client = server.client()
        s = client.create("python")
        rid = client.send({"type": "execute", "session": s["id"],
                           "code": 'import getpass; pw = getpass.getpass("Password: "); '
                                   'print(len(pw))'})
        out = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            chunk = client.recv(rid, max(0.0, deadline - time.monotonic()))["chunk"]
            out.append(chunk)
            if chunk["type"] == "input_request" and "content" in chunk:
                assert client.ok({"type": "input_reply", "session": s["id"],
                                  "value": secret})["type"] == "ok"
            if is_finished(chunk):
                break
        assert any(str(len(secret)) in json.dumps(c) for c in out), out
        assert server.stop() == 0
        log = server.output()
        key = server.conn["key"]
    finally:
        server.close()
    assert_no_leak(log, "trace", input_reply=secret, key=key)


@pytest.mark.parametrize("level", ["debug", "trace"])
def test_mcp_send_input_is_not_logged(level, spindle_bin, env, tmp_path):
    secret = marker("Mcp")
    log = tmp_path / "mcp.log"

    async def body():
        params = StdioServerParameters(command=str(spindle_bin), args=["mcp"],
                                       env=dict(env, SPINDLE_LOG=level), cwd=str(tmp_path))
        with open(log, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    r = await s.call_tool("execute", {
                        "code": 'import getpass; pw = getpass.getpass("Password: ")\n'
                                'print("length", len(pw))',
                        "timeout_s": 60})
                    assert r.structured_content["status"] == "waiting_for_input", r
                    ex = r.structured_content["execution"]
                    a = await s.call_tool("send_input", {"session": "mcp-python",
                                                         "text": secret})
                    answered = "\n".join(c.text for c in a.content if c.type == "text")
                    assert "answered" in answered, answered
                    w = await s.call_tool("wait", {"execution": ex, "timeout_s": 30})
                    text = "\n".join(c.text for c in w.content if c.type == "text")
                    assert f"length {len(secret)}" in text, text

    anyio.run(body)
    assert_no_leak(log.read_text(errors="replace"), level, send_input=secret)
