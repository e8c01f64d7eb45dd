"""`spindle mcp` driven by a real MCP client: the official Python SDK (`mcp` on PyPI) over stdio.

Each test starts `$SPINDLE_BIN mcp` through `mcp.client.stdio.stdio_client`, as an agent's host
would, and talks to it with `mcp.ClientSession`. A few tests speak raw JSON-RPC lines instead
(malformed input, the clean exit when stdin closes), since a well-behaved client cannot send
those.
"""
import base64
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager

import anyio
import psutil
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "native"))
from native_helpers import Server, Watcher, is_finished, stdout, wait_gone  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TOOLS = {"execute", "read_output", "wait", "list_sessions", "create_session", "close_session",
         "restart_session", "interrupt", "send_input", "upload_file", "download_file", "list_files"}


@asynccontextmanager
async def client(spindle_bin, test_env, *args, cwd=None):
    params = StdioServerParameters(command=str(spindle_bin), args=["mcp", *args],
                                   env=dict(test_env), cwd=cwd)
    errlog = open(os.devnull, "w")
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s
    errlog.close()


def text(res) -> str:
    return "\n".join(c.text for c in res.content if c.type == "text")


def run(fn, *a):
    anyio.run(fn, *a)


# -- protocol basics ------------------------------------------------------------------------------


def test_initialize_and_list_tools(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert t.description and len(t.description) > 40, t.name
                assert t.input_schema["type"] == "object", t.name
            ex = tools["execute"].input_schema
            assert ex["required"] == ["code"]
            assert set(ex["properties"]) == {"code", "language", "session", "timeout_s"}
            assert ex["additionalProperties"] is False
            assert "600" in json.dumps(ex["properties"]["timeout_s"])
            assert tools["read_output"].input_schema["required"] == ["execution"]
            assert tools["send_input"].input_schema["required"] == ["session", "text"]
            assert tools["create_session"].input_schema["required"] == ["language"]
    run(body)


def test_python_state_kept_across_calls(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            r = await s.call_tool("execute", {"code": "x = 41"})
            assert not r.is_error, text(r)
            r = await s.call_tool("execute", {"code": "print(x + 1)\nx * 2"})
            t = text(r)
            assert t.startswith("42\n82"), t
            assert "session mcp-python (python) · ok" in t
            assert r.structured_content["outcome"] == "ok"
            assert r.structured_content["execution"].startswith("e")
    run(body)


def test_matplotlib_figure_is_image_content_of_its_size(spindle_bin, test_env):
    code = ("import matplotlib.pyplot as plt\n"
            "plt.figure(figsize=(4, 3), dpi=100)\n"
            "plt.plot([1, 3, 2])\n"
            "plt.show()\n")

    async def body():
        async with client(spindle_bin, test_env) as s:
            r = await s.call_tool("execute", {"code": code, "timeout_s": 60})
            assert not r.is_error, text(r)
            images = [c for c in r.content if c.type == "image"]
            assert len(images) == 1, r.content
            assert images[0].mime_type == "image/png"
            img = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
            assert img.size == (400, 300)
            assert "image 1: image/png 400×300" in text(r)
    run(body)


def test_bash_and_node(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            r = await s.call_tool("execute", {"code": "X=5; echo \"bash $((X*2))\"",
                                              "language": "bash"})
            assert text(r).startswith("bash 10"), text(r)
            r = await s.call_tool("execute", {"code": "echo $X", "language": "sh"})
            assert text(r).startswith("5"), text(r)
            r = await s.call_tool("execute", {"code": "let y = 20; console.log('node', y + 1)",
                                              "language": "node"})
            assert text(r).startswith("node 21"), text(r)
            r = await s.call_tool("execute", {"code": "y * 2", "language": "js"})
            assert text(r).startswith("40"), text(r)
            names = {x["name"] for x in
                     (await s.call_tool("list_sessions", {})).structured_content["sessions"]}
            assert names == {"mcp-bash", "mcp-node"}
    run(body)


def test_error_with_traceback(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            r = await s.call_tool("execute", {"code": "def f():\n    return 1 / 0\nf()"})
            assert r.is_error is True
            t = text(r)
            assert "Traceback" in t and "ZeroDivisionError: division by zero" in t, t
            assert "in f" in t, t
            assert r.structured_content["outcome"] == "error"
            # The session survives the error.
            r = await s.call_tool("execute", {"code": "print('still here')"})
            assert not r.is_error and text(r).startswith("still here")
    run(body)


# -- long runs ------------------------------------------------------------------------------------


def test_interrupt_from_a_concurrent_request(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            await s.call_tool("execute", {"code": "1"})
            result = {}

            async def long():
                result["r"] = await s.call_tool(
                    "execute", {"code": "import time\nprint('start', flush=True)\ntime.sleep(60)",
                                "timeout_s": 90})

            async with anyio.create_task_group() as tg:
                tg.start_soon(long)
                await anyio.sleep(1.0)
                t0 = time.monotonic()
                ir = await s.call_tool("interrupt", {"session": "mcp-python"})
                assert "interrupted" in text(ir), text(ir)
            elapsed = time.monotonic() - t0
            r = result["r"]
            assert elapsed < 10, elapsed
            assert "KeyboardInterrupt" in text(r) and "start" in text(r), text(r)
            assert r.structured_content["outcome"] in ("interrupted", "error")
    run(body)


def test_long_run_outlives_timeout_and_is_picked_up(spindle_bin, test_env):
    code = ("import time, sys\n"
            "for i in range(3000):\n"
            "    print(f'line {i:05d} ' + 'é' * (i % 7) + 'x' * 40)\n"
            "    if i % 500 == 0:\n"
            "        sys.stdout.flush(); time.sleep(0.4)\n"
            "print('done')\n")
    expected = "".join(f"line {i:05d} " + "é" * (i % 7) + "x" * 40 + "\n" for i in range(3000))
    expected += "done\n"

    async def body():
        async with client(spindle_bin, test_env, "--output-budget", "2000") as s:
            t0 = time.monotonic()
            r = await s.call_tool("execute", {"code": code, "timeout_s": 0.5})
            assert time.monotonic() - t0 < 5
            t = text(r)
            assert "still running" in t and "the run continues" in t, t
            ex = r.structured_content["execution"]
            assert r.structured_content["status"] == "running"
            assert f'wait(execution="{ex}")' in t
            w = await s.call_tool("wait", {"execution": ex, "timeout_s": 60})
            wt = text(w)
            assert w.structured_content["status"] == "finished", wt
            assert "bytes dropped" in wt and wt.split("\n\n[execution")[0].endswith("done"), wt
            assert "read_output" in wt
            # Page through everything, byte-exact.
            got, offset = "", 0
            while True:
                p = await s.call_tool("read_output", {"execution": ex, "offset": offset,
                                                      "limit": 10000})
                sc = p.structured_content
                got += p.content[0].text
                assert sc["offset"] == offset
                offset = sc["next_offset"]
                if sc["eof"]:
                    break
            assert got.encode() == expected.encode()
            assert sc["total_bytes"] == len(expected.encode()) and sc["finished"]
            # The default page is 64 KiB.
            p = await s.call_tool("read_output", {"execution": ex})
            assert p.structured_content["next_offset"] <= 65536
            assert p.content[0].text == expected.encode()[:p.structured_content["next_offset"]].decode()
    run(body)


def test_send_input_answers_input(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            t0 = time.monotonic()
            r = await s.call_tool("execute", {
                "code": "name = input('your name? ')\nprint('hello', name)", "timeout_s": 60})
            assert time.monotonic() - t0 < 10
            t = text(r)
            assert "waiting for input: your name? " in t, t
            assert r.structured_content["status"] == "waiting_for_input"
            ex = r.structured_content["execution"]
            a = await s.call_tool("send_input", {"session": "mcp-python", "text": "Ada"})
            assert "answered" in text(a), text(a)
            w = await s.call_tool("wait", {"execution": ex, "timeout_s": 30})
            assert "hello Ada" in text(w), text(w)
            assert w.structured_content["outcome"] == "ok"
            # Without a pending request, the text goes to the terminal (bash `read`).
            r = await s.call_tool("execute", {"code": "read -r v; echo \"got $v\"",
                                              "language": "bash", "timeout_s": 1})
            ex = r.structured_content["execution"]
            a = await s.call_tool("send_input", {"session": "mcp-bash", "text": "line1"})
            # Once the kernel notices `read` waiting on the terminal (a quiet 50 ms) it is an input
            # request that send_input answers; before that the text goes to the terminal. Either
            # way the line reaches `read`.
            assert "terminal" in text(a) or "answered" in text(a), text(a)
            w = await s.call_tool("wait", {"execution": ex, "timeout_s": 30})
            assert "got line1" in text(w), text(w)
    run(body)


def test_progress_notifications_carry_output(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            seen = []

            async def on_progress(progress, total, message):
                seen.append((time.monotonic(), progress, message))

            t0 = time.monotonic()
            r = await s.call_tool("execute", {
                "code": "import time\nfor i in range(4):\n"
                        "    print('tick', i, flush=True)\n    time.sleep(0.3)",
                "timeout_s": 30}, progress_callback=on_progress)
            t_end = time.monotonic()
            assert not r.is_error
            messages = "".join(m or "" for _, _, m in seen)
            assert messages == "tick 0\ntick 1\ntick 2\ntick 3\n", seen
            progress = [p for _, p, _ in seen]
            assert progress == sorted(set(progress)), progress
            # Received while the run was in flight, not all at the end.
            first_tick = next(t for t, _, m in seen if m and "tick 0" in m)
            assert first_tick - t0 < t_end - t0 - 0.5
    run(body)


# -- resources ------------------------------------------------------------------------------------


def test_sessions_are_resources(spindle_bin, test_env):
    async def body():
        async with client(spindle_bin, test_env) as s:
            r = await s.call_tool("execute", {"code": "print('resource-marker')"})
            sid = r.structured_content["session"]
            res = (await s.list_resources()).resources
            uris = [str(x.uri) for x in res]
            assert f"spindle://sessions/{sid}" in uris
            content = await s.read_resource(f"spindle://sessions/{sid}")
            t = content.contents[0].text
            assert "mcp-python" in t and "resource-marker" in t and "[finished: ok]" in t, t
            with pytest.raises(MCPError):
                await s.read_resource("spindle://sessions/no-such-session")
    run(body)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving(spindle_bin, test_env):
    async def expect_error(s, name, args, *needles):
        with pytest.raises(MCPError) as ei:
            await s.call_tool(name, args)
        assert ei.value.code == -32602, ei.value
        for n in needles:
            assert n in ei.value.message, ei.value.message
        return ei.value.message

    async def body():
        async with client(spindle_bin, test_env) as s:
            await expect_error(s, "no_such_tool", {}, "unknown tool", "execute")
            await expect_error(s, "execute", {"code": 5}, "invalid arguments", "string")
            await expect_error(s, "execute", {}, "missing field `code`")
            await expect_error(s, "execute", {"code": "1", "bogus": 1}, "unknown field `bogus`")
            await expect_error(s, "execute", {"code": "1", "timeout_s": 601}, "timeout_s")
            await expect_error(s, "execute", {"code": ""}, "code is empty")
            await expect_error(s, "execute", {"code": "  \n"}, "code is empty")
            await expect_error(s, "execute", {"code": "print(1)\0"}, "NUL byte at offset 8")
            await expect_error(s, "execute", {"code": "x" * (5 << 20)}, "4194304")
            await expect_error(s, "execute", {"code": "1", "language": "cobol"},
                               "unknown language", "python, bash and node")
            await expect_error(s, "interrupt", {"session": "nope"}, "unknown session \"nope\"")
            await expect_error(s, "send_input", {"session": "nope", "text": "x"}, "unknown session")
            await expect_error(s, "restart_session", {"session": "nope"}, "unknown session")
            await expect_error(s, "read_output", {"execution": "e999"}, "unknown execution")
            await expect_error(s, "wait", {"execution": "zzz"}, "unknown execution")
            await expect_error(s, "create_session", {"language": "cobol"}, "unknown language")
            # A closed session.
            c = await s.call_tool("create_session", {"language": "python", "name": "tmp"})
            await expect_error(s, "create_session", {"language": "python", "name": "tmp"},
                               "already exists")
            await s.call_tool("close_session", {"session": "tmp"})
            await expect_error(s, "execute", {"code": "1", "session": "tmp"}, "was closed")
            await expect_error(s, "close_session", {"session": "tmp"}, "was closed")
            await expect_error(s, "interrupt", {"session": c.structured_content["id"]},
                               "was closed")
            # Language mismatch with an existing session.
            await s.call_tool("execute", {"code": "1"})
            await expect_error(s, "execute", {"code": "1", "session": "mcp-python",
                                              "language": "bash"}, "is a python session")
            # Still serving.
            r = await s.call_tool("execute", {"code": "print('alive')"})
            assert text(r).startswith("alive")
    run(body)


class Raw:
    """`spindle mcp` on raw pipes: JSON-RPC lines in, lines out."""

    def __init__(self, spindle_bin, env, *args):
        self.proc = subprocess.Popen([str(spindle_bin), "mcp", *args], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(json.loads(line))
                self.cv.notify_all()

    def send(self, obj_or_bytes):
        data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, pred, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for m in self.lines:
                    if pred(m):
                        self.lines.remove(m)
                        return m
                left = deadline - time.monotonic()
                assert left > 0, f"no matching message; have {self.lines}"
                self.cv.wait(left)

    def reply(self, rid, timeout=30):
        return self.wait_for(lambda m: m.get("id") == rid, timeout)

    def initialize(self):
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "1"}}})
        assert "result" in self.reply(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, rid, name, args):
        self.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                   "params": {"name": name, "arguments": args}})
        return self.reply(rid, 60)


def test_malformed_json_rpc_on_stdin(spindle_bin, test_env):
    raw = Raw(spindle_bin, test_env)
    try:
        raw.initialize()
        raw.send(b"this is not json")
        e = raw.wait_for(lambda m: m.get("id") is None and "error" in m)
        assert e["error"]["code"] == -32700 and "not valid JSON" in e["error"]["message"], e
        raw.send(b'{"jsonrpc": "2.0", "id": 7, "method": ')  # truncated
        e = raw.wait_for(lambda m: m.get("id") is None and "error" in m)
        assert e["error"]["code"] == -32700
        raw.send({"hello": "world"})  # JSON, but no JSON-RPC message
        e = raw.wait_for(lambda m: "error" in m)
        assert e["error"]["code"] == -32600, e
        raw.send({"jsonrpc": "2.0", "id": 8, "method": "no/such/method"})
        e = raw.reply(8)
        assert e["error"]["code"] == -32601, e
        # A message over the 16 MiB line limit is refused, not buffered without end.
        raw.send(b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"execute",'
                 b'"arguments":{"code":"' + b"x" * (17 << 20) + b'"}}}')
        e = raw.wait_for(lambda m: m.get("id") is None and "error" in m, 60)
        assert e["error"]["code"] == -32600 and "exceeds the limit" in e["error"]["message"], e
        r = raw.call(10, "execute", {"code": "print(6*7)"})
        assert r["result"]["content"][0]["text"].startswith("42"), r
    finally:
        raw.proc.stdin.close()
        raw.proc.wait(30)


# -- processes ------------------------------------------------------------------------------------


def _fd_targets(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return out


def test_clean_exit_when_stdin_closes_and_no_child_holds_stdout(spindle_bin, test_env):
    raw = Raw(spindle_bin, test_env)
    raw.initialize()
    for i, lang in enumerate(("python", "bash", "node")):
        r = raw.call(i + 1, "execute", {"code": "sleep 0.01" if lang == "bash" else "1",
                                         "language": lang})
        assert not r["result"].get("isError"), r
    # A run still going when the client leaves.
    raw.call(9, "execute", {"code": "import time; time.sleep(300)", "timeout_s": 0.2})
    server = psutil.Process(raw.proc.pid)
    kids = server.children(recursive=True)
    assert len(kids) >= 3, kids
    server_stdout = os.readlink(f"/proc/{raw.proc.pid}/fd/1")
    assert server_stdout.startswith("pipe:"), server_stdout
    for k in kids:
        assert server_stdout not in _fd_targets(k.pid), (k, k.cmdline())
    t0 = time.monotonic()
    raw.proc.stdin.close()
    assert raw.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10
    assert wait_gone([k.pid for k in kids]) == []


# -- --connect ------------------------------------------------------------------------------------


def test_connect_execution_seen_by_a_pyzmq_watcher(spindle_bin, test_env, tmp_path):
    serve = Server(spindle_bin, test_env, tmp_path, name="serve-mcp")
    try:
        zc = serve.client()

        async def body():
            async with client(spindle_bin, test_env, "--connect", str(serve.path)) as s:
                c = await s.call_tool("create_session", {"language": "python", "name": "shared"})
                sid = c.structured_content["id"]
                listed = zc.ok({"type": "list_sessions"})
                assert sid in [x["id"] for x in listed["sessions"]]
                watcher = Watcher(serve, zc, sid)
                events = {}

                def watch():
                    events["evs"] = watcher.events_until(
                        lambda ev: ev["type"] == "chunk" and is_finished(ev["chunk"]), 60)

                th = threading.Thread(target=watch)
                th.start()
                r = await s.call_tool("execute", {"code": "print('from the agent')",
                                                  "session": "shared"})
                assert text(r).startswith("from the agent"), text(r)
                await anyio.to_thread.run_sync(th.join, 60)
                chunks = [ev["chunk"] for ev in events["evs"] if ev["type"] == "chunk"]
                assert stdout(chunks) == "from the agent\n"
                watcher.close()
                # Same tool semantics as embedded: default sessions, input, bad input.
                r = await s.call_tool("execute", {"code": "echo remote-bash", "language": "bash"})
                assert text(r).startswith("remote-bash")
                r = await s.call_tool("execute", {"code": "v = input('? ')\nprint(v * 2)",
                                                  "session": "shared"})
                assert "waiting for input: ? " in text(r)
                await s.call_tool("send_input", {"session": "shared", "text": "ab"})
                w = await s.call_tool("wait", {"execution": r.structured_content["execution"]})
                assert "abab" in text(w), text(w)
                with pytest.raises(MCPError) as ei:
                    await s.call_tool("interrupt", {"session": "nope"})
                assert "unknown session" in ei.value.message
                res = await s.read_resource(f"spindle://sessions/{sid}")
                assert "from the agent" in res.contents[0].text

        run(body)
        # The MCP server closed the sessions it created when it exited.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = [x["name"] for x in zc.ok({"type": "list_sessions"})["sessions"]]
            if not names:
                break
            time.sleep(0.1)
        assert names == []
    finally:
        serve.close()
