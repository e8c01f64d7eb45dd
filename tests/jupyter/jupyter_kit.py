"""Helpers for the Jupyter tests: start kernels with jupyter_client, collect what one request
causes, and talk raw ZeroMQ where jupyter_client would hide the detail under test."""
import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
import uuid

import psutil
import zmq
from jupyter_client import KernelManager

TIMEOUT = 20


def tree(pid):
    try:
        p = psutil.Process(pid)
        return [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(procs, timeout=10):
    """Wait until every process is gone; return the ones still alive."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


@contextlib.contextmanager
def kernel(name="spindle-python", **kw):
    """A started kernel and a ready client; on exit the kernel is shut down and every process it
    started must be gone (stragglers are killed and reported)."""
    km = KernelManager(kernel_name=name, **kw)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    procs = []
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        procs = tree(km.provisioner.process.pid)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            procs = procs or tree(km.provisioner.process.pid)
            km.shutdown_kernel(now=False)
        alive = wait_gone(procs)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        assert not alive, f"processes left behind: {alive}"


def collect(kc, msg_id, timeout=TIMEOUT):
    """(reply, iopub messages) for one request: iopub until its idle status, and its reply."""
    deadline = time.monotonic() + timeout
    iopub = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no idle for {msg_id}; got {[m['msg_type'] for m in iopub]}"
        msg = kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        iopub.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = shell_reply(kc, msg_id, deadline - time.monotonic())
    return reply, iopub


def shell_reply(kc, msg_id, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def run(kc, code, **kw):
    msg_id = kc.execute(code, **kw)
    return collect(kc, msg_id)


def types(iopub):
    return [m["msg_type"] for m in iopub]


def stdout(iopub):
    return "".join(m["content"]["text"] for m in iopub
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


class Raw:
    """Raw ZeroMQ sockets to a kernel, with hand-made signing."""

    def __init__(self, info, identity=None):
        self.info = info
        self.key = info["key"].encode()
        self.ctx = zmq.Context()
        self.session = str(uuid.uuid4())
        self.sockets = []
        self.identity = identity

    def url(self, port):
        return f"tcp://{self.info['ip']}:{self.info[port]}"

    def dealer(self, port="shell_port", identity=None):
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        ident = identity or self.identity
        if ident:
            s.identity = ident
        s.connect(self.url(port))
        self.sockets.append(s)
        return s

    def sub(self):
        s = self.ctx.socket(zmq.SUB)
        s.linger = 0
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(self.url("iopub_port"))
        self.sockets.append(s)
        return s

    def sign(self, *parts):
        h = hmac.new(self.key, digestmod=hashlib.sha256)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def header(self, msg_type, **extra):
        h = {"msg_id": str(uuid.uuid4()), "msg_type": msg_type, "session": self.session,
             "username": "test", "version": "5.3",
             "date": "2026-01-01T00:00:00.000000Z"}
        h.update(extra)
        return {k: v for k, v in h.items() if v is not None}

    def send(self, sock, msg_type, content=None, header=None, key=None):
        header = header or self.header(msg_type)
        parts = [json.dumps(header).encode(), b"{}", b"{}", json.dumps(content or {}).encode()]
        sig = self.sign(*parts) if key is None else hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode()
        sock.send_multipart([b"<IDS|MSG>", sig] + parts)
        return header

    def recv(self, sock, timeout=TIMEOUT):
        if not sock.poll(int(timeout * 1000)):
            return None
        frames = sock.recv_multipart()
        i = frames.index(b"<IDS|MSG>")
        sig, h, p, m, c = frames[i + 1:i + 6]
        assert hmac.compare_digest(sig, self.sign(h, p, m, c)), "kernel's signature does not verify"
        return {"header": json.loads(h), "parent_header": json.loads(p),
                "metadata": json.loads(m), "content": json.loads(c), "raw_parent": p,
                "prefix": frames[:i]}

    def close(self):
        for s in self.sockets:
            s.close(linger=0)
        self.ctx.term()


def connection_info(km):
    with open(km.connection_file) as f:
        return json.load(f)


def send_signal(km, sig):
    os.kill(km.provisioner.process.pid, sig)


SIGINT = signal.SIGINT
