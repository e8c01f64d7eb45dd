"""`jupyter console --kernel spindle-python`, driven in tmux like a person would."""
import os
import shlex
import subprocess
import sys
import time
import pathlib

import psutil

BIN = pathlib.Path(sys.executable).parent


def kernel_procs(runtime_dir):
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if runtime_dir in cmd and " kernel " in cmd:
            out.append(p)
    return out


class Tmux:
    def __init__(self, tmux, name):
        self.tmux, self.sock, self.name = tmux, f"spindle-jtest-{os.getpid()}", name

    def cmd(self, *args, **kw):
        return subprocess.run([self.tmux, "-L", self.sock, *args], capture_output=True,
                              text=True, timeout=10, **kw)

    def screen(self):
        return self.cmd("capture-pane", "-p", "-J", "-S", "-200", "-t", self.name).stdout

    def send(self, *keys):
        self.cmd("send-keys", "-t", self.name, *keys)

    def wait_for(self, text, timeout=30, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.screen()
            if s.count(text) > after:
                return s
            time.sleep(0.1)
        raise AssertionError(f"{text!r} did not appear; screen:\n{self.screen()}")


def test_console_runs_a_cell_and_answers_input(tmux, tmp_path):
    runtime = os.environ["JUPYTER_RUNTIME_DIR"]
    script = tmp_path / "console.sh"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in os.environ.items()
                      if k.isidentifier())
    script.write_text(
        "#!/bin/sh\n" + exports +
        f"exec {shlex.quote(str(BIN / 'jupyter'))} console --kernel spindle-python "
        "--ZMQTerminalInteractiveShell.simple_prompt=True\n")
    script.chmod(0o755)
    t = Tmux(tmux, "console")
    try:
        r = t.cmd("new-session", "-d", "-s", "console", "-x", "160", "-y", "50", str(script))
        assert r.returncode == 0, r.stderr
        t.wait_for("In [1]", timeout=60)
        assert kernel_procs(runtime), "the console should have started a Spindle kernel"
        t.send("print(6 * 7)", "Enter")
        t.wait_for("42")
        t.send("name = input('Your name? ')", "Enter")
        t.wait_for("Your name? ")
        t.send("Ada", "Enter")
        t.wait_for("In [3]")
        t.send("print('hello', name)", "Enter")
        t.wait_for("hello Ada")
        t.send("exit", "Enter")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and t.cmd("has-session", "-t", "console").returncode == 0:
            time.sleep(0.2)
        assert t.cmd("has-session", "-t", "console").returncode != 0, t.screen()
        leftover = psutil.wait_procs(kernel_procs(runtime), timeout=10)[1]
        assert not leftover, leftover
    finally:
        t.cmd("kill-server")
