"""How fast can a Jupyter client absorb a 20 MB stream when the kernel costs nothing?

    .venv/bin/python bench/jupyter_client_ceiling.py [--runs N] [--sizes 1048576,262144,65536]

A sender process stands in for a kernel that is infinitely fast: it signs every iopub message
of the stream once, up front (20 MB of `stream` messages on stdout, text of 100-byte lines as
the benchmarks' cell prints, then `status: idle`), and on each request publishes them again,
frames handed to libzmq without a copy. The receiver does per message exactly what
`kernel_bench.py`'s client does (poll shell+iopub, `recv_multipart`, find the delimiter, check
the HMAC with `jupyter_client.Session.sign`, `json.loads` the header, parent and content, keep
the text) and counts the bytes. Its throughput is the ceiling of that client on this machine:
no kernel, however fast, gets more through it. Run it in the same sitting as the core bench
and `kernel_bench.py`, since the machine's speed drifts between sittings.
"""
import hmac
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid

import zmq
from jupyter_client.session import Session

BYTES = 20_000_000
LINE = "x" * 99 + "\n"
DELIM = b"<IDS|MSG>"
KEY = uuid.uuid4().hex.encode()


def messages(session: Session, size: int) -> list[list[bytes]]:
    """The signed frames of one stream of `size`-byte messages and its closing idle status."""
    parent = session.msg("execute_request", {})
    out = []
    text = LINE * (BYTES // len(LINE))
    for at in range(0, len(text), size):
        msg = session.msg("stream", {"name": "stdout", "text": text[at:at + size]}, parent=parent)
        out.append(session.serialize(msg))
    msg = session.msg("status", {"execution_state": "idle"}, parent=parent)
    out.append(session.serialize(msg))
    return out


def sender(size: int, ports, ready) -> None:
    session = Session(key=KEY)
    frames = messages(session, size)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    ports.append(pub.bind_to_random_port("tcp://127.0.0.1"))
    ctl = ctx.socket(zmq.REP)
    ports.append(ctl.bind_to_random_port("tcp://127.0.0.1"))
    ready.set()
    while ctl.recv() == b"go":
        ctl.send(b"")
        for f in frames:
            pub.send_multipart(f, copy=False)
    ctl.send(b"")


def main() -> None:
    args = sys.argv[1:]
    runs, sizes = 10, [1 << 20, 256 << 10, 64 << 10]
    if "--runs" in args:
        runs = int(args[args.index("--runs") + 1])
    if "--sizes" in args:
        sizes = [int(s) for s in args[args.index("--sizes") + 1].split(",")]
    session = Session(key=KEY)
    for size in sizes:
        with mp.Manager() as m:
            ports, ready = m.list(), m.Event()
            p = mp.Process(target=sender, args=(size, ports, ready))
            p.start()
            ready.wait()
            ctx = zmq.Context()
            iopub = ctx.socket(zmq.SUB)
            iopub.setsockopt(zmq.RCVHWM, 0)
            iopub.setsockopt(zmq.SUBSCRIBE, b"")
            iopub.connect(f"tcp://127.0.0.1:{ports[0]}")
            shell = ctx.socket(zmq.DEALER)  # polled, as the real client polls it
            ctl = ctx.socket(zmq.REQ)
            ctl.connect(f"tcp://127.0.0.1:{ports[1]}")
            poller = zmq.Poller()
            poller.register(shell, zmq.POLLIN)
            poller.register(iopub, zmq.POLLIN)
            time.sleep(0.5)  # the subscription reaches the publisher

            def one() -> float:
                chunks: list[str] = []
                ctl.send(b"go")
                ctl.recv()
                t0 = time.perf_counter()
                idle = False
                while not idle:
                    ev = dict(poller.poll(30000))
                    if iopub not in ev:
                        raise SystemExit("the sender stopped")
                    while iopub.poll(0):
                        frames = iopub.recv_multipart()
                        i = frames.index(DELIM)
                        sig, h, ph, md, c = frames[i + 1:i + 6]
                        if not hmac.compare_digest(sig, session.sign([h, ph, md, c])):
                            raise SystemExit("bad HMAC signature")
                        header, _parent, content = json.loads(h), json.loads(ph), json.loads(c)
                        if header["msg_type"] == "stream":
                            chunks.append(content["text"])
                        elif content.get("execution_state") == "idle":
                            idle = True
                t = time.perf_counter() - t0
                got = len("".join(chunks).encode())
                if got != len(LINE) * (BYTES // len(LINE)):
                    raise SystemExit(f"received {got} bytes")
                return t

            one()  # warm-up
            c0 = time.process_time()
            times = [one() for _ in range(runs)]
            cpu = (time.process_time() - c0) / runs
            ctl.send(b"stop")
            ctl.recv()
            p.join()
            ctx.destroy(linger=0)
        rates = [BYTES / 1e6 / t for t in times]
        print(f"{size >> 10} KiB messages: median {statistics.median(rates):.0f} MB/s "
              f"(best {max(rates):.0f}, worst {min(rates):.0f}; {runs} runs, bytes checked); "
              f"client CPU per 20 MB {cpu * 1000:.0f} ms")


if __name__ == "__main__":
    main()
