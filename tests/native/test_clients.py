"""Many clients at once: shared sessions, bad input, slow and vanished clients, lagging
subscribers, and 100 concurrent sessions."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest
import zmq

from native_helpers import (Watcher, check_event, check_reply, is_finished, outcome, sign,
                            stdout, wait_gone)


_still_serving_runs = iter(range(1, 1 << 30))


def still_serving(client):
    """The host answers, and a session still runs code: one python session per host (named
    `still-serving`, created on first use) evaluates a fresh expression each call and prints
    its value."""
    listed = client.ok({"type": "list_sessions"})
    assert listed["type"] == "sessions"
    if not any(s.get("name") == "still-serving" for s in listed["sessions"]):
        client.create("python", name="still-serving")
    n = next(_still_serving_runs)
    chunks = client.execute("still-serving", f"print({n} * 7)", wait=30)
    assert outcome(chunks) == "ok", chunks
    assert stdout(chunks) == f"{n * 7}\n", chunks


def test_two_clients_one_session(shared_server):
    a = shared_server.client()
    b = shared_server.client()
    s = a.create("python", name="shared")
    watcher = Watcher(shared_server, b, s["id"])
    # A runs code; B sees the whole stream, tagged with A's request.
    rid = a.send({"type": "execute", "session": "shared",
                  "code": "for i in range(3): print('from A', i, flush=True)"})
    a_chunks = a.chunks(rid)
    evs = watcher.events_until(lambda e: e["type"] == "chunk" and is_finished(e["chunk"]))
    seen = [e["chunk"] for e in evs if e["type"] == "chunk"]
    assert seen == a_chunks
    assert all(c["request"] == rid for c in seen)
    assert stdout(seen) == "from A 0\nfrom A 1\nfrom A 2\n"
    # B then runs its own code in the same session and sees A's state.
    b_chunks = b.execute("shared", "print('B sees i =', i)")
    assert stdout(b_chunks) == "B sees i = 2\n"
    # ...which the watcher sees too, tagged with B's request.
    evs = watcher.events_until(lambda e: e["type"] == "chunk" and is_finished(e["chunk"]))
    assert [e["chunk"] for e in evs if e["type"] == "chunk"] == b_chunks
    # And A gets nothing of B's execution on its DEALER.
    assert a.sock.poll(200) == 0
    watcher.close()
    a.ok({"type": "close", "session": "shared"})


def test_bad_signatures_are_rejected_and_change_nothing(shared_server, client):
    before = client.ok({"type": "list_sessions"})["sessions"]
    wrong = shared_server.client(key="0" * 64)
    body = json.dumps({"id": "evil", "type": "create_session", "language": "python"}).encode()
    cases = [
        [sign(b"0" * 64, body), body],          # signed with another key
        [b"", body],                              # empty signature
        [b"zz" * 32, body],                       # not hex
        [sign(client.key, body)[:-2] + b"00", body],  # one byte off
    ]
    for frames in cases:
        client.send_raw(frames)
        reply = client.recv_any(10)  # verified with the real key: the error reply is signed
        assert reply["type"] == "error" and reply["code"] == "bad_signature", reply
        assert reply["id"] is None
    # The client with the wrong key cannot even read the host's answer as valid.
    wrong.send({"type": "list_sessions"})
    frames = wrong.sock.recv_multipart() if wrong.sock.poll(10000) else None
    assert frames is not None
    sig, reply_body = frames
    assert sig == sign(shared_server.conn["key"].encode(), reply_body)
    reply = json.loads(reply_body)
    check_reply(reply)
    assert reply["code"] == "bad_signature"
    # Nothing was created.
    time.sleep(0.3)
    assert client.ok({"type": "list_sessions"})["sessions"] == before
    assert "evil" not in shared_server.output()
    assert shared_server.conn["key"] not in shared_server.output()


BAD_FRAMES = [
    pytest.param([b"only-one-frame"], "bad_frames", id="one-frame"),
    pytest.param([b"a", b"b", b"c"], "bad_frames", id="three-frames"),
    pytest.param([b"", b"", b"", b""], "bad_frames", id="four-empty-frames"),
]


@pytest.mark.parametrize("frames, code", BAD_FRAMES)
def test_malformed_multipart(client, frames, code):
    client.send_raw(frames)
    reply = client.recv_any(10)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert "2 frames" in reply["reason"]
    still_serving(client)


def signed(client, body: bytes):
    client.send_raw([sign(client.key, body), body])
    return client.recv_any(10)


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"\xff\xfe", b'{"id": "1", "type": "list_sessions"', b"nul\x00l",
], ids=["garbage", "empty", "not-utf8", "truncated", "nul"])
def test_invalid_json(client, body):
    reply = signed(client, body)
    assert reply["type"] == "error" and reply["code"] == "bad_json", reply
    assert reply["reason"].startswith("invalid JSON")
    still_serving(client)


@pytest.mark.parametrize("msg, needle", [
    ([1, 2, 3], "invalid type"),
    ({"id": "w1"}, "type"),
    ({"id": "w2", "type": "launch_rockets"}, "unknown variant"),
    ({"id": "w3", "type": "execute", "session": "x"}, "code"),
    ({"id": "w4", "type": "execute", "session": 5, "code": "1"}, "invalid type"),
    ({"type": "list_sessions"}, "id"),
    ({"id": 7, "type": "list_sessions"}, "invalid type"),
    ({"id": "w5", "type": "create_session", "language": "python", "timeout": "soon"},
     "invalid type"),
    ({"id": "w6", "type": "create_session", "language": "python", "env": {"A": 1}},
     "invalid type"),
], ids=["array", "no-type", "unknown-type", "missing-field", "wrong-type", "no-id",
        "numeric-id", "timeout-string", "env-number"])
def test_valid_json_of_the_wrong_shape(client, msg, needle):
    reply = signed(client, json.dumps(msg).encode())
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert needle in reply["reason"], reply
    if isinstance(msg, dict) and isinstance(msg.get("id"), str):
        assert reply["id"] == msg["id"]  # echoed when it could be read
    still_serving(client)


@pytest.mark.parametrize("msg, code", [
    ({"type": "create_session", "language": "cobol"}, "unsupported"),
    ({"type": "create_session", "language": "python", "cwd": "/no/such/dir"}, "bad_request"),
    ({"type": "create_session", "language": "python", "timeout": -1}, "bad_request"),
    ({"type": "create_session", "language": "python", "name": ""}, "bad_request"),
    ({"type": "execute", "session": "nope", "code": "1"}, "unknown_session"),
    ({"type": "session_info", "session": "nope"}, "unknown_session"),
    ({"type": "interrupt", "session": "nope"}, "unknown_session"),
    ({"type": "restart", "session": "nope"}, "unknown_session"),
    ({"type": "close", "session": "nope"}, "unknown_session"),
    ({"type": "stdin", "session": "nope", "data": "x"}, "unknown_session"),
    ({"type": "input_reply", "session": "nope", "value": "x"}, "unknown_session"),
    ({"type": "complete", "session": "nope", "code": "x"}, "unknown_session"),
    ({"type": "inspect", "session": "nope", "code": "x"}, "unknown_session"),
    ({"type": "is_complete", "session": "nope", "code": "x"}, "unknown_session"),
    ({"type": "watch", "session": "nope"}, "unknown_session"),
    ({"type": "attach", "session": "nope"}, "unknown_session"),
])
def test_bad_requests_get_clear_errors(client, msg, code):
    reply = client.request(msg)
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert reply["reason"]
    still_serving(client)


def test_closed_session_and_stray_input_reply(client):
    s = client.create("python")
    # A reply to an input request that does not exist.
    reply = client.request({"type": "input_reply", "session": s["id"], "value": "x"})
    assert reply["type"] == "error" and reply["code"] == "no_pending_input", reply
    assert "no input request" in reply["reason"]
    # Empty code.
    reply = client.request({"type": "execute", "session": s["id"], "code": "  "})
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert stdout(client.execute(s["id"], "print('fine')")) == "fine\n"
    client.ok({"type": "close", "session": s["id"]})
    for msg in [{"type": "execute", "session": s["id"], "code": "1"},
                {"type": "input_reply", "session": s["id"], "value": "x"},
                {"type": "close", "session": s["id"]}]:
        reply = client.request(msg)
        assert reply["type"] == "error" and reply["code"] == "session_closed", reply
        assert "closed" in reply["reason"]
    still_serving(client)


def test_huge_message_beyond_the_limit(shared_server, client):
    limit = shared_server.conn["max_message"]
    msg = {"id": "huge", "type": "execute", "session": "x", "code": "#" + "x" * (2 * limit)}
    body = json.dumps(msg).encode()
    client.send_raw([sign(client.key, body), body])
    reply = client.recv_any(30)
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert str(limit) in reply["reason"]
    # Just under the limit is fine (an execute of a big comment).
    s = client.create("python")
    code = "#" + "y" * (limit - 1000) + "\nprint('ok')"
    chunks = client.execute(s["id"], code)
    assert stdout(chunks) == "ok\n"
    client.ok({"type": "close", "session": s["id"]})
    still_serving(client)


def test_overlong_request_id(client):
    body = json.dumps({"id": "i" * 300, "type": "list_sessions"}).encode()
    reply = signed(client, body)
    assert reply["type"] == "error" and reply["code"] == "bad_request"
    assert "256" in reply["reason"]


def test_slow_and_vanished_clients_do_not_block_others(shared_server, client):
    """A client that stops reading a big stream, and one that disconnects mid-stream, cost the
    others nothing."""
    slow = shared_server.client(rcvhwm=1, rcvbuf=4096)
    gone = shared_server.client()
    s1 = slow.create("python")
    s2 = gone.create("python")
    big = "import sys\nfor i in range(100):\n    sys.stdout.write('z' * 100000 + '\\n')\n"
    slow.send({"type": "execute", "session": s1["id"], "code": big})
    gone.send({"type": "execute", "session": s2["id"],
               "code": "import time\nfor i in range(100):\n    print(i, flush=True)\n"
                       "    time.sleep(0.02)"})
    time.sleep(0.2)
    gone.close()  # vanishes mid-stream
    # Meanwhile another client works normally, promptly.
    s3 = client.create("python")
    for i in range(5):
        t = time.monotonic()
        assert stdout(client.execute(s3["id"], f"print({i})", wait=10)) == f"{i}\n"
        assert time.monotonic() - t < 5
    # The vanished client's execution ran to its end (visible in its session's state).
    deadline = time.monotonic() + 20
    while client.ok({"type": "session_info", "session": s2["id"]})["session"]["execution_count"] < 1 \
            or client.ok({"type": "session_info", "session": s2["id"]})["session"]["state"] == "busy":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # The slow client, once it reads, gets its stream: every chunk it was not told it missed.
    # The execution's chunks have consecutive seqs from its `started` to its `finished`, so
    # those received plus those reported missed account for each of them exactly.
    seqs, missed, text = [], 0, []
    deadline = time.monotonic() + 60
    while True:
        msg = slow.recv_any(max(0.1, deadline - time.monotonic()))
        if msg["type"] == "missed":
            assert msg["session"] == s1["id"] and msg["count"] > 0, msg
            missed += msg["count"]
        elif msg["type"] == "chunk":
            chunk = msg["chunk"]
            if not seqs:
                assert chunk["type"] == "status" and chunk["format"] == "started", chunk
            seqs.append(chunk["seq"])
            if chunk["type"] == "console":
                text.append(chunk.get("content", ""))
            if is_finished(chunk):
                assert outcome([chunk]) == "ok"
                break
    assert seqs == sorted(set(seqs)), "chunks repeated or out of order"
    assert len(seqs) + missed == seqs[-1] - seqs[0] + 1, (len(seqs), missed, seqs[0], seqs[-1])
    got = "".join(text)
    assert set(got) <= {"z", "\n"}
    if missed == 0:
        assert got == ("z" * 100000 + "\n") * 100
    for sid in (s1["id"], s2["id"], s3["id"]):
        client.ok({"type": "close", "session": sid})


def test_client_that_stops_reading_is_cut_off_and_told(serve):
    """A client that stops reading (its process frozen) holds at most its buffer; after
    --client-timeout its chunks are dropped, the session runs on, and the client learns
    exactly how many it missed."""
    server = serve("--client-buffer", "1000000", "--client-timeout", "1")
    c = server.client()
    s = c.create("python")
    code = ("import sys\nfor i in range(400):\n    print('o' * 50000, flush=True)\n"
            "    print('e' * 50000, file=sys.stderr, flush=True)\n")
    stuck = subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).with_name("stuck_client.py")),
         str(server.path), s["id"], code, "1", "65536"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parent)))
    try:
        assert stuck.stdout.readline() == "sent\n"
        stuck.send_signal(signal.SIGSTOP)
        # The session finishes although its requester reads nothing...
        deadline = time.monotonic() + 60
        while True:
            info = c.ok({"type": "session_info", "session": s["id"]})["session"]
            if info["execution_count"] == 1 and info["state"] == "idle":
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        # ...and runs the next execution at once.
        assert stdout(c.execute(s["id"], "print('next')", wait=10)) == "next\n"
        # The host did not buffer the 40 MB for it.
        rss = psutil.Process(server.proc.pid).memory_info().rss
        stuck.send_signal(signal.SIGCONT)
        out, _ = stuck.communicate("go\n", timeout=60)
    finally:
        if stuck.poll() is None:
            stuck.send_signal(signal.SIGCONT)
            stuck.kill()
            stuck.wait()
    got = json.loads(out.splitlines()[-1])
    assert got["missed"] > 0
    seqs = got["seqs"]
    assert got["received"] + got["missed"] == seqs[-1] - seqs[0] + 1
    assert seqs == sorted(seqs)
    assert rss < 200 * 2**20


def test_lagging_subscriber_is_told_what_it_missed(serve):
    """With a small event buffer, a subscriber that stops reading fills it; then events are
    dropped rather than buffered, and every subscriber is told how many it missed. Missed
    plus received adds up to exactly what the requester got."""
    server = serve("--event-buffer", "65536")
    c = server.client()
    s = c.create("python")
    stuck = Watcher(server, c, s["id"], rcvhwm=1, rcvbuf=4096)
    live = Watcher(server, c, s["id"])
    code = ("import sys\nfor i in range(400):\n"
            "    sys.stdout.write(str(i) * 50000 + '\\n'); sys.stdout.flush()\n")
    rid = c.send({"type": "execute", "session": s["id"], "code": code})
    chunks = c.chunks(rid, wait=120)
    assert outcome(chunks) == "ok"
    assert len("".join(ch.get("content", "") for ch in chunks if ch["type"] == "console")) \
        > 400 * 50000
    stuck.close()  # frees what it pinned
    received, missed, last_seq = 0, 0, None
    while True:
        try:
            ev = live.recv(2)
        except TimeoutError:
            break
        if ev["type"] == "chunk" and ev["chunk"]["request"] == rid:
            received += 1
            if last_seq is not None:
                assert ev["chunk"]["seq"] > last_seq
            last_seq = ev["chunk"]["seq"]
        elif ev["type"] == "missed":
            assert ev["count"] > 0 and ev["session"] == s["id"]
            missed += ev["count"]
    assert missed > 0, "the stuck subscriber never filled the event buffer"
    assert received + missed == len(chunks)
    # The host kept its memory bounded while it happened.
    assert psutil.Process(server.proc.pid).memory_info().rss < 400 * 2**20
    live.close()


def test_hundred_concurrent_python_sessions(serve):
    server = serve()
    c = server.client()
    n = 100
    rids = [c.send({"type": "create_session", "language": "python", "name": f"p{i}"})
            for i in range(n)]
    sessions = {}
    for i, rid in enumerate(rids):
        reply = c.recv(rid, 180)
        assert reply["type"] == "session", reply
        sessions[i] = reply["session"]["id"]
    assert len(set(sessions.values())) == n
    rids = {i: c.send({"type": "execute", "session": sessions[i], "code": f"print({i} * {i})"})
            for i in range(n)}
    for i, rid in rids.items():
        chunks = c.chunks(rid, wait=180)
        assert stdout(chunks) == f"{i * i}\n" and outcome(chunks) == "ok"
    listed = c.ok({"type": "list_sessions"})["sessions"]
    assert len(listed) == n
    pids = [p.pid for p in server.descendants()]
    assert len(pids) >= n
    assert server.stop(timeout=60) == 0
    assert wait_gone(pids) == []


def test_concurrent_requests_from_one_client_keep_their_order(client):
    s = client.create("python")
    rids = [client.send({"type": "execute", "session": s["id"], "code": f"l = globals().setdefault('l', []); l.append({i})"})
            for i in range(20)]
    for rid in rids:
        assert outcome(client.chunks(rid)) == "ok"
    assert stdout(client.execute(s["id"], "print(l)")) == f"{list(range(20))}\n"
    client.ok({"type": "close", "session": s["id"]})


def test_subscriber_needs_no_request(shared_server, client):
    """A bare SUB socket (no watch handshake) receives events too, signed."""
    s = client.create("python")
    sub = shared_server.ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(f"tcp://127.0.0.1:{shared_server.conn['pub_port']}")
    sub.subscribe(s["id"].encode())
    # Until the subscription reaches the host (ZeroMQ's slow-joiner gap), events are dropped
    # for it: run code until the bare socket hears any of it.
    deadline = time.monotonic() + 30
    while True:
        client.execute(s["id"], "print('x')")
        if sub.poll(200):
            break
        assert time.monotonic() < deadline, "a bare SUB socket never received an event"
    topic, sig, body = sub.recv_multipart()
    assert topic == s["id"].encode()
    assert sig == sign(client.key, body)
    ev = json.loads(body)
    check_event(ev)
    assert ev["type"] == "chunk" and ev["chunk"]["session"] == s["id"]
    sub.close(0)
    client.ok({"type": "close", "session": s["id"]})
