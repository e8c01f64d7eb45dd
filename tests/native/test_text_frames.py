"""`text_frames`: console text as raw UTF-8 in a third frame, `[signature, json, text]`, signed
with the JSON. What a client reassembles must be exactly what it gets without the option (same
chunks, same text, same order), from `execute` and from `replay`; every other reply keeps two
frames; and the signature covers the text, so a changed text frame fails the check."""
import hashlib
import hmac
import json
import time

from native_helpers import check_reply, is_finished, sign

# Text that JSON must escape, text it must not, and more than one chunk's worth of it.
CODE = r"""
import sys
sys.stdout.write('quote " backslash \\ tab \t nul \x00 é 漢字 🎉 "content":""\n')
sys.stderr.write('to stderr\n')
sys.stdout.write(''.join('%07d' % i + 'x' * 56 + '\n' for i in range(48 * 1024)))
print('done')
6 * 7
"""


def finished(msg):
    return msg["type"] == "chunk" and is_finished(msg["chunk"])


def raw_replies(client, rid, wait=60.0, until=finished):
    """Every reply to `rid` up to the one `until` accepts, as (message, text frame or None),
    each signature checked the way the protocol says: HMAC of the JSON, then of the text."""
    out = []
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        assert left > 0 and client.sock.poll(left * 1000), "no reply in time"
        frames = client.sock.recv_multipart()
        assert len(frames) in (2, 3), len(frames)
        sig, body, *text = frames
        mac = hmac.new(client.key, body, hashlib.sha256)
        for t in text:
            mac.update(t)
        assert hmac.compare_digest(sig, mac.hexdigest().encode()), "bad signature"
        msg = json.loads(body)
        check_reply(msg)
        if msg.get("id") != rid:
            continue
        out.append((msg, text[0] if text else None))
        if until(msg):
            return out


def reassembled(replies):
    """The chunks as a client keeps them: text frames put back into `content`."""
    chunks = []
    for msg, text in replies:
        if msg["type"] != "chunk":
            continue
        chunk = msg["chunk"]
        if text is not None:
            chunk = dict(chunk, content=text.decode())
        chunks.append(chunk)
    return chunks


def rich(chunks):
    """What two runs of the same code must agree on besides the console text (which the
    host may cut into chunks at other places each time): every chunk that is neither console
    nor status."""
    return [{k: v for k, v in c.items() if k not in ("seq", "request")} for c in chunks
            if c["type"] not in ("console", "status")]


def console(chunks, fmt):
    return "".join(c["content"] for c in chunks
                   if c["type"] == "console" and c["format"] == fmt and "content" in c)


def test_console_text_comes_in_a_third_frame_and_reassembles_exactly(client):
    s = client.create("python")["id"]
    # Not counted, so both runs' results carry the same execution count.
    plain = client.execute(s, CODE, store_history=False)
    rid = client.send({"type": "execute", "session": s, "code": CODE, "text_frames": True,
                       "store_history": False})
    replies = raw_replies(client, rid)
    framed = [(m, t) for m, t in replies if t is not None]
    assert len(framed) >= 2, "the output should need more than one chunk"
    for msg, text in replies:
        chunk = msg.get("chunk", {})
        has_text = chunk.get("type") == "console" and "content" in chunk
        # Console content always travels in the frame, and nothing else does.
        assert (text is not None) == has_text, msg
        if text is not None:
            assert chunk["content"] == ""
    chunks = reassembled(replies)
    assert rich(chunks) == rich(plain) and rich(chunks)
    assert chunks[-1]["content"]["outcome"] == "ok"
    out = console(chunks, "stdout")
    assert out == console(plain, "stdout")
    assert out.startswith('quote " backslash \\ tab \t nul \x00 é 漢字 🎉 "content":""\n')
    assert out.endswith("0049151" + "x" * 56 + "\ndone\n")
    assert console(chunks, "stderr") == "to stderr\n"
    result = [c for c in chunks if c["type"] == "result" and "content" in c]
    assert result and result[0]["content"]["data"] == "42"


def test_the_signature_covers_the_text_frame(client):
    s = client.create("python")["id"]
    rid = client.send({"type": "execute", "session": s, "code": "print('a' * 9000)",
                       "text_frames": True})
    seen = False
    deadline = time.monotonic() + 60
    while not seen:
        assert client.sock.poll(max(0, deadline - time.monotonic()) * 1000)
        frames = client.sock.recv_multipart()
        if len(frames) != 3:
            continue
        sig, body, text = frames
        assert json.loads(body)["id"] == rid
        good = hmac.new(client.key, body + text, hashlib.sha256).hexdigest().encode()
        assert hmac.compare_digest(sig, good)
        assert not hmac.compare_digest(sig, sign(client.key, body))
        changed = text[:-2] + b"b\n"
        assert not hmac.compare_digest(
            sig, hmac.new(client.key, body + changed, hashlib.sha256).hexdigest().encode())
        seen = True
    client.execute(s, "1")  # the rest of that execution is skipped as other ids; still usable


def test_replay_with_text_frames_is_the_log_as_plain_replay_gives_it(client):
    s = client.create("python")["id"]
    client.execute(s, CODE)

    def replay(text_frames):
        rid = client.send({"type": "replay", "session": s, "follow": False,
                           "text_frames": text_frames})
        return raw_replies(client, rid, until=lambda m: m["type"] == "replayed")

    plain = replay(False)
    assert all(t is None for _, t in plain)
    framed = replay(True)
    assert sum(t is not None for _, t in framed) >= 2
    # Same chunks, same seq numbers, same text, once the frames are put back.
    assert reassembled(framed) == reassembled(plain)
    assert framed[-1][0]["next_seq"] == plain[-1][0]["next_seq"]


def test_text_frames_that_is_not_a_boolean_is_a_bad_request(client):
    s = client.create("python")["id"]
    # Off the schema, so sent by hand (the helper validates what it sends).
    body = json.dumps({"id": "tf1", "type": "execute", "session": s, "code": "1",
                       "text_frames": "yes"}).encode()
    client.send_raw([sign(client.key, body), body])
    reply = client.recv("tf1")
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert "expected a boolean" in reply["reason"]
    # The session is fine, and plain replies stay two frames.
    chunks = client.execute(s, "print('ok')")
    assert console(chunks, "stdout") == "ok\n"
