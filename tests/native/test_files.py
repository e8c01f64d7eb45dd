"""Files in and out of a session's work directory: `upload_file`, `download_file`, `list_files`,
for a session on the host (its cwd) and a sandboxed one (`/work` in its container; skipped only
when SPINDLE_TEST_DOCKER=0). Paths that would leave the work directory are refused, sizes are
bounded by the host's max_message (1000000 for the shared server)."""
import base64
import hashlib
import json
import os

import pytest

from native_helpers import sign, stdout

DOCKER = os.environ.get("SPINDLE_TEST_DOCKER") != "0"
KINDS = ["local", pytest.param("docker", marks=pytest.mark.skipif(not DOCKER,
                                                                  reason="SPINDLE_TEST_DOCKER=0"))]


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def session(client, kind, tmp_path):
    if kind == "local":
        work = tmp_path / "work"
        work.mkdir()
        return client.create("python", cwd=str(work)), work
    return client.create("python", sandbox={"kind": "docker"}), None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def upload(client, sid, path, data: bytes, **kw):
    return client.request({"type": "upload_file", "session": sid, "path": path,
                           "data": b64(data), **kw}, 60)


def download(client, sid, path):
    return client.request({"type": "download_file", "session": sid, "path": path}, 60)


def listing(client, sid, path=None):
    msg = {"type": "list_files", "session": sid}
    if path is not None:
        msg["path"] = path
    return client.request(msg, 60)


def error_code(reply):
    assert reply["type"] == "error", reply
    return reply["code"]


def run(client, sid, code):
    chunks = client.execute(sid, code)
    return stdout(chunks)


def test_upload_run_download_byte_exact_and_list(client, kind, tmp_path):
    s, work = session(client, kind, tmp_path)
    sid = s["id"]
    data = os.urandom(300_000) + b"\0\0\xff\0" + bytes(range(256))
    r = upload(client, sid, "in.bin", data)
    assert r["type"] == "file" and r["path"] == "in.bin" and r["size"] == len(data), r
    assert "data" not in r
    out = run(client, sid, "import hashlib\n"
                           "d = open('in.bin', 'rb').read()\n"
                           "open('out.bin', 'wb').write(d[::-1])\n"
                           "print(len(d), hashlib.sha256(d).hexdigest())")
    assert out == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
    r = download(client, sid, "out.bin")
    assert r["type"] == "file" and r["size"] == len(data), {k: r[k] for k in r if k != "data"}
    assert base64.b64decode(r["data"]) == data[::-1]
    if work is not None:
        assert (work / "in.bin").read_bytes() == data
        assert (work / "out.bin").read_bytes() == data[::-1]

    r = listing(client, sid)
    assert r["type"] == "files" and r["path"] == "." and r["truncated"] == 0, r
    assert r["root"] == ("/work" if kind == "docker" else str(work)), r
    entries = {e["name"]: e for e in r["entries"]}
    assert entries["in.bin"]["kind"] == "file" and entries["in.bin"]["size"] == len(data)
    assert entries["out.bin"]["kind"] == "file" and entries["out.bin"]["mtime"] > 1_600_000_000
    assert not any(n.startswith(".spindle-upload") for n in entries), entries

    # Subdirectories, create mode, overwrite (the default), and the listing of a subdirectory.
    run(client, sid, "import os; os.mkdir('sub')")
    r = upload(client, sid, "sub/./a.txt", "héllo\n".encode(), mode="create")
    assert r["type"] == "file" and r["path"] == "sub/a.txt", r
    assert error_code(upload(client, sid, "sub/a.txt", b"x", mode="create")) == "file_exists"
    assert upload(client, sid, "sub/a.txt", b"new")["type"] == "file"
    assert run(client, sid, "print(open('sub/a.txt').read())") == "new\n"
    r = listing(client, sid, "sub")
    assert [(e["name"], e["kind"], e["size"]) for e in r["entries"]] == [("a.txt", "file", 3)]
    kinds = {e["name"]: e["kind"] for e in listing(client, sid)["entries"]}
    assert kinds["sub"] == "dir"
    # An empty file round-trips too.
    assert upload(client, sid, "empty", b"")["size"] == 0
    r = download(client, sid, "empty")
    assert r["size"] == 0 and r["data"] == ""

    # What does not exist, or is not what the request needs.
    assert error_code(download(client, sid, "nope.bin")) == "not_found"
    assert error_code(upload(client, sid, "nodir/x", b"x")) == "not_found"
    assert error_code(listing(client, sid, "nodir")) == "not_found"
    assert error_code(download(client, sid, "sub")) == "bad_request"
    assert error_code(listing(client, sid, "in.bin")) == "bad_request"
    assert error_code(download(client, sid, "")) == "bad_request"
    r = client.request({"type": "upload_file", "session": sid, "path": "x", "data": "no base64!"})
    assert error_code(r) == "bad_request" and "base64" in r["reason"]
    client.ok({"type": "close", "session": sid})
    assert error_code(download(client, sid, "in.bin")) == "session_closed"


def test_paths_that_leave_the_work_directory_are_refused(client, kind, tmp_path):
    s, work = session(client, kind, tmp_path)
    sid = s["id"]
    # A directory outside the work directory the session can reach itself.
    outside = str(tmp_path / "outside") if kind == "local" else "/tmp/outside"
    run(client, sid, f"import os\n"
                     f"os.makedirs({outside!r}, exist_ok=True)\n"
                     f"open(os.path.join({outside!r}, 'secret'), 'w').write('secret')\n"
                     f"os.symlink('/etc', 'etc')\n"
                     f"os.symlink(os.path.join({outside!r}, 'secret'), 'secret')\n"
                     f"os.symlink({outside!r}, 'out')\n"
                     f"os.mkdir('real')\n"
                     f"os.symlink('real', 'inside')\n")
    cases = [
        ("download", "../x"), ("download", "/etc/passwd"), ("download", "a/../../etc/passwd"),
        ("download", "etc/passwd"), ("download", "secret"), ("download", "out/secret"),
        ("download", "inside/x"),
        ("upload", "../x"), ("upload", "/tmp/x"), ("upload", "secret"), ("upload", "out/new"),
        ("upload", "etc/new"),
        ("list", "/etc"), ("list", ".."), ("list", "etc"), ("list", "out"), ("list", "inside"),
    ]
    for op, path in cases:
        if op == "download":
            r = download(client, sid, path)
        elif op == "upload":
            r = upload(client, sid, path, b"pwned")
        else:
            r = listing(client, sid, path)
        assert error_code(r) == "forbidden", (op, path, r)
        assert "work directory" in r["reason"], r
    for mode in ("create", "overwrite"):
        assert error_code(upload(client, sid, "secret", b"pwned", mode=mode)) == "forbidden"
    # Nothing was written through the links.
    check = f"import os; print(sorted(os.listdir({outside!r})), open({outside!r} + '/secret').read())"
    assert run(client, sid, check) == "['secret'] secret\n"
    # The symlinks are listed as what they are, never followed.
    kinds = {e["name"]: e["kind"] for e in listing(client, sid)["entries"]}
    assert kinds == {"etc": "symlink", "secret": "symlink", "out": "symlink", "real": "dir",
                     "inside": "symlink"}, kinds
    # The real directory works.
    assert upload(client, sid, "real/ok", b"ok")["type"] == "file"
    if work is not None:
        assert (work / "real" / "ok").read_bytes() == b"ok"
        assert not (tmp_path / "outside" / "new").exists()


def test_sizes_are_bounded_by_max_message(client, kind, tmp_path):
    s, _ = session(client, kind, tmp_path)
    sid = s["id"]
    # An upload larger than the host's max_message (1000000) is refused before it is parsed.
    # (The host does not read a message that large, so the reply carries no id.)
    client.send({"type": "upload_file", "session": sid, "path": "big.bin",
                 "data": b64(os.urandom(800_000))})
    r = client.recv_any(60)
    assert r["id"] is None and error_code(r) == "too_large", r
    assert "1000000" in r["reason"]
    assert error_code(download(client, sid, "big.bin")) == "not_found"

    # A download whose reply would not fit is refused before the file is read.
    run(client, sid, "open('big.bin', 'wb').write(b'x' * 2_000_000)")
    r = download(client, sid, "big.bin")
    assert error_code(r) == "too_large", r
    assert "2000000" in r["reason"], r
    # Just under the bound works.
    limit = (1_000_000 - 4096) // 4 * 3
    run(client, sid, f"open('fits.bin', 'wb').write(b'y' * {limit})")
    r = download(client, sid, "fits.bin")
    assert r["type"] == "file" and r["size"] == limit
    run(client, sid, f"open('over.bin', 'wb').write(b'y' * {limit + 1})")
    assert error_code(download(client, sid, "over.bin")) == "too_large"


def test_unknown_session(client):
    for msg in ({"type": "upload_file", "session": "no-such", "path": "x", "data": ""},
                {"type": "download_file", "session": "no-such", "path": "x"},
                {"type": "list_files", "session": "no-such"}):
        r = client.request(msg)
        assert error_code(r) == "unknown_session", r
    # A request without its path does not follow the schema (sent raw, past the client's check).
    body = json.dumps({"id": "nopath", "type": "download_file", "session": "no-such"}).encode()
    client.send_raw([sign(client.key, body), body])
    r = client.recv("nopath")
    assert error_code(r) == "bad_request", r
