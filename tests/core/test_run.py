"""`spindle run`: one execution in a fresh session, driven as a user would, through the real binary."""
import json
import os
import signal
import subprocess
import time

import psutil


def run(spindle_bin, test_env, *args, input=None, timeout=60):
    return subprocess.run(
        [str(spindle_bin), "run", *args],
        input=input,
        capture_output=True,
        text=True,
        env=test_env,
        timeout=timeout,
    )


def test_python_output_result_and_exit_status(spindle_bin, test_env):
    r = run(spindle_bin, test_env, "--lang", "python", "-c", "print('hello')\n6 * 7")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n42\n"
    r = run(spindle_bin, test_env, "--lang", "python", "-c", "raise ValueError('boom')")
    assert r.returncode == 1
    assert "ValueError: boom" in r.stderr
    r = run(spindle_bin, test_env, "--lang", "python", "-c", "import sys; sys.exit(3)")
    assert r.returncode == 3, (r.stdout, r.stderr)


def test_bash_status_and_exit(spindle_bin, test_env):
    assert run(spindle_bin, test_env, "--lang", "bash", "-c", "false").returncode == 1
    r = run(spindle_bin, test_env, "--lang", "bash", "-c", "echo before; exit 3")
    assert r.returncode == 3
    assert r.stdout == "before\n"
    assert "exited with status 3" in r.stderr


def test_code_from_a_file(spindle_bin, test_env, tmp_path):
    f = tmp_path / "prog.js"
    f.write_text("const a = [1, 2, 3];\nconsole.log(a.map(x => x * 2).join(','));\n")
    r = run(spindle_bin, test_env, "--lang", "node", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2,4,6\n"


def test_json_lines_are_chunks_in_order(spindle_bin, test_env):
    r = run(spindle_bin, test_env, "--lang", "bash", "--json", "-c", "echo a; echo b >&2; echo c")
    assert r.returncode == 0, r.stderr
    chunks = [json.loads(line) for line in r.stdout.splitlines()]
    assert chunks[0]["type"] == "status" and chunks[0]["format"] == "started"
    assert chunks[-1]["type"] == "status" and chunks[-1]["format"] == "finished"
    assert chunks[-1]["content"]["outcome"] == "ok"
    assert [c["seq"] for c in chunks] == list(range(chunks[0]["seq"], chunks[0]["seq"] + len(chunks)))
    text = {"stdout": "", "stderr": ""}
    for c in chunks:
        if c["type"] == "console" and "content" in c:
            text[c["format"]] += c["content"]
    assert text == {"stdout": "a\nc\n", "stderr": "b\n"}
    assert len({c["request"] for c in chunks}) == 1


def test_input_is_answered_from_stdin(spindle_bin, test_env):
    r = run(spindle_bin, test_env, "--lang", "python", "-c", "name = input('name? ')\nprint('hi', name)", input="Ada\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi Ada\n"
    assert "name? " in r.stderr


def test_bad_input_gets_clear_errors(spindle_bin, test_env):
    r = run(spindle_bin, test_env, "--lang", "cobol", "-c", "x")
    assert r.returncode == 2 and "python, bash and node" in r.stderr
    r = run(spindle_bin, test_env, "--lang", "python", "-c", "   ")
    assert r.returncode == 2 and "empty" in r.stderr
    r = run(spindle_bin, test_env, "--lang", "bash", "-c", "echo a\x01b")  # control bytes are fine
    assert r.returncode == 0
    env = dict(test_env, SPINDLE_PYTHON="/nonexistent/python3")
    r = run(spindle_bin, env, "--lang", "python", "-c", "1")
    assert r.returncode == 2
    assert "SPINDLE_PYTHON" in r.stderr and "/nonexistent/python3" in r.stderr


def test_binary_and_invalid_utf8_output_never_break_the_stream(spindle_bin, test_env):
    code = "head -c 100000 /dev/urandom; printf '\\xff\\xfe tail\\n'; echo done"
    r = subprocess.run([str(spindle_bin), "run", "--lang", "bash", "-c", code],
                       capture_output=True, env=test_env, timeout=60)
    assert r.returncode == 0
    assert r.stdout.endswith("\ufffd\ufffd tail\ndone\n".encode())


def test_a_gigabyte_with_a_cap_keeps_memory_bounded(spindle_bin, test_env):
    code = ("import sys\nsys.stdout.write('HEAD')\nchunk = 'x' * (1 << 20)\n"
            "for _ in range(1024):\n    sys.stdout.write(chunk)\nsys.stdout.write('TAIL')\n")
    p = subprocess.Popen([str(spindle_bin), "run", "--lang", "python", "--json", "--cap", "4096", "-c", code],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=test_env)
    proc = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    chunks = [json.loads(line) for line in out.splitlines()]
    text = "".join(c.get("content", "") for c in chunks if c["type"] == "console")
    assert text.startswith("HEAD") and text.endswith("TAIL") and len(text) == 4096
    finished = chunks[-1]["content"]
    assert finished["bytes_dropped"] == 1024 * (1 << 20) + 8 - 4096
    assert peak < 200 * 1024 * 1024, f"host peaked at {peak / 1e6:.0f} MB"


def test_sigterm_leaves_no_process_behind(spindle_bin, test_env):
    p = subprocess.Popen([str(spindle_bin), "run", "--lang", "bash", "-c", "sleep 300 & sleep 300"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=test_env)
    host = psutil.Process(p.pid)
    deadline = time.time() + 20
    kids = []
    while time.time() < deadline:
        kids = host.children(recursive=True)
        if sum(1 for k in kids if k.name() == "sleep") >= 2:
            break
        time.sleep(0.05)
    assert sum(1 for k in kids if k.name() == "sleep") >= 2, kids
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=20)
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"left behind: {alive}"
