"""Oversized frames are refused before they are kept (issue 12, fault 3).

A request larger than the host's advertised `max_message` gets `too_large`, and the host reads
it through a fixed buffer instead of holding it: its RSS, sampled from /proc while the request
streams in, stays within max_message plus a fixed overhead. The connection stays up, the host
keeps serving (real code runs afterwards), and the same bound guards the Jupyter sockets of an
attached session. A frame header declaring an absurd length does not make the host allocate it.
"""
import json
import socket
import struct
import threading
import time

import pytest
import zmq

from native_helpers import sign, stdout

MAX_MESSAGE = 1_000_000
# Fixed allowance above the limit for what one request may cost the host in transit (its
# read buffer, the reply, allocator slack); the bug cost the whole 200 MB.
OVERHEAD = 48 << 20
HUGE = 200_000_000


def rss(pid) -> int:
    """Resident set size of `pid`, in bytes, straight from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """Samples a process's RSS in a thread until stopped; keeps the peak."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1
            self._stop.wait(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self.peak = max(self.peak, rss(self.pid))
        return self.peak


@pytest.fixture
def server(serve):
    return serve("--max-message", str(MAX_MESSAGE))


def runs_code(client):
    """The host answers and a fresh session runs real code."""
    s = client.create("python")
    assert stdout(client.execute(s["id"], "print(6 * 7)")) == "42\n"
    client.ok({"type": "close", "session": s["id"]})


def test_oversized_frames_are_refused_before_they_are_kept(server):
    assert server.conn["max_message"] == MAX_MESSAGE
    c = server.client()
    runs_code(c)  # warm: the baseline includes a session's worth of host memory
    base = rss(server.proc.pid)
    body = b'{"id":"huge","type":"list_sessions","pad":"' + b"x" * HUGE + b'"}'
    sampler = Sampler(server.proc.pid)
    try:
        c.sock.send_multipart([sign(c.key, body), body], copy=False)
        reply = c.recv_any(120)
    finally:
        peak = sampler.stop()
    size = 64 + len(body)  # the signature (64 hex digits) and the JSON
    del body
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert reply["id"] is None
    assert str(MAX_MESSAGE) in reply["reason"]
    assert f"{size} bytes" in reply["reason"], reply["reason"]
    assert sampler.samples > 10
    assert peak - base < MAX_MESSAGE + OVERHEAD, \
        f"host RSS rose by {(peak - base) >> 20} MiB while refusing a {HUGE >> 20} MiB request"
    # The same connection goes on working, and so does everyone else's.
    runs_code(c)
    runs_code(server.client())


def test_many_frames_count_against_the_limit(server):
    """A message of very many empty frames is bounded too (each frame costs memory)."""
    c = server.client()
    base = rss(server.proc.pid)
    frames = [b""] * 200_000
    c.sock.send_multipart(frames, copy=False)
    reply = c.recv_any(60)
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert rss(server.proc.pid) - base < MAX_MESSAGE + OVERHEAD
    runs_code(c)


def zmtp_dealer(port) -> socket.socket:
    """A raw TCP connection that has done a ZMTP 3.0 NULL handshake as a DEALER."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
    assert len(greeting) == 64
    s.sendall(greeting)
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready = b"\x05READY" + prop
    s.sendall(bytes([0x04, len(ready)]) + ready)
    got = b""
    while len(got) < 64:
        part = s.recv(64 - len(got))
        assert part, "the host closed the connection during the handshake"
        got += part
    assert got[0] == 0xFF
    return s


def test_absurd_declared_length_is_not_allocated(server):
    """A frame header that declares 2**62 bytes costs the host nothing: it is not allocated
    (which would abort the process), the bytes that follow are discarded, and the host serves
    on once the peer goes away."""
    c = server.client()
    base = rss(server.proc.pid)
    raw = zmtp_dealer(server.conn["router_port"])
    # A long frame with `more` set: the signature frame of a request that never ends.
    try:
        raw.sendall(bytes([0x03]) + struct.pack(">Q", 1 << 62) + b"y" * (8 << 20))
    except OSError:
        pass  # the host hung up: it may, as long as it lives on
    # Whatever the host does with it, it must still answer others while that peer streams.
    runs_code(c)
    raw.close()
    assert server.proc.poll() is None, server.output()
    assert rss(server.proc.pid) - base < MAX_MESSAGE + OVERHEAD
    runs_code(c)
    runs_code(server.client())


def test_oversized_frames_on_an_attached_jupyter_shell(server):
    """The Jupyter sockets have the same kind of bound (64 MiB, advertised nowhere): a bigger
    message to an attached session's shell socket is read through a fixed buffer and dropped,
    and the kernel answers kernel_info afterwards."""
    from jupyter_client.session import Session

    c = server.client()
    s = c.create("python")
    attach = c.ok({"type": "attach", "session": s["id"]})
    conn = attach["connection"]
    base = rss(server.proc.pid)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://{conn['ip']}:{conn['shell_port']}")
    session = Session(key=conn["key"].encode(), signature_scheme=conn["signature_scheme"])
    big = b"z" * HUGE
    sampler = Sampler(server.proc.pid)
    try:
        dealer.send_multipart([b"<IDS|MSG>", b"0" * 64, b"{}", b"{}", b"{}", big], copy=False)
        # A signed kernel_info_request behind it on the same connection: its reply comes once
        # the host has read all of the big message, and shows the connection is still up.
        session.send(dealer, "kernel_info_request", {})
        assert dealer.poll(120_000), "no kernel_info_reply"
        _, msg = session.feed_identities(dealer.recv_multipart())
        reply = session.deserialize(msg)
    finally:
        peak = sampler.stop()
        dealer.close(0)
        ctx.term()
    del big
    assert reply["msg_type"] == "kernel_info_reply"
    assert reply["content"]["status"] == "ok"
    assert peak - base < (64 << 20) + OVERHEAD, \
        f"host RSS rose by {(peak - base) >> 20} MiB while dropping a {HUGE >> 20} MiB message"
    assert stdout(c.execute(s["id"], "print('still here')")) == "still here\n"
    c.ok({"type": "close", "session": s["id"]})
