"""A client for test_clients.py that the test freezes with SIGSTOP right after it sends an
execute, so it truly stops reading (its process, libzmq's I/O thread included, is stopped).
When continued, it reads the stream and prints what it got as JSON.

usage: python stuck_client.py CONNECTION_FILE SESSION CODE RCVHWM RCVBUF"""
import json
import sys

import zmq

from native_helpers import Client, is_finished

conn = json.load(open(sys.argv[1]))
client = Client(zmq.Context(), conn, rcvhwm=int(sys.argv[4]), rcvbuf=int(sys.argv[5]))
rid = client.send({"type": "execute", "session": sys.argv[2], "code": sys.argv[3]})
first = client.recv(rid, 60)  # the request surely went out: its first chunk is back
print("sent", flush=True)
sys.stdin.readline()  # the test stops us here, then continues us and writes a line
received, missed, seqs = 1, 0, [first["chunk"]["seq"]]
while True:
    msg = client.recv(rid, 60)  # checks the signature and the schema
    if msg["type"] == "missed":
        missed += msg["count"]
    else:
        received += 1
        seqs.append(msg["chunk"]["seq"])
        if is_finished(msg["chunk"]):
            break
print(json.dumps({"received": received, "missed": missed, "seqs": seqs}), flush=True)
