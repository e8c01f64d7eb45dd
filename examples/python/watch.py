"""Print everything that happens in a Spindle session, whoever runs the code.

usage: python watch.py CONNECTION_FILE SESSION   (a session id or name; stops when it closes)
"""
import hashlib, hmac, json, sys, uuid

import zmq

conn, target = json.load(open(sys.argv[1])), sys.argv[2]
key = conn["key"].encode()
ctx = zmq.Context()
dealer, sub = ctx.socket(zmq.DEALER), ctx.socket(zmq.SUB)
dealer.connect(f"tcp://{conn['ip']}:{conn['router_port']}")
sub.connect(f"tcp://{conn['ip']}:{conn['pub_port']}")
sign = lambda body: hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def watch():  # asks the host to publish a `welcome` event on the session's topic
    body = json.dumps({"id": str(uuid.uuid4()), "type": "watch", "session": target}).encode()
    dealer.send_multipart([sign(body), body])
    sig, body = dealer.recv_multipart()
    reply = json.loads(body)
    if not hmac.compare_digest(sig, sign(body)) or reply["type"] == "error":
        sys.exit(reply.get("reason", "bad signature"))
    return reply["session"]["id"]


sub.subscribe(watch().encode())  # the topic is the session id
while not sub.poll(100):  # until a welcome shows the subscription is live
    watch()
print(f"watching {target}", flush=True)
while True:
    topic, sig, body = sub.recv_multipart()
    if not hmac.compare_digest(sig, sign(body)):
        continue  # not from our host
    ev = json.loads(body)
    if ev["type"] == "chunk":
        c = ev["chunk"]
        kind = c["type"] + ("/" + c["format"] if "format" in c else "")
        mark = " start" if c.get("start") else " end" if c.get("end") else ""
        shown = json.dumps(c["content"])[:200] if "content" in c else ""
        print(f"{c['request'][:12]:12} #{c['seq']:<4} {kind}{mark} {shown}", flush=True)
    elif ev["type"] == "missed":
        print(f"-- missed {ev['count']} chunks", flush=True)
    elif ev["type"] == "closed":
        sys.exit(print(f"-- session closed: {ev['reason']}"))
