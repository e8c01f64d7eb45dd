"""The pyzmq examples in examples/python/ work against a real `spindle serve`."""
import subprocess
import sys

from native_helpers import ROOT

CLIENT = ROOT / "examples" / "python" / "client.py"
WATCH = ROOT / "examples" / "python" / "watch.py"


def run_client(server, *args, timeout=60):
    return subprocess.run([sys.executable, str(CLIENT), str(server.path), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_client_example_streams_output(shared_server):
    r = run_client(shared_server, "python",
                   "import sys, time\nfor i in range(3):\n    print('line', i, flush=True)\n"
                   "print('oops', file=sys.stderr)\n6 * 7")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "line 0\nline 1\nline 2\n[result] 42\n"
    assert r.stderr == "oops\n"


def test_client_example_default_code_and_other_languages(shared_server):
    r = run_client(shared_server)
    assert (r.returncode, r.stdout) == (0, "hello from Spindle\n")
    r = run_client(shared_server, "bash", "echo from bash; exit_code=3; false")
    assert r.returncode == 1 and r.stdout == "from bash\n"


def test_client_example_reports_errors(shared_server):
    r = run_client(shared_server, "python", "1 / 0")
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr
    r = run_client(shared_server, "cobol", "x")
    assert r.returncode == 1 and "unknown language" in r.stderr


def test_client_example_leaves_no_session(shared_server):
    c = shared_server.client()
    before = len(c.ok({"type": "list_sessions"})["sessions"])
    assert run_client(shared_server, "python", "print(1)").returncode == 0
    assert len(c.ok({"type": "list_sessions"})["sessions"]) == before


def test_watch_example_sees_everything(shared_server):
    c = shared_server.client()
    c.create("python", name="watched")
    w = subprocess.Popen([sys.executable, str(WATCH), str(shared_server.path), "watched"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert w.stdout.readline() == "watching watched\n"
        rid_a = c.send({"type": "execute", "session": "watched", "code": "print('from a')"})
        c.chunks(rid_a)
        other = shared_server.client()  # a second client's execution shows up too
        rid_b = other.send({"type": "execute", "session": "watched", "code": "raise KeyError(5)"})
        other.chunks(rid_b)
        c.ok({"type": "close", "session": "watched"})
        out, err = w.communicate(timeout=30)  # it stops by itself when the session closes
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 0, err
    lines = out.splitlines()
    assert any(l.startswith(rid_a) and "console/stdout" in l and '"from a\\n"' in l
               for l in lines), out
    assert any(l.startswith(rid_b) and "KeyError" in l for l in lines), out
    assert sum("status/finished" in l for l in lines) == 2
    assert lines[-1] == "-- session closed: closed on request"


def test_watch_example_unknown_session(shared_server):
    r = subprocess.run([sys.executable, str(WATCH), str(shared_server.path), "no-such"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no session" in r.stderr
