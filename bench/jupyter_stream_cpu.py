"""Where a 20 MB Jupyter stream spends its CPU: the kernel host, the Python child and the client.

    .venv/bin/python bench/jupyter_stream_cpu.py [SPINDLE_BINARY ...] [--runs N]

For each binary (default target/release/spindle) it starts `spindle kernel` through
jupyter_client, then drives it with a minimal raw-pyzmq client that does what every Jupyter
client must per message (verify the HMAC, parse the JSON frames): `sys.stdout.write` of 20 MB
(100-byte lines), N times, byte count checked, and reports the median throughput and the CPU
seconds each process used per 20 MB. On a 2-core machine the sum of the three bounds the wall
time from below (sum / 2), and the client's own share bounds it too.
"""
import hashlib
import hmac
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid

import psutil
import zmq
from jupyter_client import KernelManager

ROOT = pathlib.Path(__file__).resolve().parent.parent
CODE = "import sys; sys.stdout.write(('x' * 99 + '\\n') * 200000)"
BYTES = 20_000_000


def measure(spindle, runs):
    d = tempfile.mkdtemp()
    os.makedirs(f"{d}/kernels/sp")
    argv = [spindle, "--python", sys.executable, "kernel", "--language", "python", "-f", "{connection_file}"]
    json.dump({"argv": argv, "display_name": "sp", "language": "python"}, open(f"{d}/kernels/sp/kernel.json", "w"))
    os.environ["JUPYTER_PATH"] = d
    os.environ["XDG_DATA_HOME"] = d + "/xdg"
    km = KernelManager(kernel_name="sp")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(10)
    kc.stop_channels()
    ci = km.get_connection_info()
    key = ci["key"] if isinstance(ci["key"], bytes) else ci["key"].encode()
    ctx = zmq.Context()
    shell = ctx.socket(zmq.DEALER)
    shell.connect(f"tcp://127.0.0.1:{ci['shell_port']}")
    iopub = ctx.socket(zmq.SUB)
    iopub.setsockopt(zmq.SUBSCRIBE, b"")
    iopub.connect(f"tcp://127.0.0.1:{ci['iopub_port']}")
    time.sleep(0.5)
    poller = zmq.Poller()
    poller.register(shell, zmq.POLLIN)
    poller.register(iopub, zmq.POLLIN)
    session = str(uuid.uuid4())

    def sign(parts):
        h = hmac.new(key, digestmod=hashlib.sha256)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def stream():
        mid = str(uuid.uuid4())
        header = json.dumps({"msg_id": mid, "msg_type": "execute_request", "session": session,
                             "username": "bench", "version": "5.3",
                             "date": "2026-01-01T00:00:00Z"}).encode()
        content = json.dumps({"code": CODE, "silent": False, "store_history": False,
                              "user_expressions": {}, "allow_stdin": False,
                              "stop_on_error": True}).encode()
        parts = [header, b"{}", b"{}", content]
        t0 = time.perf_counter()
        shell.send_multipart([b"<IDS|MSG>", sign(parts)] + parts)
        got, done = 0, 0
        while done < 2:
            for sock, _ in poller.poll(30000):
                frames = sock.recv_multipart()
                i = frames.index(b"<IDS|MSG>")
                if not hmac.compare_digest(frames[i + 1], sign(frames[i + 2:i + 6])):
                    raise SystemExit("bad signature")
                h, parent, c = json.loads(frames[i + 2]), json.loads(frames[i + 3]), json.loads(frames[i + 5])
                if parent.get("msg_id") != mid:
                    continue
                if h["msg_type"] == "stream":
                    got += len(c["text"])
                elif h["msg_type"] == "execute_reply" or (
                        h["msg_type"] == "status" and c["execution_state"] == "idle"):
                    done += 1
        if got != BYTES:
            raise SystemExit(f"received {got} bytes, not {BYTES}")
        return BYTES / 1e6 / (time.perf_counter() - t0)

    stream()  # warm-up
    host = psutil.Process(km.provisioner.process.pid)
    child = next(c for c in host.children() if c.name().startswith("python"))
    procs = {"host": host, "child": child, "client": psutil.Process()}
    cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    rates = [stream() for _ in range(runs)]
    cpu = {k: (sum(p.cpu_times()[:2]) - cpu0[k]) / runs for k, p in procs.items()}
    km.shutdown_kernel(now=True)
    return rates, cpu


def main():
    args = sys.argv[1:]
    runs = 10
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i:i + 2]
    bins = args or [str(ROOT / "target" / "release" / "spindle")]
    for b in bins:
        rates, cpu = measure(b, runs)
        print(f"{b}: median {statistics.median(rates):.0f} MB/s (best {max(rates):.0f}, worst {min(rates):.0f}; "
              f"{runs} runs, byte count exact); CPU s per 20 MB: "
              + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))


if __name__ == "__main__":
    main()
