"""Every request type of the native API, against a real `spindle serve`, with pyzmq."""
import json
import os
import socket
import stat
import subprocess
import time

from native_helpers import (CONNECTION, Watcher, is_finished, outcome, stdout, text_of,
                            wait_gone)


def test_connection_file_is_private_and_complete(shared_server):
    mode = stat.S_IMODE(os.stat(shared_server.path).st_mode)
    assert mode == 0o600
    conn = shared_server.conn
    assert conn["transport"] == "tcp" and conn["ip"] == "127.0.0.1"
    assert conn["signature_scheme"] == "hmac-sha256"
    assert len(conn["key"]) == 64
    assert conn["router_port"] > 0 and conn["pub_port"] > 0
    assert conn["pid"] == shared_server.proc.pid
    assert conn["max_message"] == 1_000_000


def test_default_connection_file_location(spindle_bin, test_env, tmp_path):
    """Without --connection-file the file goes to $XDG_RUNTIME_DIR/spindle/, is printed at
    start, and is removed at exit."""
    env = dict(test_env, XDG_RUNTIME_DIR=str(tmp_path))
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(spindle_bin), "serve", "--ports", "0,0"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            expected = tmp_path / "spindle" / f"serve-{proc.pid}.json"
            deadline = time.monotonic() + 30
            while not expected.exists():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.2)
            assert str(expected) in log.read_text()
            assert "attach" in log.read_text()
            assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
            CONNECTION.validate(json.loads(expected.read_text()))
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
    assert not expected.exists()


def test_create_list_info_close(client, tmp_path):
    s = client.create("python", name="alpha", cwd=str(tmp_path), env={"SPINDLE_T": "42"})
    assert s["name"] == "alpha" and s["language"] == "python" and s["pid"]
    got = client.ok({"type": "session_info", "session": "alpha"})
    assert got["session"]["id"] == s["id"]
    listed = client.ok({"type": "list_sessions"})
    assert s["id"] in [x["id"] for x in listed["sessions"]]
    chunks = client.execute("alpha", "import os; print(os.getcwd(), os.environ['SPINDLE_T'])")
    assert stdout(chunks) == f"{tmp_path} 42\n"
    # Every chunk is tagged with the request it answers and numbered without gaps.
    assert len({c["request"] for c in chunks}) == 1
    seqs = [c["seq"] for c in chunks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # Names are unique.
    dup = client.request({"type": "create_session", "language": "bash", "name": "alpha"})
    assert dup["type"] == "error" and dup["code"] == "name_taken"
    assert client.ok({"type": "close", "session": "alpha"})["type"] == "ok"
    assert wait_gone([s["pid"]]) == []
    listed = client.ok({"type": "list_sessions"})
    assert s["id"] not in [x["id"] for x in listed["sessions"]]


def test_session_defaults_timeout_and_output_cap(client):
    s = client.create("python", timeout=1.0, output_cap=1000)
    chunks = client.execute(s["id"], "import time; time.sleep(30)")
    assert outcome(chunks) == "timeout"
    chunks = client.execute(s["id"], "print('x' * 100000)")
    assert chunks[-1]["content"]["bytes_dropped"] > 90000
    client.ok({"type": "close", "session": s["id"]})


def test_execute_rich_result_and_error(client):
    s = client.create("python")
    chunks = client.execute(s["id"], "6 * 7")
    [res] = text_of(chunks, "result")
    assert res["content"]["data"] == "42"
    chunks = client.execute(s["id"], "raise ValueError('boom')")
    [err] = text_of(chunks, "error")
    assert err["content"]["name"] == "ValueError" and outcome(chunks) == "error"
    chunks = client.execute(s["id"], "x = 5", user_expressions={"y": "x * 2"})
    ue = chunks[-1]["content"]["user_expressions"]["y"]
    assert ue["status"] == "ok" and ue["data"]["text/plain"] == "10"
    client.ok({"type": "close", "session": s["id"]})


def test_input_reply(client):
    s = client.create("python")
    rid = client.send({"type": "execute", "session": s["id"],
                       "code": "name = input('Name: '); print('hi', name)"})
    chunks = []
    while True:
        msg = client.recv(rid)
        chunks.append(msg["chunk"])
        if msg["chunk"]["type"] == "input_request" and "content" in msg["chunk"]:
            assert msg["chunk"]["content"]["prompt"] == "Name: "
            assert client.ok({"type": "input_reply", "session": s["id"],
                              "value": "Ada"})["type"] == "ok"
        if is_finished(msg["chunk"]):
            break
    assert "hi Ada" in stdout(chunks)
    client.ok({"type": "close", "session": s["id"]})


def test_raw_stdin_write(client):
    """Raw text reaches a program that reads the terminal itself."""
    s = client.create("python")
    rid = client.send({"type": "execute", "session": s["id"],
                       "code": "import subprocess; subprocess.run(['sed', 's/^/got:/;q'])"})
    time.sleep(0.3)
    assert client.ok({"type": "stdin", "session": s["id"], "data": "typed\n"})["type"] == "ok"
    chunks = client.chunks(rid)
    assert "got:typed" in stdout(chunks)
    client.ok({"type": "close", "session": s["id"]})


def test_interrupt(client):
    s = client.create("python")
    rid = client.send({"type": "execute", "session": s["id"],
                       "code": "import time\nprint('start', flush=True)\ntime.sleep(60)"})
    first = client.recv(rid)
    assert first["chunk"]["format"] == "started"
    time.sleep(0.3)
    assert client.ok({"type": "interrupt", "session": s["id"]})["type"] == "ok"
    chunks = client.chunks(rid, wait=20)
    assert outcome(chunks) == "interrupted"
    # The process and its state survive an interrupt.
    assert stdout(client.execute(s["id"], "print('alive')")) == "alive\n"
    client.ok({"type": "close", "session": s["id"]})


def test_restart(client):
    s = client.create("python")
    client.execute(s["id"], "x = 1")
    r = client.ok({"type": "restart", "session": s["id"]}, timeout=60)
    assert r["type"] == "session" and r["session"]["starts"] == 2
    assert r["session"]["pid"] != s["pid"]
    assert wait_gone([s["pid"]]) == []
    chunks = client.execute(s["id"], "print('x' in globals())")
    assert stdout(chunks) == "False\n"
    client.ok({"type": "close", "session": s["id"]})


def test_complete_inspect_is_complete(client):
    s = client.create("python")
    client.execute(s["id"], "import os")
    r = client.ok({"type": "complete", "session": s["id"], "code": "os.pa"})
    assert r["type"] == "complete" and "os.path" in [m if m.startswith("os.") else "os." + m
                                                      for m in r["matches"]]
    r = client.ok({"type": "inspect", "session": s["id"], "code": "len", "cursor_pos": 3})
    assert r["type"] == "inspect" and r["found"] and "text/plain" in r["data"]
    r = client.ok({"type": "is_complete", "session": s["id"], "code": "def f():"})
    assert r["type"] == "is_complete" and r["status"] == "incomplete"
    r = client.ok({"type": "is_complete", "session": s["id"], "code": "x = 1"})
    assert r["status"] == "complete"
    bad = client.request({"type": "complete", "session": s["id"], "code": "ab",
                          "cursor_pos": 9})
    assert bad["type"] == "error" and bad["code"] == "bad_request"
    client.ok({"type": "close", "session": s["id"]})


def test_bash_complete(client):
    s = client.create("bash")
    r = client.ok({"type": "complete", "session": s["id"], "code": "ech"})
    assert "echo" in r["matches"]
    client.ok({"type": "close", "session": s["id"]})


def test_watch_and_closed_event(shared_server, client):
    s = client.create("python")
    w = Watcher(shared_server, client, s["id"])
    client.execute(s["id"], "print('seen')")
    evs = w.events_until(lambda e: e["type"] == "chunk" and is_finished(e["chunk"]))
    assert stdout([e["chunk"] for e in evs if e["type"] == "chunk"]) == "seen\n"
    client.ok({"type": "close", "session": s["id"]})
    evs = w.events_until(lambda e: e["type"] == "closed")
    assert evs[-1]["session"] == s["id"]
    w.close()


def test_attach_jupyter_client(shared_server, client):
    """`attach` gives a Jupyter connection file; a Jupyter client then shares the session with
    native clients, and native watchers see its executions."""
    from jupyter_client import BlockingKernelClient

    s = client.create("python")
    client.execute(s["id"], "shared = 41")
    r = client.ok({"type": "attach", "session": s["id"]})
    assert r["type"] == "attach"
    path = r["connection_file"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert r["connection"]["key"] and r["connection"]["shell_port"]
    # Asking again gives the same attachment.
    assert client.ok({"type": "attach", "session": s["id"]})["connection_file"] == path
    w = Watcher(shared_server, client, s["id"])
    kc = BlockingKernelClient(connection_file=path)
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        reply = kc.execute_interactive("shared += 1; print(shared)", timeout=30,
                                       output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
    evs = w.events_until(lambda e: e["type"] == "chunk" and is_finished(e["chunk"]))
    assert stdout([e["chunk"] for e in evs if e["type"] == "chunk"]) == "42\n"
    assert stdout(client.execute(s["id"], "print(shared)")) == "42\n"
    # Closing the session ends the attachment and removes its connection file.
    client.ok({"type": "close", "session": s["id"]})
    assert not os.path.exists(path)
    w.close()


def test_shutdown_request(serve):
    server = serve()
    c = server.client()
    s = c.create("python")
    b = c.create("bash")
    pids = [p.pid for p in server.descendants()]
    assert s["pid"] in pids and b["pid"] in pids
    assert c.ok({"type": "shutdown"})["type"] == "ok"
    assert server.proc.wait(30) == 0
    assert wait_gone(pids) == []
    assert not server.path.exists()


def test_warm_pool(serve, tmp_path):
    server = serve("--warm", "1", "--warm-languages", "python,bash")
    c = server.client()
    # Let the pool fill.
    deadline = time.monotonic() + 30
    while True:
        r = c.ok({"type": "create_session", "language": "python", "name": "w1"})
        if r["warm"]:
            break
        c.ok({"type": "close", "session": "w1"})
        assert time.monotonic() < deadline, "the warm pool never filled"
        time.sleep(0.5)
    assert stdout(c.execute("w1", "print(1)")) == "1\n"
    # Different options start fresh (the host runs in tmp_path, so that cwd fits the pool).
    # The pool refills in the background and says nothing when it has: ask with other options
    # first, then with fitting ones, until the fitting one comes from the refilled pool; each
    # round the other options must start fresh, and the last round asked them with the pool
    # (all but certainly) full.
    other = tmp_path / "elsewhere"
    other.mkdir()
    for options in ({"cwd": str(other)}, {"env": {"A": "1"}}):
        deadline = time.monotonic() + 30
        while True:
            r = c.ok({"type": "create_session", "language": "python", **options})
            assert not r["warm"], options
            c.ok({"type": "close", "session": r["session"]["id"]})
            r = c.ok({"type": "create_session", "language": "python", "cwd": str(tmp_path)})
            if r["warm"]:
                break
            c.ok({"type": "close", "session": r["session"]["id"]})
            assert time.monotonic() < deadline, "the warm pool never refilled"
            time.sleep(0.1)
    # Pooled sessions die with the host, too.
    pids = [p.pid for p in server.descendants()]
    assert len(pids) >= 4
    assert server.stop() == 0
    assert wait_gone(pids) == []


def test_sigterm_leaves_no_processes(serve):
    server = serve("--warm", "1", "--warm-languages", "bash")
    c = server.client()
    py = c.create("python")
    sh = c.create("bash")
    # A session with a subprocess tree still running.
    rid = c.send({"type": "execute", "session": sh["id"],
                  "code": "sleep 300 & sleep 300 | cat"})
    assert c.recv(rid)["chunk"]["format"] == "started"
    c.send({"type": "execute", "session": py["id"],
            "code": "import subprocess; subprocess.run(['sleep', '300'])"})
    deadline = time.monotonic() + 20
    while True:
        procs = server.descendants()
        if sum(1 for p in procs if p.name() == "sleep") >= 3:
            break
        assert time.monotonic() < deadline, [p.name() for p in procs]
        time.sleep(0.1)
    pids = [p.pid for p in procs]
    attached = c.ok({"type": "attach", "session": py["id"]})["connection_file"]
    assert os.path.exists(attached)
    assert server.stop() == 0
    assert wait_gone(pids) == [], "processes left behind after SIGTERM"
    assert not server.path.exists()
    assert not os.path.exists(attached)


def test_server_starts_on_given_ports(serve):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    server = serve("--ports", f"{ports[0]},{ports[1]}", "--ip", "127.0.0.1")
    assert (server.conn["router_port"], server.conn["pub_port"]) == tuple(ports)
    c = server.client()
    assert c.ok({"type": "list_sessions"})["sessions"] == []
