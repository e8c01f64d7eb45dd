"""Benchmark of subscribers and replay on `spindle serve`, from pyzmq. Not a test: it prints
figures (and writes them as JSON) and asserts nothing about speed.

usage: python bench/subscriber_bench.py [--mib 1024] [--json bench/results/subscribers-….json]

- peak RSS of the host and its children (from /proc) during a flood of `--mib` MiB from one
  Python session to a client that reads everything, with 0, 1 and 4 SUB sockets that are
  subscribed and welcomed but read nothing (receive high-water mark 1) until the flood ends;
  then what each stalled subscriber received of old chunks and how many it was told it missed;
- replay throughput: a second client replays the session's log (`replay`, from seq 0, no
  follow) after a flood that fits in it, in MB/s of console text.
"""
import argparse
import datetime
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import zmq

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("SPINDLE_BIN", ROOT / "target" / "release" / "spindle"))
MIB = 1 << 20


def sign(key, body):
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def rss_tree(pid):
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        pids = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            pass
    return total


class Host:
    def __init__(self, tmp, *args):
        self.path = pathlib.Path(tmp) / f"serve-{time.monotonic_ns()}.json"
        self.log = open(self.path.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen([str(BIN), "serve", "--connection-file", str(self.path),
                                      *args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spindle serve did not start")
            time.sleep(0.02)
        self.conn = json.loads(self.path.read_text())
        self.key = self.conn["key"].encode()
        self.ctx = zmq.Context()
        self.n = 0

    def dealer(self):
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(f"tcp://{self.conn['ip']}:{self.conn['router_port']}")
        return s

    def send(self, sock, msg):
        self.n += 1
        msg = {"id": f"b{self.n}", **msg}
        body = json.dumps(msg).encode()
        sock.send_multipart([sign(self.key, body), body])
        return msg["id"]

    def recv(self, sock, rid, timeout=600):
        while True:
            if not sock.poll(timeout * 1000):
                raise TimeoutError(rid)
            sig, body = sock.recv_multipart()
            msg = json.loads(body)
            if msg.get("id") == rid:
                return msg

    def ask(self, sock, msg):
        return self.recv(sock, self.send(sock, msg), 60)

    def stalled_sub(self, req, sid):
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 1
        sub.rcvbuf = 4096
        sub.connect(f"tcp://{self.conn['ip']}:{self.conn['pub_port']}")
        sub.subscribe(sid.encode())
        while True:
            self.ask(req, {"type": "watch", "session": sid})
            if sub.poll(200):
                _, _, body = sub.recv_multipart()
                if json.loads(body)["type"] == "welcome":
                    return sub

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.ctx.destroy(0)
        self.log.close()


def flood_code(mib):
    return ("import sys\n"
            f"for i in range({mib}):\n"
            "    sys.stdout.write(('%08d' % i) + 'x' * (1048576 - 9) + '\\n')\n")


def run_execution(host, sock, sid, code):
    rid = host.send(sock, {"type": "execute", "session": sid, "code": code})
    got = 0
    while True:
        msg = host.recv(sock, rid)
        ch = msg.get("chunk")
        if msg["type"] == "chunk":
            if ch["type"] == "console":
                got += len(ch.get("content", ""))
            if ch["type"] == "status" and ch["format"] == "finished":
                return got, ch["seq"]


def drain(host, sub, last_seq, flood_rid_prefix=None):
    old, missed, received = 0, 0, 0
    while True:
        if not sub.poll(60_000):
            break
        _, _, body = sub.recv_multipart()
        ev = json.loads(body)
        if ev["type"] == "missed":
            missed += ev["count"]
        elif ev["type"] == "chunk":
            received += 1
            ch = ev["chunk"]
            if ch["seq"] < last_seq:
                old += len(ch.get("content", ""))
            if ch["seq"] >= last_seq:
                break
    return {"old_mib": round(old / MIB, 1), "missed": missed, "received": received}


def flood_case(tmp, mib, stalled, flags):
    host = Host(tmp, *flags)
    try:
        req = host.dealer()
        sid = host.ask(req, {"type": "create_session", "language": "python"})["session"]["id"]
        run_execution(host, req, sid, "print('warm')")
        subs = [host.stalled_sub(req, sid) for _ in range(stalled)]
        baseline = rss_tree(host.proc.pid)
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_tree(host.proc.pid))
                done.wait(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        start = time.monotonic()
        got, _ = run_execution(host, req, sid, flood_code(mib))
        secs = time.monotonic() - start
        done.set()
        t.join()
        _, marker = run_execution(host, req, sid, "print('after')")
        drained = [drain(host, s, marker) for s in subs]
        return {"stalled": stalled, "mib": mib, "got_mib": round(got / MIB, 1),
                "seconds": round(secs, 2), "mb_s": round(got / 1e6 / secs, 1),
                "baseline_rss_mib": round(baseline / MIB), "peak_rss_mib": round(peak[0] / MIB),
                "subscribers": drained}
    finally:
        host.close()


def replay_case(tmp, mib):
    host = Host(tmp, "--replay-log", str((mib + 8) * MIB))
    try:
        req = host.dealer()
        sid = host.ask(req, {"type": "create_session", "language": "python"})["session"]["id"]
        run_execution(host, req, sid, flood_code(mib))
        other = host.dealer()
        start = time.monotonic()
        rid = host.send(other, {"type": "replay", "session": sid, "from_seq": 0,
                                "follow": False})
        got, chunks, missed = 0, 0, 0
        while True:
            msg = host.recv(other, rid)
            if msg["type"] == "replayed":
                break
            if msg["type"] == "missed":
                missed += msg["count"]
            elif msg["type"] == "chunk":
                chunks += 1
                got += len(msg["chunk"].get("content", ""))
        secs = time.monotonic() - start
        return {"mib": mib, "chunks": chunks, "missed": missed, "got_mib": round(got / MIB, 1),
                "seconds": round(secs, 2), "mb_s": round(got / 1e6 / secs, 1)}
    finally:
        host.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--replay-mib", type=int, default=48)
    ap.add_argument("--json")
    args = ap.parse_args()
    flags = []  # the defaults: 64 MiB event buffer, 64 MiB replay log, 32 MiB client buffer
    out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "flags": flags, "cpus": os.cpu_count(), "load": os.getloadavg(), "floods": []}
    with tempfile.TemporaryDirectory() as tmp:
        for stalled in (0, 1, 4):
            r = flood_case(tmp, args.mib, stalled, flags)
            out["floods"].append(r)
            print(json.dumps(r), flush=True)
        out["replay"] = replay_case(tmp, args.replay_mib)
        print(json.dumps(out["replay"]), flush=True)
    path = args.json or ROOT / "bench" / "results" / (
        "subscribers-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        + ".json")
    pathlib.Path(path).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
