"""`spindle mcp`'s file tools (upload_file, download_file, list_files) driven by the official MCP
Python SDK over stdio: embedded, and with --connect to a `spindle serve` (plain, and sandboxed
unless SPINDLE_TEST_DOCKER=0). Paths are confined to the session's work directory."""
import base64
import os
import pathlib
import sys

import pytest
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "native"))
from native_helpers import Server  # noqa: E402
from test_mcp import client, run, text  # noqa: E402

pytestmark = pytest.mark.timeout(180)

DOCKER = os.environ.get("SPINDLE_TEST_DOCKER") != "0"


async def refused(s, tool, args, *needles):
    with pytest.raises(MCPError) as ei:
        await s.call_tool(tool, args)
    for n in needles:
        assert n in ei.value.message, ei.value.message
    return ei.value.message


async def round_trip(s, sid, outside, work=None):
    """Upload, run, download byte-exact, list, and every refusal, in session `sid`."""
    data = os.urandom(100_000) + b"\0\xff\0" + bytes(range(256))
    r = await s.call_tool("upload_file", {"session": sid, "path": "in.bin",
                                          "data_base64": base64.b64encode(data).decode()})
    assert not r.is_error and r.structured_content == {"path": "in.bin", "size": len(data)}, r
    r = await s.call_tool("execute", {"session": sid, "code":
                                      "d = open('in.bin', 'rb').read()\n"
                                      "open('out.bin', 'wb').write(d[::-1])\n"
                                      "open('out.txt', 'w', encoding='utf-8').write('ünïcode ✓\\n' * 3)\n"
                                      "print(len(d))"})
    assert text(r).startswith(f"{len(data)}\n"), text(r)
    # Binary: an embedded resource whose blob is the bytes.
    r = await s.call_tool("download_file", {"session": sid, "path": "out.bin"})
    assert not r.is_error
    res = [c for c in r.content if c.type == "resource"]
    assert len(res) == 1, r.content
    assert base64.b64decode(res[0].resource.blob) == data[::-1]
    assert res[0].resource.mime_type == "application/octet-stream"
    assert r.structured_content["encoding"] == "base64" and r.structured_content["size"] == len(data)
    # UTF-8 text: text content, exactly.
    r = await s.call_tool("download_file", {"session": sid, "path": "out.txt"})
    assert [c.type for c in r.content] == ["text"]
    assert r.content[0].text == "ünïcode ✓\n" * 3
    assert r.structured_content["encoding"] == "utf-8"
    if work is not None:
        assert (work / "out.bin").read_bytes() == data[::-1]
    r = await s.call_tool("list_files", {"session": sid})
    entries = {e["name"]: e for e in r.structured_content["entries"]}
    assert set(entries) == {"in.bin", "out.bin", "out.txt"}, entries
    assert entries["in.bin"]["kind"] == "file" and entries["in.bin"]["size"] == len(data)
    assert "in.bin" in text(r) and "out.txt" in text(r)

    # Confinement: the session's own symlinks, absolute paths, `..`.
    await s.call_tool("execute", {"session": sid, "code":
                                  f"import os\nos.makedirs({outside!r}, exist_ok=True)\n"
                                  f"os.symlink('/etc', 'etc')\nos.symlink({outside!r}, 'out')\n"
                                  f"os.symlink('/etc/passwd', 'pw')"})
    b = base64.b64encode(b"pwned").decode()
    for tool, args in [
        ("download_file", {"path": "/etc/passwd"}), ("download_file", {"path": "../x"}),
        ("download_file", {"path": "etc/passwd"}), ("download_file", {"path": "pw"}),
        ("upload_file", {"path": "out/new", "data_base64": b}),
        ("upload_file", {"path": "pw", "data_base64": b}),
        ("upload_file", {"path": "../new", "data_base64": b}),
        ("list_files", {"path": "etc"}), ("list_files", {"path": "/"}),
    ]:
        await refused(s, tool, {"session": sid, **args}, "refused", "work directory")
    r = await s.call_tool("execute", {"session": sid, "code": f"print(os.listdir({outside!r}))"})
    assert text(r).startswith("[]"), text(r)
    kinds = {e["name"]: e["kind"] for e in
             (await s.call_tool("list_files", {"session": sid})).structured_content["entries"]}
    assert kinds["etc"] == kinds["out"] == kinds["pw"] == "symlink"
    # Other bad input.
    await refused(s, "download_file", {"session": sid, "path": "missing"}, "does not exist")
    await refused(s, "upload_file", {"session": sid, "path": "x", "data_base64": "!!"}, "base64")
    await refused(s, "upload_file", {"session": sid, "path": "in.bin", "data_base64": b,
                                     "mode": "create"}, "already exists")
    await refused(s, "download_file", {"session": "no-such-session", "path": "x"}, "session")
    await refused(s, "list_files", {"session": sid, "path": "x", "extra": 1}, "invalid arguments")


def test_files_embedded(spindle_bin, test_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()

    async def body():
        async with client(spindle_bin, test_env) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert tools["upload_file"].input_schema["required"] == ["session", "path",
                                                                     "data_base64"]
            assert tools["download_file"].input_schema["required"] == ["session", "path"]
            assert tools["list_files"].input_schema["required"] == ["session"]
            c = await s.call_tool("create_session", {"language": "python", "name": "f",
                                                     "cwd": str(work)})
            await round_trip(s, c.structured_content["id"], str(tmp_path / "outside"), work)
            # Larger than the tools move (32 MiB): refused before it is read.
            await s.call_tool("execute", {"session": "f", "code":
                                          "open('huge', 'wb').truncate(33 << 20)"})
            await refused(s, "download_file", {"session": "f", "path": "huge"}, "at most")
    run(body)


def test_files_connect(spindle_bin, test_env, tmp_path):
    serve = Server(spindle_bin, test_env, tmp_path, name="serve-files")
    try:
        async def body():
            async with client(spindle_bin, test_env, "--connect", str(serve.path)) as s:
                work = tmp_path / "cwork"
                work.mkdir()
                c = await s.call_tool("create_session", {"language": "python", "cwd": str(work)})
                await round_trip(s, c.structured_content["id"], str(tmp_path / "coutside"), work)
        run(body)
    finally:
        serve.close()


@pytest.mark.skipif(not DOCKER, reason="SPINDLE_TEST_DOCKER=0")
def test_files_connect_sandboxed(spindle_bin, test_env, tmp_path):
    serve = Server(spindle_bin, test_env, tmp_path, "--sandbox", "docker", name="serve-sbx")
    try:
        async def body():
            async with client(spindle_bin, test_env, "--connect", str(serve.path)) as s:
                c = await s.call_tool("create_session", {"language": "python"})
                assert c.structured_content["sandbox"]["kind"] == "docker"
                sid = c.structured_content["id"]
                await round_trip(s, sid, "/tmp/outside")
                r = await s.call_tool("list_files", {"session": sid})
                assert r.structured_content["root"] == "/work"
        run(body)
    finally:
        serve.close()
