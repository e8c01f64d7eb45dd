"""Round trip of a trivial `execute` through `spindle mcp` (MCP over stdio), beside the native
API's (`spindle serve` from pyzmq) in the same run. Not a test: it prints figures and asserts
nothing about speed.

usage: .venv/bin/python bench/mcp_bench.py [--rounds 300]

Measured, each after 30 warm-up rounds, Python `pass` in the default session:
- MCP, official Python SDK (`mcp` on PyPI): `ClientSession.call_tool("execute", ...)`, call to
  result. This is what an agent sees, the SDK's own overhead (pydantic, anyio) included.
- MCP, raw JSON-RPC lines on the server's pipes from this process: request written to response
  line read. Spindle's cost without the client SDK's.
- native API: execute request to the `finished` chunk (a pyzmq DEALER), as bench/native_bench.py.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import anyio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from native_bench import Conn, start_server  # noqa: E402

import zmq  # noqa: E402

BIN = pathlib.Path(os.environ.get("SPINDLE_BIN", ROOT / "target" / "release" / "spindle"))
WARM = 30


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def row(name, values):
    return (f"| {name} | {statistics.median(values) * 1e3:.3f} ms | {pct(values, 99) * 1e3:.3f} ms "
            f"| {len(values)} |")


def env():
    e = dict(os.environ, SPINDLE_LOG="warn")
    e.setdefault("SPINDLE_PYTHON", sys.executable)
    return e


async def mcp_sdk(rounds):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=str(BIN), args=["mcp"], env=env())
    times = []
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                for i in range(rounds + WARM):
                    t0 = time.perf_counter()
                    r = await s.call_tool("execute", {"code": "pass"})
                    dt = time.perf_counter() - t0
                    assert not r.is_error and r.structured_content["outcome"] == "ok", r
                    if i >= WARM:
                        times.append(dt)
    return times


def mcp_raw(rounds):
    proc = subprocess.Popen([str(BIN), "mcp"], env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    out = proc.stdout

    def send(obj):
        proc.stdin.write(json.dumps(obj).encode() + b"\n")

    def reply(rid):
        while True:
            m = json.loads(out.readline())
            if m.get("id") == rid:
                return m

    send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
          "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                     "clientInfo": {"name": "bench", "version": "1"}}})
    reply(0)
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    times = []
    for i in range(1, rounds + WARM + 1):
        msg = (json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                           "params": {"name": "execute", "arguments": {"code": "pass"}}})
               .encode() + b"\n")
        t0 = time.perf_counter()
        proc.stdin.write(msg)
        line = out.readline()
        dt = time.perf_counter() - t0
        m = json.loads(line)
        assert m.get("id") == i and not m["result"].get("isError"), m
        if i > WARM:
            times.append(dt)
    proc.stdin.close()
    proc.wait(30)
    return times


def native(rounds):
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_server(tmp)
        ctx = zmq.Context()
        c = Conn(ctx, conn)
        sid = c.ask({"type": "create_session", "language": "python"})["session"]["id"]
        times = []
        for i in range(rounds + WARM):
            t0 = time.perf_counter()
            _, outcome = c.run(sid, "pass")
            dt = time.perf_counter() - t0
            assert outcome == "ok"
            if i >= WARM:
                times.append(dt)
        c.sock.close(0)
        ctx.term()
        proc.terminate()
        proc.wait(30)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()
    sdk = anyio.run(mcp_sdk, a.rounds)
    raw = mcp_raw(a.rounds)
    nat = native(a.rounds)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
    print("| trivial execute round trip (Python `pass`) | median | p99 | n |")
    print("|---|---|---|---|")
    print(row("MCP stdio, official Python SDK `call_tool`", sdk))
    print(row("MCP stdio, raw JSON-RPC lines", raw))
    print(row("native API, pyzmq", nat))


if __name__ == "__main__":
    main()
