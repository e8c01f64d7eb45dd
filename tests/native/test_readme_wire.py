"""README.md's section "The wire" is true: its annotated pyzmq example runs against a live
`spindle serve` and prints exactly the output the README shows under it, and the statements of
the section that the example does not exercise hold too."""
import re
import subprocess
import sys

from native_helpers import ROOT, is_finished, sign

MARKER = "# spindle-readme-wire-example"


def readme_wire():
    """The example (the ```python block opening with the marker) and the ```text block that
    follows it, from README.md's section "The wire"."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## The wire\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    m = re.search(r"```python\n(" + re.escape(MARKER) + r".*?\n)```\n(.*?)```text\n(.*?)```",
                  section, re.S)
    assert m, "README's wire section has no marked ```python example followed by ```text output"
    return m.group(1), m.group(3)


def test_readme_wire_example_runs_against_a_live_server(serve, tmp_path):
    code, expected = readme_wire()
    script = tmp_path / "wire_example.py"
    script.write_text(code)
    server = serve()
    r = subprocess.run([sys.executable, str(script), str(server.path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout == expected
    # What the example is there to show, whatever else it prints.
    lines = r.stdout.splitlines()
    assert lines[0] == "r1 session demo idle"
    assert lines[1] == "welcome w1 demo"
    assert lines[2] == "status/started"  # the first reply to an execute
    assert "console/stdout 'one\\ntwo\\n'" in lines  # \n, not \r\n; blocks joined
    assert "html '<b>bold</b>' ['text/html', 'text/plain']" in lines
    assert "result 'Bold()' ['text/html', 'text/plain']" in lines
    assert "status/finished ok" in lines
    assert "watcher saw the same chunks: True" in lines
    assert "None error bad_request" in lines


def test_readme_wire_statements_beyond_the_example(serve):
    """id null for a missing, non-string or over-long id; console text of bash (through the
    PTY) uses \\n; every block opens with a start and closes with an end chunk, neither of
    which has content; max_message refuses a larger request, id null, and the host serves on."""
    server = serve("--max-message", "100000")
    c = server.client()
    for body in [b'{"type": "list_sessions"}', b'{"id": 7, "type": "list_sessions"}',
                 b'{"id": "' + b"i" * 257 + b'", "type": "list_sessions"}']:
        c.send_raw([sign(c.key, body), body])
        reply = c.recv_any(10)
        assert (reply["id"], reply["type"], reply["code"]) == (None, "error", "bad_request"), reply
    s = c.create("bash")
    rid = c.send({"type": "execute", "session": s["id"],
                  "code": "echo one; echo two >&2; printf 'a\\r\\nb\\n'"})
    chunks = c.chunks(rid)
    assert chunks[0]["type"] == "status" and chunks[0]["format"] == "started"
    assert is_finished(chunks[-1])
    text = {"stdout": "", "stderr": ""}
    open_block = None
    for ch in chunks[1:-1]:
        if ch.get("start"):
            assert open_block is None and "content" not in ch, ch
            open_block = (ch["type"], ch.get("format"))
        elif ch.get("end"):
            assert open_block == (ch["type"], ch.get("format")) and "content" not in ch, ch
            open_block = None
        else:
            assert open_block == (ch["type"], ch.get("format")) and "content" in ch, ch
            text[ch["format"]] += ch["content"]
    assert open_block is None
    # The PTY's \r\n is \n; a \r\n the program itself wrote is kept.
    assert text == {"stdout": "one\na\r\nb\n", "stderr": "two\n"}, text
    # A request over max_message: too_large, id null (its JSON is never read).
    big = b'{"id": "big", "type": "execute", "session": "x", "code": "' + b"#" * 200000 + b'"}'
    c.send_raw([sign(c.key, big), big])
    reply = c.recv_any(30)
    assert (reply["id"], reply["code"]) == (None, "too_large"), reply
    assert "100000" in reply["reason"]
    assert c.ok({"type": "session_info", "session": s["id"]})["session"]["state"] == "idle"
