"""Benchmark of sandboxed sessions (`--sandbox docker`) beside local ones, in one run, through
the native API from a pyzmq client. Not a test: it prints figures and asserts nothing about
speed (only that the streamed output is byte-exact).

usage: python bench/sandbox_bench.py [--rounds 300] [--mb 20] [--creates 20] [--image I]

For each of a local host (`spindle serve --warm 2`) and a sandboxed one (`spindle serve
--sandbox docker --warm 2`), both for Python:

- cold start to ready: `create_session` that no pooled session fits (it sets `env`), so a
  process (a container) is started and waited for until its bootstrap says `ready`;
- create from the `--warm` pool;
- round trip of a trivial execution (`pass`), send → finished chunk, median and p99;
- 20 MiB streamed to the client, checked byte for byte (MB/s).

Needs Docker and the sandbox image (scripts/sandbox-image.sh).
"""
import argparse
import pathlib
import signal
import statistics
import sys
import tempfile
import time

import zmq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from native_bench import BIN, Conn, ms, start_server  # noqa: E402


def measure(args, *flags):
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_server(tmp, "--warm", "2", "--warm-languages", "python", *flags)
        ctx = zmq.Context()
        c = Conn(ctx, conn)
        try:
            # Cold: nothing in the pool fits a session with its own environment.
            cold = []
            for i in range(args.cold):
                t0 = time.perf_counter()
                c.ask({"type": "create_session", "language": "python", "env": {"COLD": "1"},
                       "name": f"c{i}"})
                cold.append(time.perf_counter() - t0)
                c.ask({"type": "close", "session": f"c{i}"})
            res["cold"] = cold

            warm, missed = [], 0
            for i in range(args.creates):
                # Let the pool refill (a sandboxed start takes a container's start).
                time.sleep(1.0)
                t0 = time.perf_counter()
                r = c.ask({"type": "create_session", "language": "python", "name": f"w{i}"})
                dt = time.perf_counter() - t0
                if r["warm"]:
                    warm.append(dt)
                else:
                    missed += 1
                c.ask({"type": "close", "session": f"w{i}"})
            res["warm"], res["missed"] = warm, missed

            s = c.ask({"type": "create_session", "language": "python"})["session"]
            res["sandboxed"] = "sandbox" in s
            for _ in range(50):
                c.run(s["id"], "pass")
            rtt = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                c.run(s["id"], "pass")
                rtt.append(time.perf_counter() - t0)
            res["rtt"] = rtt

            n = args.mb
            code = ("import sys\nfor i in range(%d):\n"
                    "    sys.stdout.write(chr(97 + i %% 26) * 1048575 + '\\n')\n" % n)
            expected = "".join(chr(97 + i % 26) * 1048575 + "\n" for i in range(n))
            c.run(s["id"], code)  # warm-up
            rates = []
            for _ in range(5):
                t0 = time.perf_counter()
                text, outcome = c.run(s["id"], code)
                dt = time.perf_counter() - t0
                if text != expected or outcome != "ok":
                    sys.exit(f"stream not byte-exact: got {len(text)} bytes, {outcome}")
                rates.append(len(expected) / dt / 1e6)
            res["rates"] = rates
        finally:
            c.sock.close(0)
            ctx.term()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--image", default="spindle-sandbox:latest")
    args = ap.parse_args()
    print(f"spindle: {BIN}")
    runs = [("local", measure(args)),
            ("docker", measure(args, "--sandbox", "docker", "--image", args.image))]
    assert not runs[0][1]["sandboxed"] and runs[1][1]["sandboxed"]
    for name, r in runs:
        print(f"\n[{name}]")
        print(f"  cold start to ready (create_session): {ms(r['cold'])}")
        print(f"  create from the warm pool: {ms(r['warm'])}"
              + (f"  ({r['missed']} found the pool empty)" if r["missed"] else ""))
        print(f"  execution round trip (python `pass`): {ms(r['rtt'])}")
        rates = r["rates"]
        print(f"  streaming {args.mb} MiB: median {statistics.median(rates):.0f} MB/s "
              f"(best {max(rates):.0f}, worst {min(rates):.0f}; byte-exact, 5 runs)")


if __name__ == "__main__":
    main()
