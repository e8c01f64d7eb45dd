"""A scripted stand-in for a remote OpenAI-compatible chat-completions API.

The tests of `spindle chat` use it because no real model can run in CI. It stands in for the
remote API only, and on the wire it behaves the way OpenAI, Ollama and vLLM do: HTTP/1.1,
keep-alive, chunked SSE with one event per chunk, OpenAI-shaped error bodies. Standard library
only.

In process:

    with MockLLM([{"text": "hello"}]) as llm:
        ...  # point the client at llm.url, e.g. http://127.0.0.1:PORT/v1
        assert llm.attempts == 1
        assert llm.requests[0]["body"]["messages"][-1]["content"] == "hi"

Out of process:

    python tests/llm/mock_llm.py --script turns.json [--host H] [--port 0] [--port-file F]

prints the port on one line (and writes it to F if given), then serves until SIGTERM or SIGINT.
Nothing else goes to stdout. Errors go to stderr, never with request headers (they carry the
API key).

Endpoints
    POST /v1/chat/completions   (also /chat/completions) consumes the next turn of the script
    GET  /v1/models             (also /models) {"object":"list","data":[{"id":"mock-model",...}]}
    GET  /_mock/requests        recorded requests, a JSON list (control calls are not recorded)
    GET  /_mock/state           {"attempts", "cursor", "turns"}
    POST /_mock/script          body: a JSON list of turns; replaces the script, resets the cursor
    POST /_mock/reset           clears the recorded requests, the attempt count and the cursor
    anything else               404 with an OpenAI-style JSON error (recorded)

A recorded request is a dict: method, path, headers (lower-case names), body (parsed JSON or
None), raw (str), t_received (time.monotonic() when the body had arrived), t_last_byte (when the
last byte of our response was written, stamped just before each write, so it is already set
when the client has the byte; None if nothing was written), turn (the script index consumed, or
None). `attempts` counts POSTs to chat/completions, including those that got an error or found
the script exhausted.

Each POST to chat/completions consumes one turn, errors included. When the script is exhausted
the answer is 400 {"error":{"message":"mock script exhausted","type":"invalid_request_error"}}.
A body that is not a JSON object gets a 400 without consuming a turn. `"stream": true` in the
request selects SSE; otherwise the answer is one `chat.completion` JSON object.

SSE: 200, Content-Type text/event-stream, Cache-Control no-cache, Transfer-Encoding chunked, each
event `data: {json}\\n\\n` in its own chunk, then `data: [DONE]\\n\\n`, then the zero-length chunk.
Chunks are `chat.completion.chunk` objects (id, object, created, model echoing the request's
model, choices [{index 0, delta, finish_reason}]). In order: a role chunk
{"role":"assistant","content":""}; reasoning pieces; content pieces; tool-call fragments; a
final chunk with an empty delta and the finish reason; a usage chunk with "choices": []; [DONE].

Usage numbers are deterministic: prompt_tokens = characters of the request's messages (string
contents, text parts, tool-call names and arguments) // 4; completion_tokens = characters of
reasoning + text + tool names + arguments // 4; each at least 1; total_tokens is their sum.

Turn keys (all optional, freely combined; a turn `{}` is an empty answer that stops):
    text             assistant content; streamed in pieces of `chunk_size` characters
    chunk_size       characters per content/reasoning piece (default 4)
    tool_calls       [{"name": str, "arguments": dict-or-string, "id": optional}]; a non-string
                     is JSON-encoded, a string is sent verbatim (may be invalid JSON); missing
                     arguments are "{}"; default ids call_<turn>_<i>. Streamed like OpenAI: per
                     call a first fragment {index, id, type:"function", function:{name,
                     arguments:""}}, then {index, function:{arguments: piece}} fragments
    split            characters per argument fragment (default 8)
    finish_reason    override. Default "tool_calls" if tool_calls else "stop" ("stop" for ollama).
                     "__omit__": the key is left out of the final chunk (and of the non-stream
                     choice); "": an empty string; null: null (no finish reason ever); any other
                     string is sent as is
    usage            true (default): usage chunk / field; false: none; an object: sent verbatim
                     as usage (e.g. {})
    ollama           true: Ollama's shape: every delta carries role "assistant", there is no
                     separate role chunk, all tool calls arrive whole in ONE chunk
                     (tool_calls: [{index, id, type, function:{name, arguments: full}}]), the
                     finish reason is "stop" even with tool calls, no usage chunk (each unless
                     overridden by finish_reason / usage / no_index)
    no_index         true: tool-call fragments carry no `index`
    comments         true: SSE comment lines `: ping\\n\\n` and blank keep-alive lines `\\n`
                     between events (and a comment before the first)
    reasoning        string streamed first as delta.reasoning_content pieces (vLLM/DeepSeek);
                     non-stream: message.reasoning_content
    reasoning_key    field name for reasoning instead of "reasoning_content" (e.g. "reasoning")
    error_mid_stream object: after about half the pieces, `data: {"error": <object>}\\n\\n`, then
                     the terminating chunk; no finish reason, no [DONE]. Non-stream: 200 with
                     {"error": <object>}
    malformed        true: `data: {not json\\n\\n` after the first content piece (after the role
                     chunk if there is no content), then the rest as normal. Non-stream: the
                     body is `{not json`
    cut              true: about half the pieces, then the TCP connection is closed (FIN)
                     without the terminating chunk, finish reason or [DONE]; "reset": the same
                     but closed with a RST. Non-stream: half of a Content-Length body, then close
    cut_clean        true: like cut but the chunked body ends properly (zero chunk); no finish
                     reason, no [DONE]. Non-stream: half the JSON with a matching Content-Length
    stall            seconds: after the first content piece or first tool fragment (else the
                     first piece, else the role chunk), sleep that long, then continue; a client
                     that gave up is handled quietly. Non-stream: after half the body
    delay            seconds to wait before sending the response headers (applies to every turn
                     kind, errors and close_without_response included)
    status           int: an HTTP error (or any status) response instead of an answer, with
    body             a string sent as text/plain or an object sent as JSON; default is an
                     OpenAI-style {"error":{"message","type","param","code"}} for the status
    retry_after      value of the Retry-After header (string or number), with status
    headers          dict of extra response headers (any turn kind)
    close_without_response  true: read the request, then close the socket without answering
    rechunk          int: instead of one chunk per event, re-cut the SSE byte stream into HTTP
                     chunks of this many bytes (splitting events and UTF-8 sequences)
Precedence when several stream-ending keys are set: cut, then cut_clean, then error_mid_stream.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["MockLLM", "ERROR_EXHAUSTED", "default_error_body"]

ERROR_EXHAUSTED = {"error": {"message": "mock script exhausted", "type": "invalid_request_error"}}

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODELS_PATHS = ("/v1/models", "/models")
MODELS_BODY = {"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0,
                                          "owned_by": "mock"}]}

_OPENAI_ERRORS = {
    400: ("We could not parse the JSON body of your request.", "invalid_request_error", None),
    401: ("Incorrect API key provided: sk-****. You can find your API key at "
          "https://platform.openai.com/account/api-keys.", "invalid_request_error",
          "invalid_api_key"),
    403: ("Country, region, or territory not supported", "request_forbidden",
          "unsupported_country_region_territory"),
    404: ("The model `mock-model` does not exist or you do not have access to it.",
          "invalid_request_error", "model_not_found"),
    408: ("Request timed out.", "timeout", None),
    409: ("Conflict.", "invalid_request_error", None),
    413: ("Request too large.", "invalid_request_error", "request_too_large"),
    422: ("Unprocessable entity.", "invalid_request_error", None),
    429: ("Rate limit reached for mock-model on requests per min (RPM): Limit 3, Used 3, "
          "Requested 1. Please try again in 1s.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def default_error_body(status: int) -> dict:
    """The OpenAI-style error JSON the mock sends for `status` when a turn gives no body."""
    message, type_, code = _OPENAI_ERRORS.get(
        status, (f"HTTP {status}", "server_error" if status >= 500 else "invalid_request_error",
                 None))
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _pieces(s: str, n) -> list[str]:
    n = max(1, int(n))
    return [s[i:i + n] for i in range(0, len(s), n)]


def _arguments(raw) -> str:
    if raw is None:
        return "{}"
    if isinstance(raw, str):
        return raw
    return _dumps(raw)


def _prompt_chars(body) -> int:
    total = 0
    messages = body.get("messages") if isinstance(body, dict) else None
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                total += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return total


class _Answer:
    """What one turn answers, independent of streaming."""

    def __init__(self, turn: dict, index: int, body: dict):
        self.turn = turn
        self.index = index
        self.ollama = bool(turn.get("ollama"))
        self.no_index = bool(turn.get("no_index"))
        self.text = turn.get("text")
        self.text = "" if self.text is None else str(self.text)
        self.reasoning = str(turn.get("reasoning") or "")
        self.reasoning_key = str(turn.get("reasoning_key") or "reasoning_content")
        self.chunk_size = turn.get("chunk_size", 4)
        self.split = turn.get("split", 8)
        self.tool_calls = []
        for i, tc in enumerate(turn.get("tool_calls") or []):
            self.tool_calls.append({
                "id": str(tc.get("id") or f"call_{index}_{i}"),
                "name": str(tc.get("name", "")),
                "arguments": _arguments(tc.get("arguments")),
            })
        if "finish_reason" in turn:
            self.finish_reason = turn["finish_reason"]
        elif self.tool_calls and not self.ollama:
            self.finish_reason = "tool_calls"
        else:
            self.finish_reason = "stop"
        model = body.get("model")
        self.model = model if isinstance(model, str) and model else "mock-model"
        self.id = f"chatcmpl-mock-{index}"
        self.created = int(time.time())
        prompt = max(1, _prompt_chars(body) // 4)
        out_chars = len(self.reasoning) + len(self.text) + sum(
            len(tc["name"]) + len(tc["arguments"]) for tc in self.tool_calls)
        completion = max(1, out_chars // 4)
        self.computed_usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion}

    def usage(self, stream: bool):
        """The usage object to send, or None for no usage at all."""
        u = self.turn.get("usage", not (stream and self.ollama))
        if u is True:
            return self.computed_usage
        if u is False or u is None:
            return None
        return u

    # -- non-stream ----------------------------------------------------------------------
    def completion(self) -> dict:
        content = self.text if (self.text or not self.tool_calls or self.ollama) else None
        message = {"role": "assistant", "content": content}
        if self.reasoning:
            message[self.reasoning_key] = self.reasoning
        if self.tool_calls:
            calls = []
            for i, tc in enumerate(self.tool_calls):
                call = {"id": tc["id"], "type": "function",
                        "function": {"name": tc["name"], "arguments": tc["arguments"]}}
                if self.ollama and not self.no_index:
                    call = {"index": i, **call}
                calls.append(call)
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "logprobs": None}
        if self.finish_reason != "__omit__":
            choice["finish_reason"] = self.finish_reason
        out = {"id": self.id, "object": "chat.completion", "created": self.created,
               "model": self.model, "choices": [choice]}
        usage = self.usage(stream=False)
        if usage is not None:
            out["usage"] = usage
        return out

    # -- stream --------------------------------------------------------------------------
    def _chunk(self, delta, finish_reason=None, omit_finish=False) -> bytes:
        choice = {"index": 0, "delta": delta}
        if not omit_finish:
            choice["finish_reason"] = finish_reason
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": [choice]}
        return f"data: {_dumps(obj)}\n\n".encode()

    def _delta(self, **fields) -> dict:
        return {"role": "assistant", **fields} if self.ollama else fields

    def stream_pieces(self):
        """(role_event or None, [(kind, event_bytes)] for reasoning, content and tool pieces)."""
        role = None if self.ollama else self._chunk({"role": "assistant", "content": ""})
        pieces = []
        for p in _pieces(self.reasoning, self.chunk_size):
            pieces.append(("reasoning", self._chunk(self._delta(**{self.reasoning_key: p}))))
        for p in _pieces(self.text, self.chunk_size):
            pieces.append(("content", self._chunk(self._delta(content=p))))
        if self.tool_calls and self.ollama:
            calls = []
            for i, tc in enumerate(self.tool_calls):
                call = {"id": tc["id"], "type": "function",
                        "function": {"name": tc["name"], "arguments": tc["arguments"]}}
                if not self.no_index:
                    call = {"index": i, **call}
                calls.append(call)
            pieces.append(("tool", self._chunk(self._delta(content="", tool_calls=calls))))
        else:
            for i, tc in enumerate(self.tool_calls):
                idx = {} if self.no_index else {"index": i}
                first = {**idx, "id": tc["id"], "type": "function",
                         "function": {"name": tc["name"], "arguments": ""}}
                pieces.append(("tool", self._chunk({"tool_calls": [first]})))
                for p in _pieces(tc["arguments"], self.split):
                    frag = {**idx, "function": {"arguments": p}}
                    pieces.append(("tool", self._chunk({"tool_calls": [frag]})))
        return role, pieces

    def final_event(self) -> bytes:
        delta = self._delta(content="") if self.ollama else {}
        if self.finish_reason == "__omit__":
            return self._chunk(delta, omit_finish=True)
        return self._chunk(delta, self.finish_reason)

    def usage_event(self, usage) -> bytes:
        obj = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model, "choices": [], "usage": usage}
        return f"data: {_dumps(obj)}\n\n".encode()


def _stream_ops(ans: _Answer, turn: dict) -> list:
    """The stream as ops: ("data", bytes) | ("sleep", s) | ("end",) | ("cut", mode)."""
    role, pieces = ans.stream_pieces()
    cut = turn.get("cut")
    cut_clean = bool(turn.get("cut_clean"))
    err = turn.get("error_mid_stream")
    truncated = bool(cut) or cut_clean or err is not None
    if truncated and pieces:
        pieces = pieces[:max(1, len(pieces) // 2)]

    events = ([("role", role)] if role is not None else []) + pieces
    # Where to put the malformed line and the stall: after the first content piece (stall: or
    # tool fragment), falling back to the first piece, then to the start.
    def after_first(kinds):
        for i, (k, _) in enumerate(events):
            if k in kinds:
                return i
        return None

    inserts = {}
    if turn.get("malformed"):
        at = after_first({"content"})
        if at is None:
            at = 0 if events and events[0][0] == "role" else -1
        inserts.setdefault(at, []).append(("data", b"data: {not json\n\n"))
    stall = turn.get("stall")
    if stall:
        at = after_first({"content", "tool"})
        if at is None:
            at = after_first({"reasoning"})
        if at is None:
            at = 0 if events else -1
        inserts.setdefault(at, []).append(("sleep", float(stall)))

    body = [("data", e) for _, e in events]
    if not truncated:
        body.append(("data", ans.final_event()))
        usage = ans.usage(stream=True)
        if usage is not None:
            body.append(("data", ans.usage_event(usage)))
        body.append(("data", b"data: [DONE]\n\n"))
    elif not cut and not cut_clean:
        body.append(("data", f"data: {_dumps({'error': err})}\n\n".encode()))

    ops = list(inserts.get(-1, []))
    for i, op in enumerate(body):
        ops.append(op)
        ops.extend(inserts.get(i, []))

    if turn.get("comments"):
        last = max((i for i, op in enumerate(ops) if op[0] == "data"), default=-1)
        with_comments = [("data", b": ping\n\n")]
        n = 0
        for i, op in enumerate(ops):
            with_comments.append(op)
            if op[0] == "data" and i != last:
                with_comments.append(("data", b": ping\n\n" if n % 2 == 0 else b"\n"))
                n += 1
        ops = with_comments

    ops.append(("cut", cut) if cut else ("end",))
    return ops


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as the real servers set it (Go's net/http for Ollama, asyncio/uvicorn for
    # vLLM): with Nagle on, each small SSE write after the first waits for the client's delayed
    # ACK (~40 ms on Linux), so events arrive late and `t_last_byte` is not when the client
    # got the byte.
    disable_nagle_algorithm = True
    server_version = "mock-llm/1.0"
    sys_version = ""
    timeout = None
    _rec = None
    _last_write = None

    def version_string(self):
        return self.server_version

    # Access logs would go to stderr; keep quiet. Errors: a line, never headers.
    def log_message(self, format, *args):  # noqa: A002
        pass

    def log_error(self, format, *args):  # noqa: A002
        try:
            sys.stderr.write("mock_llm: " + (format % args) + "\n")
        except Exception:
            pass

    @property
    def mock(self) -> "MockLLM":
        return self.server.mock  # type: ignore[attr-defined]

    # -- low-level writing ---------------------------------------------------------------
    def _write(self, data: bytes):
        # Stamp before writing, so whoever has read our last byte also sees its time recorded.
        self._stamp()
        self.wfile.write(data)

    def _stamp(self):
        self._last_write = time.monotonic()
        if self._rec is not None:
            self.mock._finish(self._rec, self._last_write)

    def _write_chunk(self, data: bytes):
        if data:
            self._write(b"%X\r\n%s\r\n" % (len(data), data))

    def _headers(self, status: int, headers: dict, extra: dict | None):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        for k, v in (extra or {}).items():
            self.send_header(str(k), str(v))
        self._stamp()
        self.end_headers()

    def _send_body(self, status: int, body: bytes, ctype: str, extra: dict | None = None):
        self._headers(status, {"Content-Type": ctype, "Content-Length": len(body)}, extra)
        self._write(body)

    def _send_json(self, status: int, obj, extra: dict | None = None):
        self._send_body(status, _dumps(obj).encode(), "application/json", extra)

    def _abort(self, mode=True):
        """Close the connection now, without finishing the response."""
        self.close_connection = True
        try:
            if mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    # -- request reading -----------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline(65537)
            return bytes(out)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _begin(self):
        """Read the request; returns (path, record-without-turn)."""
        self._last_write = None
        self._rec = None
        raw = self._read_body().decode("utf-8", errors="replace")
        t_received = time.monotonic()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        path = urlsplit(self.path).path
        norm = path.rstrip("/") or "/"
        rec = {"method": self.command, "path": self.path, "headers": headers, "body": body,
               "raw": raw, "t_received": t_received, "t_last_byte": None, "turn": None}
        return norm, rec

    # -- dispatch ------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def _dispatch(self):
        try:
            path, rec = self._begin()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if path.startswith("/_mock/"):
            try:
                self._control(path, rec)
            except (ConnectionError, OSError):
                self.close_connection = True
            return
        is_chat = self.command == "POST" and path in CHAT_PATHS
        self._rec = rec
        if is_chat:
            turn_index, turn = self.mock._record(rec, chat=True)
        else:
            self.mock._record(rec, chat=False)
            turn_index, turn = None, None
        try:
            if is_chat:
                self._chat(rec, turn_index, turn)
            elif self.command == "GET" and path in MODELS_PATHS:
                self._send_json(200, MODELS_BODY)
            else:
                self._send_json(404, {"error": {
                    "message": f"Unknown request URL: {self.command} {path}. Please check the "
                               "URL for typos, or see the docs at "
                               "https://platform.openai.com/docs/api-reference/.",
                    "type": "invalid_request_error", "param": None, "code": "unknown_url"}})
        except OSError:
            # The client went away (timeout, cancel): nothing to report.
            self.close_connection = True
        finally:
            self._rec = None

    def _control(self, path, rec):
        m = self.mock
        if self.command == "GET" and path == "/_mock/requests":
            self._send_json(200, m.requests)
        elif self.command == "GET" and path == "/_mock/state":
            self._send_json(200, m.state())
        elif self.command == "POST" and path == "/_mock/script":
            try:
                m.set_script(_script_from_json(rec["body"]))
            except (TypeError, ValueError) as e:
                self._send_json(400, {"error": {"message": str(e),
                                                "type": "invalid_request_error"}})
                return
            self._send_json(200, {"ok": True, "turns": m.state()["turns"]})
        elif self.command == "POST" and path == "/_mock/reset":
            m.reset()
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": f"unknown control endpoint {path}",
                                            "type": "invalid_request_error"}})

    # -- chat completions ----------------------------------------------------------------
    def _wait(self, seconds):
        if seconds and float(seconds) > 0:
            self.mock._stopping.wait(float(seconds))

    def _chat(self, rec, turn_index, turn):
        body = rec["body"]
        if not isinstance(body, dict):
            self._send_json(400, default_error_body(400))
            return
        if turn is None:
            self._send_json(400, ERROR_EXHAUSTED)
            return
        extra = turn.get("headers") or {}
        self._wait(turn.get("delay"))
        if turn.get("close_without_response"):
            self._abort()
            return
        if "status" in turn:
            status = int(turn["status"])
            hdrs = dict(extra)
            if turn.get("retry_after") is not None:
                hdrs["Retry-After"] = turn["retry_after"]
            payload = turn.get("body", None)
            if payload is None:
                self._send_json(status, default_error_body(status), hdrs)
            elif isinstance(payload, str):
                self._send_body(status, payload.encode(), "text/plain; charset=utf-8", hdrs)
            else:
                self._send_json(status, payload, hdrs)
            return
        ans = _Answer(turn, turn_index, body)
        if body.get("stream") is True:
            self._stream(ans, turn, extra)
        else:
            self._complete(ans, turn, extra)

    def _complete(self, ans: _Answer, turn: dict, extra: dict):
        if turn.get("malformed"):
            data = b"{not json"
        elif turn.get("error_mid_stream") is not None:
            data = _dumps({"error": turn["error_mid_stream"]}).encode()
        else:
            data = _dumps(ans.completion()).encode()
        cut = turn.get("cut")
        if cut or turn.get("cut_clean"):
            half = data[:len(data) // 2]
            length = len(data) if cut else len(half)
            self._headers(200, {"Content-Type": "application/json", "Content-Length": length},
                          extra)
            self._write(half)
            if cut:
                self._abort(cut)
            return
        self._headers(200, {"Content-Type": "application/json", "Content-Length": len(data)},
                      extra)
        if turn.get("stall"):
            self._write(data[:len(data) // 2])
            self._wait(turn["stall"])
            self._write(data[len(data) // 2:])
        else:
            self._write(data)

    def _stream(self, ans: _Answer, turn: dict, extra: dict):
        self._headers(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                            "Connection": "keep-alive", "Transfer-Encoding": "chunked"}, extra)
        rechunk = int(turn.get("rechunk") or 0)
        pending = bytearray()

        def flush_pending():
            while pending:
                self._write_chunk(bytes(pending[:rechunk]))
                del pending[:rechunk]

        for op in _stream_ops(ans, turn):
            kind = op[0]
            if kind == "data":
                if rechunk > 0:
                    pending += op[1]
                    while len(pending) >= rechunk:
                        self._write_chunk(bytes(pending[:rechunk]))
                        del pending[:rechunk]
                else:
                    self._write_chunk(op[1])
            elif kind == "sleep":
                flush_pending()
                self._wait(op[1])
            elif kind == "end":
                flush_pending()
                self._write(b"0\r\n\r\n")
            elif kind == "cut":
                flush_pending()
                self._abort(op[1])


def _script_from_json(obj) -> list:
    if isinstance(obj, dict) and "turns" in obj:
        obj = obj["turns"]
    if not isinstance(obj, list) or not all(isinstance(t, dict) for t in obj):
        raise ValueError("a mock script is a JSON list of turn objects")
    return obj


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        import traceback
        sys.stderr.write("mock_llm: error while handling a request:\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


class MockLLM:
    """A scripted OpenAI-compatible chat-completions server on a background thread."""

    def __init__(self, script=None, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self._script: list = _script_from_json(copy.deepcopy(script)) if script else []
        self._cursor = 0
        self._attempts = 0
        self._records: list = []
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "MockLLM":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), _Handler)
        self._server.mock = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="mock-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # cuts delays and stalls short
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "MockLLM":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "MockLLM is not started"
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        """http://HOST:PORT, without /v1."""
        host = self._server.server_address[0] if self._server else self._host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL clients use: http://HOST:PORT/v1."""
        return self.base + "/v1"

    # -- script and records --------------------------------------------------------------
    def set_script(self, script):
        script = _script_from_json(copy.deepcopy(list(script) if script is not None else []))
        with self._lock:
            self._script = script
            self._cursor = 0

    def reset(self):
        """Forget recorded requests and attempts; rewind the script."""
        with self._lock:
            self._records = []
            self._attempts = 0
            self._cursor = 0

    @property
    def requests(self) -> list:
        with self._lock:
            return copy.deepcopy(self._records)

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    def state(self) -> dict:
        with self._lock:
            return {"attempts": self._attempts, "cursor": self._cursor,
                    "turns": len(self._script)}

    def _record(self, rec: dict, chat: bool):
        """Store a request; for a chat POST, consume and return (index, turn) or (None, None)."""
        with self._lock:
            self._records.append(rec)
            if not chat:
                return None
            self._attempts += 1
            if not isinstance(rec["body"], dict) or self._cursor >= len(self._script):
                return None, None
            index = self._cursor
            self._cursor += 1
            rec["turn"] = index
            return index, copy.deepcopy(self._script[index])

    def _finish(self, rec: dict, t_last_byte):
        with self._lock:
            rec["t_last_byte"] = t_last_byte


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Scripted OpenAI-compatible chat-completions mock.")
    ap.add_argument("--script", help="JSON file: a list of turns (or {\"turns\": [...]})")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="also write the port to this file")
    args = ap.parse_args(argv)

    script = []
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            script = _script_from_json(json.load(f))

    done = threading.Event()

    def on_signal(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    mock = MockLLM(script, host=args.host, port=args.port).start()
    try:
        if args.port_file:
            tmp = f"{args.port_file}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"{mock.port}\n")
            os.replace(tmp, args.port_file)
        sys.stdout.write(f"{mock.port}\n")
        sys.stdout.flush()
        while not done.wait(0.2):
            pass
    finally:
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
