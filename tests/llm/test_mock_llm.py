"""Self-test of the mock OpenAI-compatible server (tests/llm/mock_llm.py); stdlib clients only."""
import http.client
import json
import pathlib
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mock_llm import MockLLM  # noqa: E402

MOCK_SCRIPT = pathlib.Path(__file__).resolve().parent / "mock_llm.py"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]


def post(port, body, path="/v1/chat/completions", headers=None, timeout=5):
    """POST JSON; returns (status, headers dict lower-case, body bytes, complete?)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        try:
            data, complete = resp.read(), True
        except http.client.IncompleteRead as e:
            data, complete = e.partial, False
        return resp.status, hdrs, data, complete
    finally:
        conn.close()


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def sse_data(raw: bytes):
    """The `data:` payloads of an SSE body, in order (comments and blank lines skipped)."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].strip())
    return out


def raw_chunks(port, body):
    """Send a request over a raw socket; return (status line, headers, [chunk payloads], ended)
    where `ended` says whether the zero-length chunk arrived."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(payload), payload))
        f = s.makefile("rb")
        status = f.readline().decode().strip()
        headers = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        chunks = []
        while True:
            size_line = f.readline()
            if not size_line:
                return status, headers, chunks, False
            size = int(size_line.strip(), 16)
            if size == 0:
                f.readline()
                return status, headers, chunks, True
            chunks.append(f.read(size))
            f.readline()


@pytest.fixture
def llm():
    with MockLLM() as m:
        yield m


def chat(model="gpt-test", stream=True, **kw):
    return {"model": model, "messages": MESSAGES, "stream": stream, **kw}


def test_plain_answer_streamed(llm):
    llm.set_script([{"text": "Hello there, world!"}])
    status, headers, chunks, ended = raw_chunks(llm.port, chat())
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["transfer-encoding"] == "chunked"
    assert ended
    # One event per chunk, each a complete `data: ...\n\n`.
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1
               for c in chunks)
    events = [c[6:-2].decode() for c in chunks]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "gpt-test"
               and o["id"] == objs[0]["id"] for o in objs)
    pieces = [o["choices"][0]["delta"].get("content") for o in objs if o["choices"]]
    assert "".join(p for p in pieces if p) == "Hello there, world!"
    assert max(len(p) for p in pieces if p) == 4
    final = objs[-2]["choices"][0]
    assert final == {"index": 0, "delta": {}, "finish_reason": "stop"}
    usage = objs[-1]
    assert usage["choices"] == []
    u = usage["usage"]
    assert u["prompt_tokens"] == (len("You are terse.") + len("hi")) // 4
    assert u["completion_tokens"] == len("Hello there, world!") // 4
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    (rec,) = llm.requests
    assert rec["turn"] == 0 and rec["body"]["stream"] is True and rec["method"] == "POST"
    assert rec["t_received"] <= rec["t_last_byte"]
    assert llm.attempts == 1


def test_non_stream_json_answer(llm):
    llm.set_script([{"text": "plain", "usage": False}, {"tool_calls": [{"name": "f"}]}])
    status, headers, data, _ = post(llm.port, chat(stream=False), path="/chat/completions")
    assert status == 200 and headers["content-type"] == "application/json"
    obj = json.loads(data)
    assert obj["object"] == "chat.completion" and obj["model"] == "gpt-test"
    assert obj["choices"][0]["message"] == {"role": "assistant", "content": "plain"}
    assert obj["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in obj
    obj = json.loads(post(llm.port, chat(stream=False))[2])
    msg = obj["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [{"id": "call_1_0", "type": "function",
                                  "function": {"name": "f", "arguments": "{}"}}]
    assert obj["choices"][0]["finish_reason"] == "tool_calls"
    assert obj["usage"]["completion_tokens"] >= 1


def test_tool_call_streamed_in_fragments(llm):
    args = {"code": "print('hello, world')\nx = [i * i for i in range(10)]", "lang": "python"}
    llm.set_script([{"text": "Let me run that.", "tool_calls": [
        {"name": "run_code", "arguments": args, "id": "call_abc"},
        {"name": "broken", "arguments": '{"a": 1'}], "split": 5}])
    status, _, data, complete = post(llm.port, chat())
    assert status == 200 and complete
    events = sse_data(data)
    assert events[-1] == "[DONE]"
    calls, frags = {}, 0
    for e in events[:-1]:
        obj = json.loads(e)
        for choice in obj["choices"]:
            for tc in choice["delta"].get("tool_calls", []):
                frags += 1
                slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                if "id" in tc:
                    assert tc["type"] == "function" and tc["function"]["arguments"] == ""
                    slot["id"] = tc["id"]
                    slot["name"] = tc["function"]["name"]
                else:
                    assert set(tc) == {"index", "function"}
                    slot["arguments"] += tc["function"]["arguments"]
            if choice.get("finish_reason"):
                assert choice["finish_reason"] == "tool_calls"
    assert frags > 10
    assert calls[0]["id"] == "call_abc" and calls[0]["name"] == "run_code"
    assert json.loads(calls[0]["arguments"]) == args
    assert calls[1] == {"id": "call_0_1", "name": "broken", "arguments": '{"a": 1'}


def test_ollama_shape(llm):
    llm.set_script([{"ollama": True, "text": "ok", "tool_calls": [
        {"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "two"}}]}])
    status, _, data, _ = post(llm.port, chat())
    events = sse_data(data)
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["choices"] for o in objs), "no usage chunk"
    assert all(o["choices"][0]["delta"]["role"] == "assistant" for o in objs)
    with_tools = [o for o in objs if "tool_calls" in o["choices"][0]["delta"]]
    assert len(with_tools) == 1
    calls = with_tools[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in calls] == [(0, "a", {"x": 1}), (1, "b", {"y": "two"})]
    assert objs[-1]["choices"][0]["finish_reason"] == "stop"


def test_errors_retry_after_and_exhausted(llm):
    llm.set_script([{"status": 429, "retry_after": "1"},
                    {"status": 500, "body": "upstream exploded"},
                    {"text": "ok"}])
    status, headers, data, _ = post(llm.port, chat())
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(data)["error"]["code"] == "rate_limit_exceeded"
    status, headers, data, _ = post(llm.port, chat())
    assert status == 500 and data == b"upstream exploded"
    assert headers["content-type"].startswith("text/plain")
    status, _, data, _ = post(llm.port, chat(stream=False))
    assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == "ok"
    status, _, data, _ = post(llm.port, chat())
    assert status == 400
    assert json.loads(data) == {"error": {"message": "mock script exhausted",
                                          "type": "invalid_request_error"}}
    assert llm.attempts == 4
    assert [r["turn"] for r in llm.requests] == [0, 1, 2, None]


def test_cut_stream_has_no_done(llm):
    llm.set_script([{"text": "abcdefghijklmnopqrstuvwxyz", "cut": True},
                    {"text": "abcdefghijklmnopqrstuvwxyz", "cut_clean": True},
                    {"text": "after"}])
    status, _, data, complete = post(llm.port, chat())
    assert status == 200 and not complete
    events = sse_data(data)
    assert events and "[DONE]" not in events
    content = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events)
    assert 0 < len(content) < 26
    assert not any(json.loads(e)["choices"][0]["finish_reason"] for e in events)
    _, _, chunks, ended = raw_chunks(llm.port, chat())
    assert ended and b"data: [DONE]\n\n" not in chunks
    # The server survives both.
    status, _, data, complete = post(llm.port, chat())
    assert status == 200 and complete and sse_data(data)[-1] == "[DONE]"


def test_client_giving_up_on_stall_does_not_hurt(llm):
    llm.set_script([{"text": "slow answer", "stall": 1.0}, {"text": "fine"}])
    t0 = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        post(llm.port, chat(), timeout=0.3)
    assert time.monotonic() - t0 < 1.0
    status, _, data, complete = post(llm.port, chat())
    assert status == 200 and complete and sse_data(data)[-1] == "[DONE]"


def test_models_and_unknown_path(llm):
    assert get(llm.port, "/v1/models") == (200, {"object": "list", "data": [
        {"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]})
    status, body = get(llm.port, "/v1/nope")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    assert llm.url == f"http://127.0.0.1:{llm.port}/v1"


def test_script_mode_control_endpoints(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from file"}]))
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, str(MOCK_SCRIPT), "--script", str(script),
                             "--port", "0", "--port-file", str(port_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        assert int(port_file.read_text()) == port
        status, _, data, _ = post(port, chat(stream=False))
        assert json.loads(data)["choices"][0]["message"]["content"] == "from file"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/_mock/script", body=json.dumps([{"text": "scripted"}]))
        assert json.loads(conn.getresponse().read()) == {"ok": True, "turns": 1}
        conn.request("POST", "/_mock/reset", body="")
        assert json.loads(conn.getresponse().read()) == {"ok": True}
        conn.close()
        status, _, data, _ = post(port, chat(), headers={"Authorization": "Bearer sk-secret"})
        assert status == 200 and sse_data(data)[-1] == "[DONE]"
        status, recs = get(port, "/_mock/requests")
        assert status == 200 and len(recs) == 1
        assert recs[0]["headers"]["authorization"] == "Bearer sk-secret"
        assert recs[0]["path"] == "/v1/chat/completions" and recs[0]["turn"] == 0
        assert recs[0]["body"]["messages"] == MESSAGES
        assert get(port, "/_mock/state")[1] == {"attempts": 1, "cursor": 1, "turns": 1}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0
    assert out == "" and "sk-secret" not in err
