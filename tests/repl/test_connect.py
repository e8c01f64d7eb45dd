"""`spindle repl --connect`: the same REPL attached to a running `spindle serve`."""
import hashlib
import hmac
import json
import re
import signal
import subprocess
import time
import uuid

import psutil
import pytest
import zmq


class Client:
    """A minimal native-API client (pyzmq DEALER, signed JSON), to check the server's side."""

    def __init__(self, conn_file):
        info = json.loads(open(conn_file).read())
        self.key = info["key"].encode()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{info['ip']}:{info['router_port']}")

    def close(self):
        self.sock.close()
        self.ctx.term()

    def request(self, body, timeout=30):
        rid = uuid.uuid4().hex
        data = json.dumps({"id": rid, **body}).encode()
        sig = hmac.new(self.key, data, hashlib.sha256).hexdigest().encode()
        self.sock.send_multipart([sig, data])
        replies = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(200):
                continue
            sig, data = self.sock.recv_multipart()
            assert hmac.compare_digest(sig, hmac.new(self.key, data, hashlib.sha256).hexdigest().encode())
            reply = json.loads(data)
            if reply["id"] != rid:
                continue
            replies.append(reply)
            if body["type"] != "execute" or reply["type"] != "chunk":
                return replies
            if reply["chunk"]["type"] == "status" and reply["chunk"]["format"] == "finished":
                return replies
        raise AssertionError(f"no reply to {body['type']} within {timeout} s")


def start_server(spindle_bin, env, conn_file, log):
    proc = subprocess.Popen(
        [spindle_bin, "serve", "--connection-file", str(conn_file)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not conn_file.exists():
        assert proc.poll() is None, "spindle serve exited"
        assert time.monotonic() < deadline, "no connection file"
        time.sleep(0.05)
    return proc


def survivors(kids, timeout):
    """Wait up to `timeout` s for `kids` to end; kill the ones still alive (zombies excepted:
    they are dead) and return them described, so the caller fails with a clear message and no
    process leaks into the next test."""
    _, alive = psutil.wait_procs(kids, timeout=timeout)
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"pid {p.pid} ({p.status()}): {' '.join(p.cmdline())}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return left


def stop_server(proc):
    """SIGTERM; the server and every process it started must be gone 15 s later."""
    if proc.poll() is not None:
        return []
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    left = []
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        left.append(f"spindle serve itself (pid {proc.pid}) did not exit on SIGTERM")
        proc.kill()
        proc.wait(timeout=5)
    return left + survivors(kids, 5)


@pytest.fixture
def server(spindle_bin, test_env, tmp_path):
    conn = tmp_path / "serve.json"
    log = open(tmp_path / "serve.log", "wb")
    procs = [start_server(spindle_bin, test_env, conn, log)]

    class Server:
        conn_file = conn

        def stop(self):
            left = stop_server(procs[-1])
            assert not left, f"spindle serve left processes behind (now killed): {left}"

        def crash(self):
            """SIGKILL: no goodbye to clients. Its sessions must die with it, within 2 s."""
            proc = procs[-1]
            kids = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait(timeout=5)
            conn.unlink(missing_ok=True)
            left = survivors(kids, 2)
            assert not left, f"a killed spindle serve left processes behind (now killed): {left}"

        def restart(self):
            procs.append(start_server(spindle_bin, test_env, conn, log))

    yield Server()
    left = []
    for p in procs:
        left += stop_server(p)
    log.close()
    assert not left, f"spindle serve left processes behind (now killed): {left}"


def test_connect_runs_code_on_the_server(start_repl, server, workdir):
    p = start_repl("--connect", str(server.conn_file))
    assert "connected to spindle serve at tcp://127.0.0.1:" in p.screen()
    p.run("x = 3", "python", 2)
    p.run("print(x * x)", "python", 3)
    assert "\n9\n" in p.output_after("print(x * x)")
    # Sessions start in the REPL's working directory, wherever the server runs.
    p.run("%% pwd", "python", 3)
    assert str(workdir) in p.output_after("%% pwd")
    # Multi-line input asks the remote session whether the code is complete.
    p.line("def sq(v):")
    p.line("return v * v")
    p.keys("Enter")
    p.wait_prompt("python", 4)
    p.run("sq(12)", "python", 5)
    assert "\n144\n" in p.output_after("sq(12)")
    # Ctrl-C and input() work through the server too.
    p.line("import time; time.sleep(60)")
    p.wait_for("time.sleep(60)\n")
    time.sleep(0.3)
    p.keys("C-c")
    p.wait_prompt("python", 6, timeout=10)
    assert "KeyboardInterrupt" in p.output_after("time.sleep(60)")
    p.line('who = input("who? ")')
    p.wait_for(re.compile(r"^who\? $", re.M))
    p.line("Grace")
    p.wait_prompt("python", 7)
    p.run("print(who)", "python", 8)
    assert "Grace" in p.output_after("print(who)")

    client = Client(server.conn_file)
    try:
        names = {s["name"] for s in client.request({"type": "list_sessions"})[0]["sessions"]}
        assert any(re.fullmatch(r"repl-\d+-python", n) for n in names), names
        p.keys("C-d")
        p.wait_for("[exited 0]")
        # The sessions the REPL created are closed when it exits.
        deadline = time.monotonic() + 10
        while True:
            names = {s["name"] for s in client.request({"type": "list_sessions"})[0]["sessions"]}
            if not any(n.startswith("repl-") for n in names):
                break
            assert time.monotonic() < deadline, names
            time.sleep(0.1)
    finally:
        client.close()


def test_attach_to_an_existing_session(start_repl, server):
    client = Client(server.conn_file)
    try:
        created = client.request({"type": "create_session", "language": "python", "name": "shared"})
        assert created[0]["type"] == "session", created
        done = client.request({"type": "execute", "session": "shared", "code": "shared_value = 'from a client'"})
        assert done[-1]["chunk"]["content"]["outcome"] == "ok"
        p = start_repl("--connect", str(server.conn_file), "--session", "shared", first_prompt=None)
        p.wait_prompt("python", 2)
        p.run("print(shared_value)", "python", 3)
        assert "from a client" in p.output_after("print(shared_value)")
        p.keys("C-d")
        p.wait_for("[exited 0]")
        # An attached session is left running.
        info = client.request({"type": "session_info", "session": "shared"})[0]
        assert info["type"] == "session" and info["session"]["state"] == "idle", info
    finally:
        client.close()


def test_lost_server_is_reported_and_reconnect_offered(start_repl, server):
    p = start_repl("--connect", str(server.conn_file))
    p.run("y = 1", "python", 2)
    p.line("import time; time.sleep(60)")
    p.wait_for("time.sleep(60)\n")
    time.sleep(0.3)
    server.crash()
    # The running cell learns the server is gone (heartbeat), the REPL tries to reconnect and
    # says so, and the prompt comes back: nothing hangs.
    p.wait_for("lost the connection to the server", timeout=20)
    p.wait_for("cannot reconnect", timeout=20)
    p.wait_prompt("python", 2, timeout=20)
    # Still usable: another cell reports again, quickly.
    p.line("print(y)")
    p.wait_for(re.compile(r"print\(y\)\n✗ lost the connection"), timeout=20)
    p.wait_prompt("python", 2, timeout=20)
    # A new server at the same connection file: the REPL reconnects and starts a fresh session.
    server.restart()
    p.line("print('back')")
    p.wait_for("reconnected; run the cell again", timeout=20)
    p.wait_for("the server no longer has the python session", timeout=20)
    p.wait_prompt("python", 1, timeout=20)
    p.run("print('back')", "python", 2)
    assert "\nback\n" in p.output_after("print('back')")


def test_server_stopping_ends_the_cell_cleanly(start_repl, server):
    p = start_repl("--connect", str(server.conn_file))
    p.line("import time; time.sleep(60)")
    p.wait_for("time.sleep(60)\n")
    time.sleep(0.3)
    server.stop()
    # A server that stops closes its sessions: the cell ends with that news, not a hang.
    p.wait_for("the session was closed", timeout=20)
    p.wait_prompt("python", 2, timeout=20)
    p.keys("C-d")
    p.wait_for("[exited 0]", timeout=20)
