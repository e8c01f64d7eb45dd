"""Benchmark of the native API (`spindle serve`), from a pyzmq client. Not a test: it prints
figures and asserts nothing about speed.

usage: python bench/native_bench.py [--rounds 300] [--mb 20] [--creates 30]

- round trip of a trivial execution (`pass` in Python), send → finished chunk;
  for scale, a host-only request (session_info) and a bare pyzmq DEALER/ROUTER echo;
- 20 MB streamed to a client (MB/s), checked byte for byte;
- session creation from the warm pool, and cold for comparison.
"""
import argparse
import hashlib
import hmac
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import zmq

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("SPINDLE_BIN", ROOT / "target" / "release" / "spindle"))


class Conn:
    def __init__(self, ctx, conn):
        self.key = conn["key"].encode()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.connect(f"tcp://{conn['ip']}:{conn['router_port']}")
        self.n = 0

    def sign(self, body):
        return hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()

    def send(self, msg):
        self.n += 1
        msg = {"id": str(self.n), **msg}
        body = json.dumps(msg).encode()
        self.sock.send_multipart([self.sign(body), body])
        return msg["id"]

    def recv(self):
        # [signature, json], or [signature, json, text] for console text with `text_frames`.
        sig, body, *text = self.sock.recv_multipart()
        mac = hmac.new(self.key, body, hashlib.sha256)
        for t in text:
            mac.update(t)
        if not hmac.compare_digest(sig, mac.hexdigest().encode()):
            raise RuntimeError("bad signature")
        msg = json.loads(body)
        if text:
            msg["chunk"]["content"] = text[0].decode()
        return msg

    def ask(self, msg):
        self.send(msg)
        reply = self.recv()
        if reply["type"] == "error":
            raise RuntimeError(reply["reason"])
        return reply

    def run(self, session, code, text_frames=False):
        """Execute and return the console text (checked as it comes)."""
        msg = {"type": "execute", "session": session, "code": code}
        if text_frames:
            msg["text_frames"] = True
        self.send(msg)
        parts = []
        while True:
            m = self.recv()
            if m["type"] != "chunk":
                raise RuntimeError(f"unexpected {m}")
            c = m["chunk"]
            if c["type"] == "console" and "content" in c:
                parts.append(c["content"])
            if c["type"] == "status" and c["format"] == "finished":
                return "".join(parts), c["content"]["outcome"]


def start_server(tmp, *args):
    path = pathlib.Path(tmp) / "bench.json"
    env = dict(os.environ, SPINDLE_LOG="warn")
    env.setdefault("SPINDLE_PYTHON", sys.executable)
    proc = subprocess.Popen([str(BIN), "serve", "--connection-file", str(path), *args],
                            env=env, stdout=subprocess.DEVNULL)
    while not path.exists():
        if proc.poll() is not None:
            sys.exit("spindle serve did not start")
        time.sleep(0.02)
    return proc, json.loads(path.read_text())


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(values):
    return (f"median {statistics.median(values) * 1e3:.3f} ms, "
            f"p99 {pct(values, 99) * 1e3:.3f} ms (n={len(values)})")


def bare_zmq(rounds):
    """A bare pyzmq DEALER/ROUTER echo in this process (another thread), for scale."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def echo():
        for _ in range(rounds + 50):
            router.send_multipart(router.recv_multipart())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    times = []
    for i in range(rounds + 50):
        t0 = time.perf_counter()
        dealer.send_multipart([b"sig", b"{}"])
        dealer.recv_multipart()
        if i >= 50:
            times.append(time.perf_counter() - t0)
    t.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--creates", type=int, default=30)
    ap.add_argument("--core-cell", action="store_true",
                    help="stream the core bench's own cell (one write of N MiB of x) instead of N letter blocks")
    args = ap.parse_args()
    print(f"spindle: {BIN}")
    print(f"bare pyzmq DEALER/ROUTER echo: {ms(bare_zmq(args.rounds))}")

    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_server(tmp, "--warm", "2", "--warm-languages", "python")
        try:
            ctx = zmq.Context()
            c = Conn(ctx, conn)
            session = c.ask({"type": "create_session", "language": "python"})["session"]["id"]

            # Round trips.
            for _ in range(50):
                c.run(session, "pass")
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                c.run(session, "pass")
                times.append(time.perf_counter() - t0)
            print(f"execution round trip (python `pass`): {ms(times)}")
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                c.ask({"type": "session_info", "session": session})
                times.append(time.perf_counter() - t0)
            print(f"host-only round trip (session_info): {ms(times)}")

            # Streaming: N blocks of 1 MB, each of its own letter, so any loss or reordering
            # shows in the byte-exact check.
            n = args.mb
            code = ("import sys\nfor i in range(%d):\n"
                    "    sys.stdout.write(chr(97 + i %% 26) * 1048575 + '\\n')\n" % n)
            expected = "".join(chr(97 + i % 26) * 1048575 + "\n" for i in range(n))
            if args.core_cell:
                # The core bench's own cell, for a like-for-like ratio (no reordering check).
                code = "import sys; _ = sys.stdout.write('x' * %d)" % (n << 20)
                expected = "x" * (n << 20)
            # The text inside the JSON, then in frames of its own (`text_frames`), alternating.
            c.run(session, code)  # warm-up
            rates = {False: [], True: []}
            for _ in range(5):
                for frames in (False, True):
                    t0 = time.perf_counter()
                    text, outcome = c.run(session, code, text_frames=frames)
                    dt = time.perf_counter() - t0
                    if text != expected or outcome != "ok":
                        sys.exit(f"stream not byte-exact: got {len(text)} bytes, {outcome}")
                    rates[frames].append(len(expected) / dt / 1e6)
            for frames, how in ((False, ""), (True, " with text_frames")):
                r = rates[frames]
                print(f"streaming {n} MiB to one client{how}: median {statistics.median(r):.0f} "
                      f"MB/s (best {max(r):.0f}, worst {min(r):.0f}; byte-exact, 5 runs)")

            # Warm creation: wait for the pool to refill between creates.
            warm, cold = [], []
            for i in range(args.creates):
                time.sleep(0.4)
                t0 = time.perf_counter()
                r = c.ask({"type": "create_session", "language": "python", "name": f"w{i}"})
                dt = time.perf_counter() - t0
                (warm if r["warm"] else cold).append(dt)
                c.ask({"type": "close", "session": f"w{i}"})
            print(f"create_session from the warm pool: {ms(warm)}"
                  + (f"  ({len(cold)} found the pool empty)" if cold else ""))
            cold = []
            for i in range(min(10, args.creates)):
                t0 = time.perf_counter()
                c.ask({"type": "create_session", "language": "python", "env": {"COLD": "1"},
                       "name": f"c{i}"})
                cold.append(time.perf_counter() - t0)
                c.ask({"type": "close", "session": f"c{i}"})
            print(f"create_session cold (no pool match): {ms(cold)}")
            c.sock.close(0)
            ctx.term()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
