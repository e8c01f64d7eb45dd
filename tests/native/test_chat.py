"""The native `chat` request end to end: a real `spindle serve`, pyzmq clients, and the scripted
OpenAI-compatible server (tests/llm/mock_llm.py) as a subprocess standing in for the model.

Every reply and event is checked against schemas/ (native_helpers' clients do that), and none
may contain the API key.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

import native_helpers
from native_helpers import Server, Watcher, is_finished, sign, stdout, wait_gone

ROOT = pathlib.Path(__file__).resolve().parents[2]
MOCK = ROOT / "tests" / "llm" / "mock_llm.py"
API_KEY = "sk-test-SECRET"
MODEL = "mock-model"


# -- the model stand-in ------------------------------------------------------------------------


class Mock:
    """tests/llm/mock_llm.py in script mode, driven through its control endpoints."""

    def __init__(self, tmp):
        script = tmp / "script.json"
        script.write_text("[]")
        port_file = tmp / "mock.port"
        self.log = open(tmp / "mock.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(MOCK), "--script", str(script), "--port", "0",
             "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert self.proc.poll() is None, "the mock server exited"
            assert time.monotonic() < deadline, "the mock server wrote no port"
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def script(self, turns):
        """Forget what was asked so far, and answer the next requests with `turns`."""
        self._call("POST", "/_mock/reset", {})
        self._call("POST", "/_mock/script", turns)

    def requests(self):
        return [r for r in self._call("GET", "/_mock/requests")
                if r["path"].endswith("/chat/completions")]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def execute(code, id, language="python"):
    """A turn that calls the execute tool."""
    return {"tool_calls": [{"name": "execute", "id": id,
                            "arguments": {"language": language, "code": code}}]}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    m = Mock(tmp_path_factory.mktemp("mock"))
    yield m
    m.close()


def llm_env(test_env, tmp, mock=None):
    """The server's environment: the mock as the endpoint (or nothing configured), no config
    file, no OpenAI variables, every log line."""
    env = {k: v for k, v in test_env.items()
           if not k.startswith(("SPINDLE_LLM_", "OPENAI_"))}
    config_home = tmp / "config"
    config_home.mkdir(exist_ok=True)
    env.update(XDG_CONFIG_HOME=str(config_home), SPINDLE_LOG="trace")
    if mock is not None:
        env.update(SPINDLE_LLM_BASE_URL=mock.url, SPINDLE_LLM_MODEL=MODEL,
                   SPINDLE_LLM_API_KEY=API_KEY)
    return env


@pytest.fixture(scope="module")
def server(spindle_bin, test_env, tmp_path_factory, mock):
    tmp = tmp_path_factory.mktemp("chat")
    s = Server(spindle_bin, llm_env(test_env, tmp, mock), tmp, name="chat")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_key_in_messages(monkeypatch):
    """Every reply and event received is checked for the API key, besides the schemas."""
    reply, event = native_helpers.check_reply, native_helpers.check_event

    def check(original):
        def checked(msg):
            original(msg)
            assert API_KEY not in json.dumps(msg), "the API key reached a client"
        return checked

    monkeypatch.setattr(native_helpers, "check_reply", check(reply))
    monkeypatch.setattr(native_helpers, "check_event", check(event))


@pytest.fixture
def conv():
    return "conv-" + uuid.uuid4().hex[:12]


# -- helpers -----------------------------------------------------------------------------------


def chat(client, conversation, message, auto_run=True, **kw):
    return client.send({"type": "chat", "conversation": conversation, "message": message,
                        "auto_run": auto_run, **kw})


def items(client, rid, answer=None, timeout=60.0):
    """The items of chat `rid` through its done item; `answer(item)` is called for each
    confirm or input item."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.recv(rid, max(0.0, deadline - time.monotonic()))
        assert msg["type"] == "item", msg
        item = msg["item"]
        out.append(item)
        if answer and item["type"] in ("confirm", "input"):
            answer(item)
        if item["type"] == "done":
            return out


def until(client, rid, pred, timeout=30.0):
    """Items of chat `rid` up to the first for which `pred` holds."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.recv(rid, max(0.0, deadline - time.monotonic()))
        assert msg["type"] == "item", msg
        out.append(msg["item"])
        if pred(msg["item"]):
            return out


def of_type(its, kind):
    return [i for i in its if i["type"] == kind]


def chunks_of(its, call):
    return [i["chunk"] for i in its if i["type"] == "output" and i["call"] == call]


def tool_result(its, call):
    found = [i for i in its if i["type"] == "tool_result" and i["call"] == call]
    assert len(found) == 1, its
    return found[0]


def check_stream(its):
    """Numbered without gaps, ending with exactly one done item."""
    seqs = [i["seq"] for i in its]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert [i["type"] for i in its].count("done") == 1 and its[-1]["type"] == "done"
    assert len({i["conversation"] for i in its}) == 1


def item_events(watcher, timeout=60.0):
    """The watcher's item events through a done item."""
    evs = watcher.events_until(
        lambda e: e["type"] == "item" and e["item"]["type"] == "done", timeout)
    return [e["item"] for e in evs if e["type"] == "item"]


def tool_messages(request):
    return [m for m in request["body"]["messages"] if m.get("role") == "tool"]


def reply_to(client, conversation, call, **kw):
    return client.request({"type": "chat_reply", "conversation": conversation, "call": call,
                           **kw})


# -- tests -------------------------------------------------------------------------------------


def test_auto_run_streams_items_to_requester_and_watchers(server, mock, conv):
    mock.script([
        {"text": "Hello! What shall I compute?"},
        execute("print(6*7)", "call_six"),
        {"text": "The answer is 42."},
        execute("print('again')", "call_again"),
        {"text": "Printed it again."},
    ])
    client = server.client()
    # The first message starts the conversation.
    first = items(client, chat(client, conv, "hi"))
    check_stream(first)
    assert first[0] == {"conversation": conv, "seq": 0, "role": "user", "type": "message",
                        "content": "hi"}
    assert first[-1]["reason"] == "stop"
    # A second client watches the live conversation.
    other = server.client()
    watcher = Watcher(server, other, conv)
    try:
        got = items(client, chat(client, conv, "compute six times seven"))
        check_stream(got)
        assert got[0]["seq"] == first[-1]["seq"] + 1  # one conversation, one numbering
        code = [i for i in got if i["type"] == "code"]
        assert code[0]["start"] and code[-1]["end"] and code[0]["call"] == "call_six"
        assert "".join(i.get("content", "") for i in code) == "print(6*7)"
        chunks = chunks_of(got, "call_six")
        assert stdout(chunks) == "42\n"
        assert chunks[0]["type"] == "status" and is_finished(chunks[-1])
        assert "42" in tool_result(got, "call_six")["content"]
        assert got[-1]["type"] == "done" and got[-1]["reason"] == "stop"
        assert got[-1]["rounds"] == 2
        text = "".join(i.get("content", "") for i in got
                       if i["role"] == "assistant" and i["type"] == "message")
        assert text == "The answer is 42."
        # The watcher saw the same items in the same order.
        assert item_events(watcher) == got
    finally:
        watcher.close()

    # The conversation's python session is an ordinary session of the host.
    listed = client.ok({"type": "list_sessions"})["sessions"]
    session = next(s for s in listed if s["name"] == f"{conv}-python")
    assert session["language"] == "python"
    # A watcher of that session gets its chunks and the conversation's items.
    swatch = Watcher(server, other, session["id"])
    try:
        got = items(client, chat(client, conv, "print it again"))
        check_stream(got)
        assert stdout(chunks_of(got, "call_again")) == "again\n"
        evs = swatch.events_until(
            lambda e: e["type"] == "item" and e["item"]["type"] == "done")
        assert [e["item"] for e in evs if e["type"] == "item"] == got
        published = [e["chunk"] for e in evs if e["type"] == "chunk"]
        assert published == chunks_of(got, "call_again")
    finally:
        swatch.close()

    # The model was told the output, under the tool call's id, and saw the whole conversation.
    reqs = mock.requests()
    assert len(reqs) == 5
    tools = tool_messages(reqs[2])
    assert [m["tool_call_id"] for m in tools] == ["call_six"]
    assert "42" in tools[0]["content"]
    said = [m.get("content") for m in reqs[2]["body"]["messages"] if m["role"] == "user"]
    assert said == ["hi", "compute six times seven"]
    assert reqs[2]["body"]["model"] == MODEL
    assert [m["tool_call_id"] for m in tool_messages(reqs[4])] == ["call_six", "call_again"]
    # The key goes to the model, and only there.
    assert reqs[0]["headers"].get("authorization") == f"Bearer {API_KEY}"


def test_confirm_run_edit_and_skip(server, mock, conv):
    mock.script([
        execute("print(6*7)", "call_run"), {"text": "Ran it."},
        execute("print(0)", "call_edit"), {"text": "Ran yours."},
        execute("print('no')", "call_skip"), {"text": "Fine, not run."},
    ])
    client = server.client()
    answers = []

    def answer(decision, **kw):
        def on(item):
            assert item["type"] == "confirm"
            reply = reply_to(client, conv, item["call"], decision=decision, **kw)
            assert reply["type"] == "ok", reply
            answers.append(item)
        return on

    got = items(client, chat(client, conv, "compute", auto_run=False), answer("run"))
    check_stream(got)
    assert answers[0]["call"] == "call_run" and answers[0]["code"] == "print(6*7)"
    assert answers[0]["language"] == "python"
    kinds = [i["type"] for i in got]
    assert kinds.index("confirm") < kinds.index("output")
    assert stdout(chunks_of(got, "call_run")) == "42\n"
    assert "42" in tool_result(got, "call_run")["content"]
    assert got[-1]["reason"] == "stop"
    # The answer is used up.
    again = reply_to(client, conv, "call_run", decision="run")
    assert again["type"] == "error" and again["code"] == "no_pending_input", again

    got = items(client, chat(client, conv, "another", auto_run=False),
                answer("edit", code="print(7*6)"))
    check_stream(got)
    assert stdout(chunks_of(got, "call_edit")) == "42\n"
    edited = [i for i in got if i["type"] == "code" and i.get("content") == "print(7*6)"]
    assert edited

    got = items(client, chat(client, conv, "one more", auto_run=False), answer("skip"))
    check_stream(got)
    kinds = [i["type"] for i in got]
    assert "declined" in kinds and chunks_of(got, "call_skip") == []
    assert kinds.index("declined") < kinds.index("tool_result")
    assert tool_result(got, "call_skip")["content"].startswith("declined")
    assert got[-1]["reason"] == "stop"
    tools = tool_messages(mock.requests()[-1])
    assert tools[-1]["tool_call_id"] == "call_skip"
    assert tools[-1]["content"].startswith("declined")


def test_input_item_is_answered_by_chat_reply(server, mock, conv):
    mock.script([execute("name = input('name? ')\nprint('hello', name)", "call_in"),
                 {"text": "Greeted."}])
    client = server.client()
    asked = []

    def answer(item):
        if item["type"] == "confirm":
            assert reply_to(client, conv, item["call"], decision="run")["type"] == "ok"
        else:
            asked.append(item)
            assert item["call"] == "call_in" and item["prompt"] == "name? "
            assert reply_to(client, conv, item["call"], input="Ada")["type"] == "ok"

    got = items(client, chat(client, conv, "greet", auto_run=False), answer)
    check_stream(got)
    assert len(asked) == 1
    assert "hello Ada" in stdout(chunks_of(got, "call_in"))
    assert "hello Ada" in tool_result(got, "call_in")["content"]


def test_chat_reply_checks_what_it_answers(server, mock, conv):
    client = server.client()
    r = reply_to(client, "no-such-conversation-" + conv, "call_1", decision="run")
    assert r["type"] == "error" and r["code"] == "unknown_conversation", r
    r = client.request({"type": "chat_cancel", "conversation": "no-such-" + conv})
    assert r["type"] == "error" and r["code"] == "unknown_conversation", r

    mock.script([execute("print(1)", "call_wait"), {"text": "done"}])
    rid = chat(client, conv, "go", auto_run=False)
    until(client, rid, lambda i: i["type"] == "confirm")
    # Not that call; not without a decision; not an edit without code.
    r = reply_to(client, conv, "call_other", decision="run")
    assert r["type"] == "error" and r["code"] == "no_pending_input", r
    r = reply_to(client, conv, "call_wait", input="yes")
    assert r["type"] == "error" and r["code"] == "bad_request", r
    r = reply_to(client, conv, "call_wait", decision="edit")
    assert r["type"] == "error" and r["code"] == "bad_request", r
    # One chat at a time per conversation.
    r = client.request({"type": "chat", "conversation": conv, "message": "x", "auto_run": True})
    assert r["type"] == "error" and r["code"] == "busy", r
    assert reply_to(client, conv, "call_wait", decision="run")["type"] == "ok"
    rest = items(client, rid)
    assert rest[-1]["type"] == "done" and rest[-1]["reason"] == "stop"


def test_missing_auto_run_is_a_bad_request(server):
    client = server.client()
    # Sent by hand: the client's own schema check would refuse it.
    body = json.dumps({"id": "no-auto-run", "type": "chat", "conversation": "c",
                       "message": "hi"}).encode()
    client.send_raw([sign(client.key, body), body])
    r = client.recv("no-auto-run")
    assert r["type"] == "error" and r["code"] == "bad_request", r
    assert "auto_run" in r["reason"]


def test_cancel_stops_a_stalled_stream(server, mock, conv):
    mock.script([{"text": "Thinking about it for a long while", "chunk_size": 4, "stall": 20},
                 {"text": "back"}])
    client = server.client()
    rid = chat(client, conv, "think")
    until(client, rid, lambda i: i["type"] == "message" and i["role"] == "assistant"
          and i.get("content"))
    t0 = time.monotonic()
    assert client.ok({"type": "chat_cancel", "conversation": conv})["type"] == "ok"
    rest = items(client, rid, timeout=10)
    assert time.monotonic() - t0 < 5
    assert rest[-1]["type"] == "done" and rest[-1]["reason"] == "cancelled"
    assert [i for i in rest if i["type"] == "notice" and i["format"] == "cancelled"]
    # The conversation goes on.
    got = items(client, chat(client, conv, "again"))
    assert got[-1]["reason"] == "stop"


def test_conversation_ids_and_session_names_do_not_clash(server, mock, conv):
    client = server.client()
    s = client.create("bash", name=f"sess-{conv}")
    r = client.request({"type": "chat", "conversation": f"sess-{conv}", "message": "hi",
                        "auto_run": True})
    assert r["type"] == "error" and r["code"] == "name_taken", r
    mock.script([{"text": "hi"}])
    items(client, chat(client, conv, "hi"))
    r = client.request({"type": "create_session", "language": "bash", "name": conv})
    assert r["type"] == "error" and r["code"] == "name_taken", r
    client.ok({"type": "close", "session": s["id"]})


def test_another_base_url_does_not_get_the_key(server, mock, conv):
    mock.script([{"text": "hi"}])
    client = server.client()
    # The same mock under another name: not the host's endpoint, so no key.
    other = f"http://localhost:{mock.port}/v1"
    got = items(client, chat(client, conv, "hi", base_url=other, model="other-model"))
    assert got[-1]["reason"] == "stop"
    req = mock.requests()[-1]
    assert req["body"]["model"] == "other-model"
    assert API_KEY not in json.dumps(req["headers"])


def test_unconfigured_host_says_what_to_set(spindle_bin, test_env, tmp_path):
    s = Server(spindle_bin, llm_env(test_env, tmp_path), tmp_path, name="bare")
    try:
        r = s.client().request({"type": "chat", "conversation": "c", "message": "hi",
                                "auto_run": True})
        assert r["type"] == "error" and r["code"] == "not_configured", r
        assert "SPINDLE_LLM_BASE_URL" in r["reason"]
    finally:
        s.close()


def test_unanswered_confirm_is_skipped_and_sessions_close_with_the_host(
        spindle_bin, test_env, tmp_path, mock, conv):
    s = Server(spindle_bin, llm_env(test_env, tmp_path, mock), tmp_path, "--chat-confirm-timeout",
               "1", name="short")
    try:
        mock.script([execute("print(6*7)", "call_a"), {"text": "ok"},
                     execute("print('late')", "call_b"), {"text": "skipped"}])
        client = s.client()
        got = items(client, chat(client, conv, "compute", auto_run=False),
                    lambda i: reply_to(client, conv, i["call"], decision="run"))
        assert stdout(chunks_of(got, "call_a")) == "42\n"
        got = items(client, chat(client, conv, "more", auto_run=False), timeout=30)
        check_stream(got)
        kinds = [i["type"] for i in got]
        assert kinds.index("confirm") < kinds.index("notice") < kinds.index("declined")
        notice = of_type(got, "notice")[0]
        assert "chat_reply" in notice["content"] and "skipped" in notice["content"]
        assert tool_result(got, "call_b")["content"].startswith("declined")
        assert got[-1]["reason"] == "stop"
        sessions = client.ok({"type": "list_sessions"})["sessions"]
        pids = [x["pid"] for x in sessions if x["name"] == f"{conv}-python"]
        assert len(pids) == 1 and pids[0]
    finally:
        assert s.stop() == 0
        log = s.output()
        s.close()
    assert wait_gone(pids) == []
    assert API_KEY not in log


# Sends a chat, reads its first item, says "sent", waits for a line (the test freezes it in
# between), then reads the rest and prints what it got.
STUCK_CHAT = """
import json, sys, zmq
from native_helpers import Client
client = Client(zmq.Context(), json.load(open(sys.argv[1])), rcvhwm=1, rcvbuf=65536)
rid = client.send({"type": "chat", "conversation": sys.argv[2], "message": "flood",
                   "auto_run": True})
first = client.recv(rid, 60)
print("sent", flush=True)
sys.stdin.readline()
received, missed, seqs, nbytes = 1, 0, [first["item"]["seq"]], 0
while True:
    msg = client.recv(rid, 60)
    if msg["type"] == "missed":
        assert msg["session"] == sys.argv[2]
        missed += msg["count"]
        continue
    received += 1
    seqs.append(msg["item"]["seq"])
    c = msg["item"].get("chunk", {}).get("content")
    nbytes += len(c) if isinstance(c, str) else 0
    if msg["item"]["type"] == "done":
        break
print(json.dumps({"received": received, "missed": missed, "seqs": seqs, "bytes": nbytes,
                  "reason": msg["item"]["reason"]}), flush=True)
"""


def test_client_that_stops_reading_is_told_how_many_items_it_missed(
        spindle_bin, test_env, tmp_path, mock, conv):
    s = Server(spindle_bin, llm_env(test_env, tmp_path, mock), tmp_path, "--client-buffer",
               "1000000", "--client-timeout", "1", name="slow")
    # 40 MB in 50 kB chunks (stdout and stderr alternate, so they are not coalesced): more than
    # the client's budget, the socket buffers and the queues together.
    code = ("import sys\nfor i in range(400):\n    print('o' * 50000, flush=True)\n"
            "    print('e' * 50000, file=sys.stderr, flush=True)\n")
    mock.script([execute(code, "call_flood"), {"text": "flooded"}])
    stuck = subprocess.Popen(
        [sys.executable, "-c", STUCK_CHAT, str(s.path), conv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parent)))
    try:
        assert stuck.stdout.readline() == "sent\n"
        stuck.send_signal(signal.SIGSTOP)
        # The chat runs to its end although its requester reads nothing.
        other = s.client()
        deadline = time.monotonic() + 60
        while True:
            info = other.ok({"type": "watch", "session": conv})["conversation"]
            if not info["busy"]:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert info["id"] == conv and info["items"] > 10
        assert [x["name"] for x in info["sessions"]] == [f"{conv}-python"]
        stuck.send_signal(signal.SIGCONT)
        out, _ = stuck.communicate("go\n", timeout=60)
    finally:
        if stuck.poll() is None:
            stuck.send_signal(signal.SIGCONT)
            stuck.kill()
            stuck.wait()
        s.close()
    got = json.loads(out.splitlines()[-1])
    seqs = got["seqs"]
    assert got["reason"] == "stop"
    assert got["missed"] > 0, {k: v for k, v in got.items() if k != "seqs"}
    assert seqs == sorted(seqs)
    assert got["received"] + got["missed"] == seqs[-1] - seqs[0] + 1
    assert seqs[-1] + 1 == info["items"]


def test_the_key_never_reaches_the_log(server, mock, conv):
    """Runs after the others in this module, so the log covers all of them (at trace level)."""
    mock.script([execute("print(6*7)", "call_log"), {"text": "done"}])
    client = server.client()
    items(client, chat(client, conv, "log this"))
    log = server.output()
    assert "chat started" in log and "TRACE" in log, log[-2000:]
    assert API_KEY not in log
