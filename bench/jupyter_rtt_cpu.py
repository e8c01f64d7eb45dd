"""Where a Jupyter round trip's time goes: wall time and CPU per trivial execution, split between
the client, the Spindle host and the language child. Not a test: it prints figures.

usage: JUPYTER_PATH=<prefix>/share/jupyter python bench/jupyter_rtt_cpu.py [--kernel spindle-python] [--n 500]
       (install the kernelspec first: spindle --python .venv/bin/python kernel install --prefix <prefix>)

Two clients, interleaved on one kernel:
- `blocking`: jupyter_client's BlockingKernelClient as a frontend uses it (execute, then
  get_iopub_msg until idle and get_shell_msg for the reply);
- `raw`: kc.execute to send, then the same client's ZMQ sockets read directly with HMAC checked and JSON decoded,
  as shared/bench/kernel_bench.py measures its round trip.
CPU is user+system time: the client's own (time.process_time, all its threads) and each kernel
process's (psutil), divided by the number of executions.
"""
import argparse
import hmac
import json
import statistics
import time

import psutil
import zmq
from jupyter_client import KernelManager

DELIM = b"<IDS|MSG>"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="spindle-python")
    ap.add_argument("--code", default="pass")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    km = KernelManager(kernel_name=args.kernel)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(30)
    session = kc.session
    shell, iopub = kc.shell_channel.socket, kc.iopub_channel.socket

    def blocking():
        t0 = time.perf_counter()
        mid = kc.execute(args.code)
        while True:
            m = kc.get_iopub_msg(timeout=10)
            if (m["parent_header"].get("msg_id") == mid and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"):
                break
        kc.get_shell_msg(timeout=10)
        return time.perf_counter() - t0

    def recv(sock):
        frames = sock.recv_multipart()
        i = frames.index(DELIM)
        sig, h, ph, md, c = frames[i + 1:i + 6]
        if not hmac.compare_digest(sig, session.sign([h, ph, md, c])):
            raise ValueError("bad HMAC signature")
        return json.loads(h)["msg_type"], json.loads(ph).get("msg_id"), json.loads(c)

    poller = zmq.Poller()
    poller.register(shell, zmq.POLLIN)
    poller.register(iopub, zmq.POLLIN)

    def raw():
        t0 = time.perf_counter()
        mid = kc.execute(args.code)
        reply = idle = False
        while not (reply and idle):
            ev = dict(poller.poll(10_000))
            if not ev:
                raise TimeoutError("no reply")
            if shell in ev:
                while shell.poll(0):
                    mt, pid, _ = recv(shell)
                    reply |= pid == mid and mt == "execute_reply"
            if iopub in ev:
                while iopub.poll(0):
                    mt, pid, c = recv(iopub)
                    idle |= pid == mid and mt == "status" and c.get("execution_state") == "idle"
        return time.perf_counter() - t0

    root = psutil.Process(km.provisioner.process.pid)
    procs = [root] + root.children(recursive=True)

    def cpu():
        return [sum(p.cpu_times()[:2]) for p in procs]

    for name, fn in (("blocking", blocking), ("raw", raw)) * args.rounds:
        for _ in range(50):
            fn()
        c0, p0 = cpu(), time.process_time()
        ts = [fn() for _ in range(args.n)]
        p1, c1 = time.process_time(), cpu()
        per = lambda a, b: (b - a) / args.n * 1e6
        kern = ", ".join(f"{p.name()} {per(a, b):.0f}" for p, a, b in zip(procs, c0, c1) if b > a)
        print(f"{name:8} median {statistics.median(ts) * 1e3:.3f} ms  p90 "
              f"{sorted(ts)[int(0.9 * len(ts))] * 1e3:.3f} ms  CPU µs/exec: client "
              f"{per(p0, p1):.0f}, {kern}", flush=True)
    kc.stop_channels()
    km.shutdown_kernel(now=True)


if __name__ == "__main__":
    main()
