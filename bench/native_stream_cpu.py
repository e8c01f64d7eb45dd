"""Where a 20 MiB stream through the native API spends its CPU: host, Python child and client.

    .venv/bin/python bench/native_stream_cpu.py [SPINDLE_BINARY ...] [--runs N] [--text-frames]

For each binary (default target/release/spindle), in the order given (repeat them to
interleave), it starts `spindle serve`, creates a Python session and runs the core bench's own
cell (one `sys.stdout.write` of 20 MiB of `x`) N times through bench/native_bench.py's client
(HMAC checked, JSON parsed, length checked), then prints the throughput and the CPU each
process used per 20 MiB, from /proc through psutil (10 ms ticks: average over enough runs).
"""
import argparse
import pathlib
import sys
import tempfile
import time

import psutil
import zmq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import native_bench  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 20
CODE = "import sys; _ = sys.stdout.write('x' * %d)" % (MIB << 20)


def cpu(p):
    t = p.cpu_times()
    return t.user + t.system


def measure(binary, runs, text_frames):
    native_bench.BIN = pathlib.Path(binary)
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = native_bench.start_server(tmp)
        try:
            ctx = zmq.Context()
            c = native_bench.Conn(ctx, conn)
            session = c.ask({"type": "create_session", "language": "python"})["session"]["id"]
            c.run(session, CODE, text_frames)  # warm-up
            host = psutil.Process(proc.pid)
            kids = host.children(recursive=True)
            me = psutil.Process()
            h0, k0, m0 = cpu(host), sum(cpu(k) for k in kids), cpu(me)
            t0 = time.perf_counter()
            for _ in range(runs):
                text, outcome = c.run(session, CODE, text_frames)
                if len(text) != MIB << 20 or outcome != "ok":
                    sys.exit(f"stream not whole: {len(text)} bytes, {outcome}")
            wall = (time.perf_counter() - t0) / runs
            h1, k1, m1 = cpu(host), sum(cpu(k) for k in kids), cpu(me)
            c.sock.close(0)
            ctx.term()
        finally:
            proc.terminate()
            proc.wait(10)
    per = lambda a, b: (b - a) / runs * 1e3  # noqa: E731
    how = " (text_frames)" if text_frames else ""
    print(f"{binary}{how}: {(MIB << 20) / wall / 1e6:.0f} MB/s; CPU ms per {MIB} MiB: "
          f"host {per(h0, h1):.1f}, child {per(k0, k1):.1f}, client {per(m0, m1):.1f}; "
          f"wall {wall * 1e3:.1f} ms ({runs} runs)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="*", default=[str(ROOT / "target" / "release" / "spindle")])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--text-frames", action="store_true",
                    help="ask for console text in frames of its own (`text_frames`)")
    args = ap.parse_args()
    for b in args.binaries:
        measure(b, args.runs, args.text_frames)


if __name__ == "__main__":
    main()
