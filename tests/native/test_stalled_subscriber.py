"""A stalled subscriber costs the host at most the budgets it advertises (issue 12, fault 1).

One Python session floods a client that reads everything, while a SUB socket (subscribed,
welcomed, receive high-water mark 1) reads nothing until the flood is over. The host's memory
(host and children, from /proc) stays within its budgets plus a fixed overhead, and when the
subscriber drains it gets at most the event buffer of old chunks, then `missed` counts and
current chunks: received and missed add up to every `seq`, gap by gap."""
import json
import os
import threading
import time

import psutil
import zmq

from native_helpers import Watcher, is_finished, sign

MIB = 1 << 20
EVENT_BUFFER = 16 * MIB
REPLAY_LOG = 16 * MIB
CLIENT_BUFFER = 16 * MIB
FLOOD = 256  # MiB, in 1 MiB lines
# Beyond the budgets: the execution's own stream (64 chunks of up to 1 MiB, back-pressured),
# the chunk each task has in hand, allocator slack.
FIXED_OVERHEAD = 128 * MIB
# Bytes past the event buffer in flight to a subscriber: TCP buffers (both ends), libzmq's queue.
TRANSPORT = 8 * MIB


def rss_tree(pid) -> int:
    """Resident bytes of `pid` and its descendants, from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    pids = [pid]
    try:
        pids += [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss_tree(self.pid))
            self.done.wait(0.05)


def read_execution(client, rid, timeout=300):
    """Read every reply of execution `rid` quickly (no schema checks on megabyte chunks); the
    stdout bytes and the chunks' seqs."""
    deadline = time.monotonic() + timeout
    got, seqs = 0, []
    while True:
        assert client.sock.poll(max(0, deadline - time.monotonic()) * 1000), "flood stalled"
        sig, body = client.sock.recv_multipart()
        msg = json.loads(body)
        if msg.get("id") != rid:
            continue
        assert msg["type"] == "chunk", msg
        ch = msg["chunk"]
        seqs.append(ch["seq"])
        if ch["type"] == "console":
            got += len(ch.get("content", ""))
        if is_finished(ch):
            assert ch["content"]["outcome"] == "ok", ch
            return got, seqs


def test_stalled_subscriber_is_bounded_by_the_budgets(serve):
    server = serve("--event-buffer", str(EVENT_BUFFER), "--replay-log", str(REPLAY_LOG),
                   "--client-buffer", str(CLIENT_BUFFER))
    assert server.conn["replay_log"] == REPLAY_LOG
    c = server.client()
    s = c.create("python")
    sid = s["id"]
    assert c.execute(sid, "print('warm')")[-1]["content"]["outcome"] == "ok"
    stuck = Watcher(server, c, sid, rcvhwm=1, rcvbuf=4096)
    baseline = rss_tree(server.proc.pid)
    sampler = Sampler(server.proc.pid)
    sampler.start()
    code = ("import sys\n"
            f"for i in range({FLOOD}):\n"
            "    sys.stdout.write(('%08d' % i) + 'x' * (1048576 - 9) + '\\n')\n")
    rid = c.send({"type": "execute", "session": sid, "code": code})
    got, seqs = read_execution(c, rid)
    sampler.done.set()
    sampler.join()
    assert got == FLOOD * MIB
    bound = baseline + EVENT_BUFFER + REPLAY_LOG + CLIENT_BUFFER + FIXED_OVERHEAD
    assert sampler.peak <= bound, (
        f"host + children reached {sampler.peak / MIB:.0f} MiB; baseline "
        f"{baseline / MIB:.0f} MiB, bound {bound / MIB:.0f} MiB")

    # A marker execution after the flood: the subscriber must get it current.
    marker = c.execute(sid, "print('after the flood')")
    last = marker[-1]["seq"]

    # Now the subscriber drains.
    received, missed, stale_bytes = [], 0, 0
    prev = None
    pending_missed = 0
    while True:
        ev = stuck.recv(60)
        if ev["type"] == "welcome":
            continue
        if ev["type"] == "missed":
            assert ev["session"] == sid and ev["count"] > 0, ev
            pending_missed += ev["count"]
            missed += ev["count"]
            continue
        assert ev["type"] == "chunk", ev
        ch = ev["chunk"]
        expected = (prev + 1 if prev is not None else seqs[0]) + pending_missed
        assert ch["seq"] == expected, (ch["seq"], prev, pending_missed)
        pending_missed = 0
        prev = ch["seq"]
        received.append(ch["seq"])
        if ch["request"] == rid:
            stale_bytes += len(ch.get("content", ""))
        if ch["seq"] == last:
            break
    stuck.close()
    assert missed > 0, "the stalled subscriber never filled the event buffer"
    assert len(received) + missed == last - seqs[0] + 1
    # Old chunks after the stall: at most what the event buffer held (plus what the transport
    # holds once ZeroMQ has encoded a message: socket buffers on both sides, the SUB's own
    # queue), not a backlog.
    assert stale_bytes <= EVENT_BUFFER + TRANSPORT, f"{stale_bytes / MIB:.0f} MiB of old chunks"
    assert seqs == sorted(seqs)
