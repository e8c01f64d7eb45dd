"""Terminal prompts through the native API: a program waiting on the session's terminal (bash's
`read -p`, `read -s`, a subprocess's `input()`) becomes an input_request chunk with the prompt it
printed and the password flag; input_reply reaches the program; a late answer is refused."""
from native_helpers import is_finished, outcome, stdout


def converse(client, session, code, answers, **kw):
    """Run `code`, answering each input_request chunk with the next answer; return the chunks
    and the requests' contents."""
    rid = client.send({"type": "execute", "session": session, "code": code, **kw})
    chunks, asked = [], []
    answers = list(answers)
    while True:
        msg = client.recv(rid, timeout=60)
        assert msg["type"] == "chunk", msg
        c = msg["chunk"]
        chunks.append(c)
        if c["type"] == "input_request" and "content" in c:
            asked.append(c["content"])
            if answers:
                assert client.ok({"type": "input_reply", "session": session,
                                  "value": answers.pop(0)})["type"] == "ok"
        if is_finished(c):
            return chunks, asked


def console(chunks, fmt):
    return "".join(c.get("content", "") for c in chunks
                   if c["type"] == "console" and c.get("format") == fmt)


def test_bash_terminal_prompts(client):
    s = client.create("bash")
    chunks, asked = converse(client, s["id"], "read -p 'Name: ' n; echo \"hi $n\"", ["Ada"])
    assert [(a["prompt"], a.get("password", False)) for a in asked] == [("Name: ", False)]
    assert stdout(chunks) == "hi Ada\n"
    assert "Name: " not in console(chunks, "stderr")

    chunks, asked = converse(client, s["id"],
                             "read -s -p 'Password: ' pw; echo; echo \"length ${#pw}\"",
                             ["hunter2"])
    assert [(a["prompt"], a.get("password", False)) for a in asked] == [("Password: ", True)]
    assert stdout(chunks) == "\nlength 7\n"

    chunks, asked = converse(client, s["id"],
                             "python3 -c 'print(\"answer:\", input(\"ok? \"))'", ["y"])
    assert [(a["prompt"], a.get("password", False)) for a in asked] == [("ok? ", False)]
    assert stdout(chunks) == "answer: y\n" and outcome(chunks) == "ok"
    client.ok({"type": "close", "session": s["id"]})


def test_without_stdin_and_late_answers(client):
    s = client.create("bash")
    chunks, asked = converse(client, s["id"], "read -p 'x: ' v </dev/tty; echo \"status $?\"",
                             [], allow_stdin=False)
    assert asked == [] and stdout(chunks) == "status 1\n"
    # A prompt left unanswered until its program gave up: the answer is refused, and it never
    # becomes the shell's next command line.
    chunks, asked = converse(client, s["id"], "read -t 1 -p 'quick: ' x; echo gave up", [])
    assert [a["prompt"] for a in asked] == ["quick: "]
    late = client.request({"type": "input_reply", "session": s["id"], "value": "echo INJECTED"})
    assert late["type"] == "error" and late["code"] == "no_pending_input", late
    chunks = client.execute(s["id"], "echo next")
    assert stdout(chunks) == "next\n"
    client.ok({"type": "close", "session": s["id"]})
