"""REPL latency as a person feels it, measured through tmux (keys in, screen out).

Compares `spindle repl` (embedded kernel, and --connect to `spindle serve`) with
`jupyter console` on ipykernel:

- start: launch → first result of `1+1` on screen (the language process included);
- round trip: Enter on `x = 1` → the next prompt, median of N;
- Ctrl-C: key → prompt back while `time.sleep(60)` runs, median of N.

Run: .venv/bin/python bench/repl_latency.py [--n 20]
(needs tmux, target/release/spindle, and jupyter_console + ipykernel in the venv)
"""
import argparse
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPINDLE = os.environ.get("SPINDLE_BIN", str(ROOT / "target" / "release" / "spindle"))


class Pane:
    def __init__(self, argv, env):
        self.sock = "spindle-bench-" + uuid.uuid4().hex[:8]
        self.env = env
        cmd = "trap true INT; " + " ".join(shlex.quote(a) for a in argv) + "; sleep 600"
        self.t0 = time.monotonic()
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "50", "sh", "-c", cmd)

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, *args], env=self.env,
                              capture_output=True, text=True, timeout=20).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-J", "-S", "-5000")

    def wait(self, rx, timeout=60):
        rx = re.compile(rx, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rx.search(self.screen()):
                return time.monotonic()
            time.sleep(0.005)
        raise TimeoutError(rx.pattern + "\n" + self.screen())

    def keys(self, *k):
        self.tmux("send-keys", *k)

    def line(self, text):
        self.tmux("send-keys", "-l", "--", text)
        self.keys("Enter")

    def close(self):
        sock = self.tmux("display-message", "-p", "#{socket_path}").strip()
        self.tmux("kill-server")
        if sock.startswith("/"):
            pathlib.Path(sock).unlink(missing_ok=True)


def measure(argv, env, prompt, n, name):
    """`prompt(k)`: regex of the k-th prompt (1-based)."""
    p = Pane(argv, env)
    try:
        p.wait(prompt(1))
        p.line("1+1")
        start = p.wait(r"^(Out\[1\]: )?2$") - p.t0
        p.wait(prompt(2))
        k = 2
        trips = []
        for _ in range(n):
            t = time.monotonic()
            p.line("x = 1")
            k += 1
            trips.append(p.wait(prompt(k)) - t)
        p.line("import time")
        k += 1
        p.wait(prompt(k))
        stops = []
        for _ in range(max(3, n // 4)):
            p.line("time.sleep(60)")
            time.sleep(0.5)
            t = time.monotonic()
            p.keys("C-c")
            k += 1
            stops.append(p.wait(prompt(k), timeout=20) - t)
        print(f"{name:<28} start→first result {start * 1000:7.0f} ms   "
              f"round trip median {statistics.median(trips) * 1000:6.1f} ms "
              f"(p90 {sorted(trips)[int(len(trips) * 0.9) - 1] * 1000:6.1f})   "
              f"Ctrl-C→prompt median {statistics.median(stops) * 1000:6.1f} ms")
    finally:
        p.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    if not shutil.which("tmux"):
        sys.exit("tmux is required")
    tmp = pathlib.Path(tempfile.mkdtemp())
    env = dict(os.environ)
    env["SPINDLE_PYTHON"] = sys.executable
    env["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["XDG_DATA_HOME"] = str(tmp / "data")
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp / "jrt")
    env.pop("TMUX", None)

    spindle_prompt = lambda k: rf"^\[python {k}\]> ?$"
    measure([SPINDLE, "repl", "--no-history"], env, spindle_prompt, args.n, "spindle repl (embedded)")

    conn = tmp / "serve.json"
    serve = subprocess.Popen([SPINDLE, "serve", "--connection-file", str(conn)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        while not conn.exists():
            time.sleep(0.05)
        measure([SPINDLE, "repl", "--no-history", "--connect", str(conn)], env, spindle_prompt,
                args.n, "spindle repl --connect")
    finally:
        serve.terminate()
        serve.wait(timeout=15)

    jc = pathlib.Path(sys.executable).parent / "jupyter-console"
    if jc.exists():
        jprompt = lambda k: rf"^In \[{k}\]: ?$"
        measure([str(jc), "--kernel", "python3", "--simple-prompt"], env, jprompt, args.n,
                "jupyter console (ipykernel)")
    else:
        print("jupyter console not installed; skipped")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
