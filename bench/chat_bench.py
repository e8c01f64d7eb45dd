"""What `spindle chat` costs on top of the model, against a mock that answers at once.

1. Per tool round: the mock (tests/llm/mock_llm.py, in this process) scripts N tool calls, each
   `import time; print(time.monotonic())`, run by `spindle chat -y --max-rounds N+10 "go"`. The
   mock and the code read the same clock (CLOCK_MONOTONIC on Linux), so for round i
       A = the code's timestamp - the mock's last byte of the tool-call turn  (parse, show, start)
       B = the mock receiving the next request - the code's timestamp        (collect, build, send)
   A + B is all the time one round spends outside the model (the trivial code's own run
   included, so it is an upper bound on what Spindle adds).
2. `spindle chat` start to its first prompt `[chat]> `, in a pty, M runs.
3. A whole trivial task, `spindle chat -y` with one tool call (print(6*7)) and a closing text:
   wall time from spawn to exit, K runs. Open Interpreter 0.4.3 took ~650 ms a task against a mock
   on this machine (shared/bench notes, oi_loop_bench.py).

Prints a Markdown table and writes the raw numbers to bench/results/chat-<timestamp>.json.

Run: .venv/bin/python bench/chat_bench.py [--rounds 50] [--runs 3] [--starts 20] [--tasks 10]
(needs target/release/spindle or SPINDLE_BIN)
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import pty
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "llm"))
from mock_llm import MockLLM  # noqa: E402

SPINDLE = os.environ.get("SPINDLE_BIN", str(ROOT / "target" / "release" / "spindle"))
ROUND_CODE = "import time; print(time.monotonic())"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
OI_TASK_MS = 650  # Open Interpreter 0.4.3, whole loop against a mock, per task


def execute(code):
    return {"tool_calls": [{"name": "execute",
                            "arguments": {"language": "python", "code": code}}]}


def quantile(xs, q):
    """Nearest-rank quantile (q in 0..1)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q * len(s) + 0.5)) - 1))
    return s[k]


def stats(xs, qs=(0.5, 0.9, 0.99)):
    out = {"n": len(xs), "min": min(xs), "max": max(xs), "mean": statistics.fmean(xs)}
    for q in qs:
        out[f"p{int(q * 100)}"] = quantile(xs, q)
    out["median"] = statistics.median(xs)
    return out


def make_env(mock, tmp):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPINDLE_LLM_", "OPENAI_"))}
    env["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["SPINDLE_PYTHON"] = sys.executable
    env["SPINDLE_LLM_BASE_URL"] = mock.url
    env["SPINDLE_LLM_MODEL"] = "mock-model"
    env["SPINDLE_LLM_API_KEY"] = "sk-bench"
    env["HOME"] = str(tmp / "home")
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["XDG_DATA_HOME"] = str(tmp / "data")
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    env["SPINDLE_LOG"] = "warn"
    env["TERM"] = "xterm-256color"
    for k in ("TMUX", "NO_COLOR", "SPINDLE_IMAGES"):
        env.pop(k, None)
    (tmp / "home").mkdir(exist_ok=True)
    return env


# -- 1. per tool round ---------------------------------------------------------------------------


def bench_rounds(mock, env, cwd, rounds, runs):
    samples = []  # one dict per round
    for run in range(runs):
        mock.reset()
        mock.set_script([execute(ROUND_CODE) for _ in range(rounds)] + [{"text": "done"}])
        t0 = time.monotonic()
        r = subprocess.run([SPINDLE, "chat", "-y", "--max-rounds", str(rounds + 10), "go"],
                           env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit(f"spindle chat exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        reqs = [q for q in mock.requests if q["turn"] is not None]
        if len(reqs) != rounds + 1:
            sys.exit(f"expected {rounds + 1} model requests, got {len(reqs)}")
        for i in range(rounds):
            turn, nxt = reqs[i], reqs[i + 1]
            tool = [m for m in nxt["body"]["messages"] if m.get("role") == "tool"][-1]
            t_code = float(tool["content"].strip().splitlines()[0])
            a = t_code - turn["t_last_byte"]
            b = nxt["t_received"] - t_code
            samples.append({"run": run, "round": i + 1, "A": a, "B": b, "AB": a + b})
        print(f"  run {run + 1}/{runs}: {rounds} rounds in {wall * 1000:.0f} ms wall", file=sys.stderr)
    return samples


# -- 2. start to first prompt --------------------------------------------------------------------


def time_to_prompt(argv, env, cwd, pattern, timeout=30.0):
    """Spawn argv in a new pty; seconds until `pattern` (bytes regex, ANSI stripped) is output."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    t0 = time.monotonic()
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    buf = b""
    found = None
    deadline = t0 + timeout
    try:
        while found is None and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            t = time.monotonic()
            buf += data
            if b"\x1b[6n" in data:  # a cursor position query: answer like a terminal would
                os.write(fd, b"\x1b[1;1R")
            if pattern.search(ANSI.sub(b"", buf)):
                found = t - t0
    finally:
        try:
            os.write(fd, b"\x04")  # Ctrl-D: exit
        except OSError:
            pass
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                r, _, _ = select.select([fd], [], [], 0.1)
                if r and not os.read(fd, 65536):
                    break
            except OSError:
                break
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(fd)
    if found is None:
        sys.exit(f"no prompt from {argv} within {timeout} s; output:\n{ANSI.sub(b'', buf)[-2000:]!r}")
    return found


def bench_start(env, cwd, n):
    chat = [time_to_prompt([SPINDLE, "chat", "--no-history"], env, cwd, re.compile(rb"\[chat\]> "))
            for _ in range(n)]
    repl = [time_to_prompt([SPINDLE, "repl", "--no-history"], env, cwd,
                           re.compile(rb"\[python 1\]> ")) for _ in range(n)]
    return chat, repl


# -- 3. a whole trivial task ---------------------------------------------------------------------


def bench_task(mock, env, cwd, n):
    walls = []
    for _ in range(n):
        mock.reset()
        mock.set_script([execute("print(6*7)"), {"text": "The answer is 42."}])
        t0 = time.monotonic()
        r = subprocess.run([SPINDLE, "chat", "-y", "what is 6*7?"], env=env, cwd=cwd,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        walls.append(time.monotonic() - t0)
        if r.returncode != 0 or "\n42\n" not in r.stdout:
            sys.exit(f"task failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return walls


# -- report --------------------------------------------------------------------------------------


def ms(x):
    return f"{x * 1000:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50, help="tool rounds per run (default 50)")
    ap.add_argument("--runs", type=int, default=3, help="runs of the round benchmark (default 3)")
    ap.add_argument("--starts", type=int, default=20, help="start-to-prompt runs (default 20)")
    ap.add_argument("--tasks", type=int, default=10, help="whole-task runs (default 10)")
    ap.add_argument("--out", help="results file (default bench/results/chat-<timestamp>.json)")
    args = ap.parse_args()
    if not os.path.exists(SPINDLE):
        sys.exit(f"no spindle binary at {SPINDLE}")
    if platform.system() != "Linux":
        print("warning: A and B compare two processes' time.monotonic(), which is one clock "
              "only on Linux", file=sys.stderr)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="chat-bench-"))
    cwd = tmp / "work"
    cwd.mkdir()
    try:
        with MockLLM() as mock:
            env = make_env(mock, tmp)
            print("tool rounds…", file=sys.stderr)
            rounds = bench_rounds(mock, env, cwd, args.rounds, args.runs)
            print("start to first prompt…", file=sys.stderr)
            starts, repl_starts = bench_start(env, cwd, args.starts)
            print("whole tasks…", file=sys.stderr)
            tasks = bench_task(mock, env, cwd, args.tasks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    warm = [s for s in rounds if s["round"] > 1]
    first = [s for s in rounds if s["round"] == 1]
    summary = {
        "A": stats([s["A"] for s in warm]),
        "B": stats([s["B"] for s in warm]),
        "A+B": stats([s["AB"] for s in warm]),
        "A+B first round": stats([s["AB"] for s in first]),
        "start to [chat]> prompt": stats(starts),
        "start to [python 1]> prompt (spindle repl)": stats(repl_starts),
        "whole trivial task": stats(tasks),
    }

    lines = [
        f"spindle chat against an instant mock ({args.rounds} rounds x {args.runs} runs; "
        f"{args.starts} starts; {args.tasks} tasks); ms",
        "",
        "| measurement | n | median | p90 | p99 | max | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    targets = {"A+B": "≤ 2 ms a round", "start to [chat]> prompt": "≤ 150 ms",
               "whole trivial task": f"Open Interpreter ~{OI_TASK_MS} ms"}
    labels = {
        "A": "A: last SSE byte → code starts (rounds 2..N)",
        "B": "B: code's timestamp → next request received (rounds 2..N)",
        "A+B": "A+B: one tool round outside the model (rounds 2..N)",
        "A+B first round": "A+B, round 1 (the session may still be starting)",
        "start to [chat]> prompt": "`spindle chat` start → `[chat]> ` (pty)",
        "start to [python 1]> prompt (spindle repl)": "`spindle repl` start → `[python 1]> ` (pty)",
        "whole trivial task": "`spindle chat -y`, 1 tool call + text, spawn → exit",
    }
    for key, st in summary.items():
        lines.append(f"| {labels[key]} | {st['n']} | {ms(st['median'])} | {ms(st['p90'])} | "
                     f"{ms(st['p99'])} | {ms(st['max'])} | {targets.get(key, '')} |")
    print("\n".join(lines))

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out) if args.out else ROOT / "bench" / "results" / f"chat-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    raw = {
        "when": stamp,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "spindle": {"binary": "target/release/spindle" if SPINDLE.startswith(str(ROOT)) else SPINDLE,
                    "commit": commit, "dirty": dirty},
        "params": vars(args) | {"round_code": ROUND_CODE},
        "units": "seconds",
        "summary": summary,
        "rounds": rounds,
        "starts_chat": starts,
        "starts_repl": repl_starts,
        "tasks": tasks,
        "peer": {"open_interpreter_task_ms": OI_TASK_MS,
                 "source": "shared/README.md (oi_loop_bench.py against a mock)"},
    }
    out.write_text(json.dumps(raw, indent=1) + "\n")
    print(f"\nraw results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
