"""Run code in a new Spindle session and print its chunks as they stream.

usage: python client.py CONNECTION_FILE [LANGUAGE] [CODE]   (the file `spindle serve` wrote)
"""
import hashlib, hmac, json, sys, uuid

import zmq

conn = json.load(open(sys.argv[1]))
lang = sys.argv[2] if len(sys.argv) > 2 else "python"
code = sys.argv[3] if len(sys.argv) > 3 else "print('hello from Spindle')"
key = conn["key"].encode()
sock = zmq.Context().socket(zmq.DEALER)
sock.linger = 1000
sock.connect(f"tcp://{conn['ip']}:{conn['router_port']}")
sign = lambda *parts: hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode()


def recv():  # replies are [signature, json]; console text may come raw: [signature, json, text]
    sig, body, *text = sock.recv_multipart()
    assert hmac.compare_digest(sig, sign(body, *text)), "bad signature"
    msg = json.loads(body)
    if text:  # we ask for text_frames: the chunk's content is the third frame
        msg["chunk"]["content"] = text[0].decode()
    return msg


def ask(msg):  # requests too; every reply echoes the request's id
    body = json.dumps({"id": str(uuid.uuid4()), **msg}).encode()
    sock.send_multipart([sign(body), body])
    return recv()


reply = ask({"type": "create_session", "language": lang})
if reply["type"] == "error":
    sys.exit(reply["reason"])
session = reply["session"]["id"]
msg = ask({"type": "execute", "session": session, "code": code, "text_frames": True})
while msg["type"] in ("chunk", "missed"):
    c = msg.get("chunk") or {"type": "missed", "content": f"{msg['count']} chunks"}
    out = c.get("content")
    if c["type"] == "status" and c["format"] == "finished":
        break
    if c["type"] == "console" and out:
        print(out, end="", flush=True, file=sys.stderr if c["format"] == "stderr" else None)
    elif c["type"] == "error" and out:
        print("\n".join(out["traceback"]), file=sys.stderr)
    elif out and c["type"] != "status":
        print(f"[{c['type']}]", out.get("data", out) if isinstance(out, dict) else out)
    msg = recv()
ask({"type": "close", "session": session})
sys.exit(0 if msg.get("chunk", {}).get("content", {}).get("outcome") == "ok" else 1)
