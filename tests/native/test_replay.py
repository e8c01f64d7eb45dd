"""Replay from a session's log (issue 12: late attach and reconnect): a client whose connection
broke in the middle of a long execution reconnects, asks for the chunks from its last `seq` on,
and ends up with every byte exactly once, then the rest live; a replay from a `seq` the log no
longer keeps gets a `missed` count and then everything kept."""
import json
import time

from native_helpers import REPLY, is_finished, shrunk

MIB = 1 << 20


def fast_recv(client, rid, deadline):
    """The next reply to `rid`, schema-checked with long strings cut short."""
    while True:
        left = deadline - time.monotonic()
        assert left > 0 and client.sock.poll(left * 1000), "no reply in time"
        sig, body = client.sock.recv_multipart()
        msg = json.loads(body)
        REPLY.validate(shrunk(msg))
        if msg.get("id") == rid:
            return msg


def part(tag, mib):
    """Code printing `mib` lines of 1 MiB, each saying where it is."""
    return (f"for i in range({mib}):\n"
            f"    sys.stdout.write(('{tag}%06d' % i) + 'x' * (1048576 - 8) + '\\n')\n"
            "    sys.stdout.flush()\n")


def expected(tag, mib):
    return "".join(f"{tag}{i:06d}" + "x" * (MIB - 8) + "\n" for i in range(mib))


def test_reconnect_mid_execution_gets_every_byte_once(serve, tmp_path):
    server = serve()
    assert server.conn["replay_log"] >= 64 * MIB
    a = server.client()
    s = a.create("python")
    sid = s["id"]
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    code = ("import os, sys, time\n" + part("a", 20)
            + f"while not os.path.exists({str(go1)!r}): time.sleep(0.01)\n" + part("b", 15)
            + f"while not os.path.exists({str(go2)!r}): time.sleep(0.01)\n" + part("c", 15))
    rid = a.send({"type": "execute", "session": sid, "code": code})
    # Client A reads about 8 MiB, then its connection breaks.
    first, text_a = [], ""
    deadline = time.monotonic() + 120
    while len(text_a) < 8 * MIB:
        msg = fast_recv(a, rid, deadline)
        assert msg["type"] == "chunk", msg
        first.append(msg["chunk"])
        if msg["chunk"]["type"] == "console":
            text_a += msg["chunk"].get("content", "")
    last_seq = first[-1]["seq"]
    a.close()
    go1.write_text("")  # part b is written while nobody is connected
    # Client B reconnects and replays from the chunk after the last one A saw.
    b = server.client()
    rep = b.send({"type": "replay", "session": sid, "from_seq": last_seq + 1})
    rest, text_b, replayed = [], "", None
    deadline = time.monotonic() + 180
    while replayed is None:
        msg = fast_recv(b, rep, deadline)
        assert msg["type"] in ("chunk", "replayed"), msg  # nothing missed: the log kept it all
        if msg["type"] == "replayed":
            replayed = msg
            break
        ch = msg["chunk"]
        rest.append(ch)
        if ch["type"] == "console":
            text_b += ch.get("content", "")
            if not go2.exists() and "b000014" in ch.get("content", ""):
                go2.write_text("")  # part c is written while B follows live
    everything = first + rest
    seqs = [c["seq"] for c in everything]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "every seq exactly once"
    assert is_finished(everything[-1]) and everything[-1]["content"]["outcome"] == "ok"
    assert replayed["next_seq"] == seqs[-1] + 1 and replayed["session"] == sid
    stdout = "".join(c.get("content", "") for c in everything
                     if c["type"] == "console" and c["format"] == "stdout")
    assert stdout == expected("a", 20) + expected("b", 15) + expected("c", 15)
    # The chunks replayed are the ones first sent: the same as a watcher from the start.
    again = b.send({"type": "replay", "session": sid, "from_seq": seqs[0], "follow": False})
    replayed_again = []
    while True:
        msg = fast_recv(b, again, time.monotonic() + 120)
        if msg["type"] == "replayed":
            break
        assert msg["type"] == "chunk", msg
        replayed_again.append(msg["chunk"])
    assert replayed_again == everything


def test_replay_from_before_the_log_says_what_it_missed(serve):
    server = serve("--replay-log", str(4 * MIB))
    assert server.conn["replay_log"] == 4 * MIB
    c = server.client()
    sid = c.create("python")["id"]
    code = "import sys\n" + part("d", 16)
    chunks = []
    rid = c.send({"type": "execute", "session": sid, "code": code})
    deadline = time.monotonic() + 120
    while not chunks or not is_finished(chunks[-1]):
        msg = fast_recv(c, rid, deadline)
        assert msg["type"] == "chunk", msg
        chunks.append(msg["chunk"])
    total = chunks[-1]["seq"] + 1
    rep = c.send({"type": "replay", "session": sid, "from_seq": 0})
    first = fast_recv(c, rep, time.monotonic() + 30)
    assert first["type"] == "missed" and first["session"] == sid, first
    kept = []
    while True:
        msg = fast_recv(c, rep, time.monotonic() + 30)
        if msg["type"] == "replayed":
            break
        assert msg["type"] == "chunk", msg
        kept.append(msg["chunk"])
    assert msg["next_seq"] == total
    assert kept and kept[0]["seq"] == first["count"], "the gap is exactly what was missed"
    assert first["count"] + len(kept) == total
    assert kept == chunks[-len(kept):]
    kept_bytes = sum(len(c.get("content", "")) for c in kept)
    assert kept_bytes <= 4 * MIB + MIB, "the log keeps its budget (plus the newest chunk)"
    # A replay from beyond the newest chunk has nothing to send.
    empty = c.send({"type": "replay", "session": sid, "from_seq": total + 100})
    msg = fast_recv(c, empty, time.monotonic() + 30)
    assert msg["type"] == "replayed" and msg["next_seq"] == total, msg
    # An unknown session is an error, not a hang.
    bad = c.request({"type": "replay", "session": "nope", "from_seq": 0})
    assert bad["type"] == "error" and bad["code"] == "unknown_session", bad
