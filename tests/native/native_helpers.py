"""Helpers for the native API tests: a real `spindle serve` process, and pyzmq clients that
check every signature and validate every message they receive against the JSON Schemas in
schemas/ (generated from the Rust types)."""
import hashlib
import hmac
import itertools
import json
import os
import pathlib
import signal
import subprocess
import time

import jsonschema
import psutil
import zmq

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def _validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


REPLY = _validator("reply.json")
EVENT = _validator("event.json")
CONNECTION = _validator("connection.json")
REQUEST = _validator("request.json")
CHUNK = _validator("chunk.json")

_ids = itertools.count(1)


def shrunk(value):
    """`value` with long strings cut short, for validation: the schemas constrain no string's
    length or pattern, and jsonschema formats megabyte strings into its (discarded) branch
    errors, which would make big streams crawl."""
    if isinstance(value, str):
        return value[:64]
    if isinstance(value, dict):
        return {k: shrunk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shrunk(v) for v in value]
    return value


def check_reply(msg):
    REPLY.validate(shrunk(msg))
    if msg.get("type") == "chunk":
        CHUNK.validate(shrunk(msg["chunk"]))


def check_event(ev):
    EVENT.validate(shrunk(ev))
    if ev.get("type") == "chunk":
        CHUNK.validate(shrunk(ev["chunk"]))


def sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


class Server:
    """One `spindle serve` process. Stopped with SIGTERM; killed (and the test failed) only if
    it does not stop."""

    def __init__(self, spindle_bin, env, tmp_path, *args, name="serve"):
        self.path = tmp_path / f"{name}.json"
        self.log = open(tmp_path / f"{name}.log", "wb")
        self.proc = subprocess.Popen(
            [str(spindle_bin), "serve", "--connection-file", str(self.path), *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        deadline = time.monotonic() + 30
        while not self.path.exists():
            assert self.proc.poll() is None, f"spindle serve exited: {self.output()}"
            assert time.monotonic() < deadline, "no connection file after 30 s"
            time.sleep(0.02)
        self.conn = json.loads(self.path.read_text())
        CONNECTION.validate(self.conn)
        self.ctx = zmq.Context()
        self.clients = []

    def output(self) -> str:
        self.log.flush()
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def client(self, key=None, **sockopts):
        c = Client(self.ctx, self.conn, key=key, **sockopts)
        self.clients.append(c)
        return c

    def descendants(self):
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout=30):
        """SIGTERM, wait, and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kids = self.descendants()
                self.proc.kill()
                for k in kids:
                    k.kill()
                self.proc.wait(5)
                raise AssertionError(f"spindle serve ignored SIGTERM: {self.output()}")
        return self.proc.returncode

    def close(self):
        try:
            self.stop()
        finally:
            for c in self.clients:
                c.close()
            self.ctx.term()
            self.log.close()


class Client:
    """A DEALER that signs what it sends and checks what it receives. Replies to other request
    ids than the one awaited are kept for later, so many requests can be in flight."""

    def __init__(self, ctx, conn, key=None, rcvhwm=None, rcvbuf=None):
        self.key = (key if key is not None else conn["key"]).encode()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        # Socket options must precede connect (libzmq applies them to new pipes only).
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
        if rcvbuf is not None:
            self.sock.rcvbuf = rcvbuf
        self.sock.connect(f"tcp://{conn['ip']}:{conn['router_port']}")
        self.kept = {}

    def close(self):
        self.sock.close(0)

    def send(self, msg: dict) -> str:
        msg = dict(msg)
        msg.setdefault("id", f"r{next(_ids)}")
        REQUEST.validate(shrunk(msg))  # our own requests follow the schema too
        body = json.dumps(msg).encode()
        self.sock.send_multipart([sign(self.key, body), body])
        return msg["id"]

    def send_raw(self, frames):
        self.sock.send_multipart(frames)

    def recv_any(self, timeout=30.0) -> dict:
        if not self.sock.poll(timeout * 1000):
            raise TimeoutError(f"no reply within {timeout} s")
        frames = self.sock.recv_multipart()
        assert len(frames) == 2, frames
        sig, body = frames
        assert hmac.compare_digest(sig, sign(self.key, body)), "bad signature on a reply"
        msg = json.loads(body)
        check_reply(msg)
        return msg

    def recv(self, rid, timeout=30.0) -> dict:
        """The next reply to request `rid`."""
        deadline = time.monotonic() + timeout
        while True:
            kept = self.kept.get(rid)
            if kept:
                return kept.pop(0)
            msg = self.recv_any(max(0.0, deadline - time.monotonic()))
            if msg["id"] == rid:
                return msg
            self.kept.setdefault(msg["id"], []).append(msg)

    def request(self, msg: dict, timeout=30.0) -> dict:
        return self.recv(self.send(msg), timeout)

    def ok(self, msg: dict, timeout=30.0) -> dict:
        reply = self.request(msg, timeout)
        assert reply["type"] != "error", reply
        return reply

    def create(self, language="python", wait=60.0, **kw) -> dict:
        reply = self.ok({"type": "create_session", "language": language, **kw}, wait)
        assert reply["type"] == "session", reply
        return reply["session"]

    def chunks(self, rid, wait=60.0) -> list:
        """Every chunk of execution `rid`, through the finished one."""
        out = []
        deadline = time.monotonic() + wait
        while True:
            msg = self.recv(rid, max(0.0, deadline - time.monotonic()))
            assert msg["type"] in ("chunk", "missed"), msg
            if msg["type"] == "chunk":
                out.append(msg["chunk"])
                if is_finished(msg["chunk"]):
                    return out

    def execute(self, session, code, wait=60.0, **kw) -> list:
        rid = self.send({"type": "execute", "session": session, "code": code, **kw})
        return self.chunks(rid, wait)


class Watcher:
    """A SUB socket on one session (or conversation), past ZeroMQ's slow-joiner gap: it asks
    for `welcome` events (through `client`) until one arrives."""

    def __init__(self, server, client, session_id, rcvhwm=None, rcvbuf=None):
        self.key = server.conn["key"].encode()
        self.sock = server.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
        if rcvbuf is not None:
            self.sock.rcvbuf = rcvbuf
        self.sock.connect(f"tcp://{server.conn['ip']}:{server.conn['pub_port']}")
        self.sock.subscribe(session_id.encode())
        self.session = session_id
        deadline = time.monotonic() + 10
        while True:
            token = client.send({"type": "watch", "session": session_id})
            reply = client.recv(token)
            assert reply["type"] in ("session", "conversation"), reply
            if self.sock.poll(200):
                ev = self.recv()
                assert ev["type"] == "welcome", ev
                break
            assert time.monotonic() < deadline, "no welcome event"
        # Late welcomes from earlier attempts are harmless; skip them on read.

    def recv(self, timeout=30.0) -> dict:
        while True:
            if not self.sock.poll(timeout * 1000):
                raise TimeoutError(f"no event within {timeout} s")
            frames = self.sock.recv_multipart()
            assert len(frames) == 3, frames
            topic, sig, body = frames
            assert topic == self.session.encode()
            assert hmac.compare_digest(sig, sign(self.key, body)), "bad signature on an event"
            ev = json.loads(body)
            check_event(ev)
            return ev

    def events_until(self, pred, timeout=30.0) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.recv(max(0.0, deadline - time.monotonic()))
            if ev["type"] == "welcome":
                continue
            out.append(ev)
            if pred(ev):
                return out

    def close(self):
        self.sock.close(0)


def is_finished(chunk) -> bool:
    return chunk["type"] == "status" and chunk["format"] == "finished"


def outcome(chunks) -> str:
    return chunks[-1]["content"]["outcome"]


def stdout(chunks) -> str:
    return "".join(c.get("content", "") for c in chunks
                   if c["type"] == "console" and c["format"] == "stdout")


def text_of(chunks, kind) -> list:
    return [c for c in chunks if c["type"] == kind and "content" in c]


def wait_gone(pids, timeout=15.0):
    """Wait until none of `pids` runs (zombies count as gone); return those still alive."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        still = []
        for pid in alive:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.1)
    return alive

