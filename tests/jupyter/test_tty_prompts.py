"""Terminal prompts through jupyter_client: a program waiting on the session's terminal (bash's
`read -p`, `read -s`, a subprocess's `input()`) becomes a real input_request on the stdin
channel, with the prompt it printed and the password flag, and the answer reaches it."""
import time

import pytest

from jupyter_kit import TIMEOUT, collect, kernel, run, stdout


@pytest.fixture(scope="module")
def sh():
    with kernel("spindle-bash") as (km, kc):
        yield km, kc


@pytest.fixture(scope="module")
def py():
    with kernel("spindle-python") as (km, kc):
        yield km, kc


def ask(kc, code, answers):
    """Execute `code` allowing stdin, answer each input_request in turn; return the requests'
    contents, the reply and the iopub messages."""
    msg_id = kc.execute(code, allow_stdin=True)
    asked = []
    for answer in answers:
        req = kc.stdin_channel.get_msg(timeout=TIMEOUT)
        assert req["msg_type"] == "input_request"
        assert req["parent_header"]["msg_id"] == msg_id
        asked.append(req["content"])
        kc.input(answer)
    reply, iopub = collect(kc, msg_id)
    return asked, reply, iopub


def streams(iopub, name):
    return "".join(m["content"]["text"] for m in iopub
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def test_read_p_is_an_input_request(sh):
    _, kc = sh
    asked, reply, iopub = ask(kc, "read -p 'Name: ' n; echo \"hi $n\"", ["Ada"])
    assert [(a["prompt"], a["password"]) for a in asked] == [("Name: ", False)]
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub) == "hi Ada\n"
    # The prompt is in the input box, not printed a second time.
    assert "Name: " not in streams(iopub, "stderr")


def test_read_s_is_a_password_request(sh):
    _, kc = sh
    asked, reply, iopub = ask(kc, "read -s -p 'Password: ' pw; echo; echo \"length ${#pw}\"",
                              ["hunter2"])
    assert [(a["prompt"], a["password"]) for a in asked] == [("Password: ", True)]
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub) == "\nlength 7\n"


def test_a_subprocess_prompt_from_bash(sh):
    _, kc = sh
    asked, reply, iopub = ask(kc, "python3 -c 'print(\"answer:\", input(\"ok? \"))'", ["y"])
    assert [(a["prompt"], a["password"]) for a in asked] == [("ok? ", False)]
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub) == "answer: y\n"


def test_without_stdin_the_program_gets_end_of_file(sh):
    _, kc = sh
    t0 = time.monotonic()
    reply, iopub = run(kc, "read -p 'x: ' v </dev/tty; echo \"status $?\"", allow_stdin=False)
    assert time.monotonic() - t0 < 10
    assert stdout(iopub) == "status 1\n"
    assert "allow_stdin is false" in streams(iopub, "stderr")
    assert kc.stdin_channel.msg_ready() is False


def test_python_input_is_asked_once_and_its_subprocess_too(py):
    _, kc = py
    asked, reply, iopub = ask(kc, "print('hi', input('Name: '))", ["Ada"])
    assert [a["prompt"] for a in asked] == ["Name: "]
    assert stdout(iopub) == "hi Ada\n"
    code = ("import subprocess\n"
            "subprocess.run(['python3', '-c', 'print(\"sub\", input(\"ok? \"))'])")
    asked, reply, iopub = ask(kc, code, ["fine"])
    assert [(a["prompt"], a["password"]) for a in asked] == [("ok? ", False)]
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub) == "sub fine\n"
    # Nothing else is waiting on the stdin channel: no request was made twice (a second
    # request would have come before this next execution's reply).
    run(kc, "pass")
    assert kc.stdin_channel.msg_ready() is False
