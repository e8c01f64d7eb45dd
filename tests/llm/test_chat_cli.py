"""`spindle chat` end to end: the real release binary, a real terminal (tmux, through `Pane`),
and the scripted OpenAI-compatible server (`MockLLM`) in this process.

Every wait polls the screen or the mock with a time limit; nothing sleeps to synchronise. Each
test tags the processes it starts (SPINDLE_TEST_TAG in their environment) and fails if any of
them outlive it.
"""
import base64
import json
import pathlib
import re
import socket
import subprocess
import sys
import time
import uuid

import nbformat
import psutil
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from mock_llm import MockLLM  # noqa: E402
from tmux_pane import Pane  # noqa: E402

MODEL = "mock-model-chat-cli"
# Distinctive, so finding it anywhere on screen or in a log is certainly a leak.
API_KEY = "sk-spindle-test-7Qz9xKEYw4Lr2Vb8"
CONFIRM = "run it? [y]es [n]o [e]dit › "


def execute(code, id=None):
    """A mock turn that calls the execute tool with python `code`."""
    call = {"name": "execute", "arguments": {"language": "python", "code": code}}
    if id:
        call["id"] = id
    return {"tool_calls": [call]}


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.02)


def messages(request):
    return request["body"]["messages"]


def tool_messages(request):
    return [m for m in messages(request) if m.get("role") == "tool"]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def tag():
    """A tag in the environment of every process a test starts; none may survive the test."""
    t = "chat-cli-" + uuid.uuid4().hex[:12]
    yield t

    def tagged():
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("SPINDLE_TEST_TAG") == t:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    # Processes end shortly after their parent: give them a moment, then kill what is left.
    deadline = time.monotonic() + 10
    left = tagged()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = tagged()
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes outlived the test: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture
def mock():
    with MockLLM() as m:
        yield m


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def base_env(test_env, tmp_path, tag):
    """No endpoint configured anywhere: no SPINDLE_LLM_*/OPENAI_* variables, no config file."""
    env = {k: v for k, v in test_env.items()
           if not k.startswith(("SPINDLE_LLM_", "OPENAI_"))}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    for k in ("NO_COLOR", "TMUX", "SPINDLE_IMAGES"):
        env.pop(k, None)
    env["SPINDLE_TEST_TAG"] = tag
    (tmp_path / "home").mkdir()
    return env


@pytest.fixture
def chat_env(base_env, mock):
    env = dict(base_env)
    env["SPINDLE_LLM_BASE_URL"] = mock.url
    env["SPINDLE_LLM_MODEL"] = MODEL
    env["SPINDLE_LLM_API_KEY"] = API_KEY
    return env


@pytest.fixture
def start(tmux, spindle_bin, chat_env, workdir):
    """start(*args) runs `spindle ARGS` in a fresh tmux pane (default `chat`) and waits for the
    first prompt; every pane is closed afterwards."""
    panes = []

    def go(*args, prompt="chat"):
        pane = Pane(tmux, [spindle_bin, *(args or ("chat",))], chat_env, workdir)
        panes.append(pane)
        if prompt == "chat":
            pane.wait_chat_prompt()
        elif prompt:
            pane.wait_prompt(*prompt)
        return pane

    yield go
    for p in panes:
        p.close()


def run_chat(spindle_bin, env, *args, cwd=None, timeout=30):
    """`spindle chat ARGS` as a plain subprocess (no terminal)."""
    return subprocess.run([str(spindle_bin), "chat", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def confirm(pane, answer):
    """Wait for the next `run it?` question (one more than this pane has answered; answered ones
    stay on screen) and answer it; returns the screen as it was asked."""
    asked = getattr(pane, "confirms", 0) + 1
    screen = pane.wait_count(CONFIRM.rstrip(), asked)
    pane.confirms = asked
    pane.line(answer)
    return screen


# -- the confirmation question -----------------------------------------------------------------


def test_code_is_shown_before_the_question_and_runs_on_y(start, mock):
    mock.set_script([execute("print('ran-' + 'it')", id="call_confirm_1"),
                     {"text": "The code printed ran-it, done."}])
    p = start()
    p.line("please run something")
    screen = p.wait_for(re.compile(re.escape(CONFIRM.rstrip()) + r" ?$", re.M)).string
    # The code is on screen, under its dim header, before the question; nothing ran yet and the
    # model was not asked again.
    code_at = screen.find("── python ──\nprint('ran-' + 'it')\n")
    assert 0 <= code_at < screen.find(CONFIRM.rstrip()), screen
    assert "ran-it" not in screen
    assert "\x1b[2m── python ──" in p.screen(colors=True)
    assert mock.attempts == 1
    p.line("y")
    p.wait_for("The code printed ran-it, done.")
    p.wait_chat_prompt()
    out = p.output_after("please run something")
    answered = out.index(CONFIRM + "y")
    ran = out.index("\nran-it\n", answered)
    assert ran < out.index("The code printed ran-it, done."), out
    # The model's next request carries the output as the tool message of that call.
    assert mock.attempts == 2
    req = mock.requests[1]
    calls = [m for m in messages(req) if m.get("tool_calls")]
    assert calls[-1]["tool_calls"][0]["id"] == "call_confirm_1"
    tools = tool_messages(req)
    assert [t["tool_call_id"] for t in tools] == ["call_confirm_1"]
    assert "ran-it" in tools[0]["content"]


def test_n_declines_nothing_runs_and_the_model_is_told(start, mock, tmp_path):
    target = tmp_path / "made-by-the-model.txt"
    mock.set_script([execute(f"open({str(target)!r}, 'w').write('x')", id="call_no"),
                     {"text": "Understood, I will not touch it."}])
    p = start()
    p.line("make a file")
    confirm(p, "n")
    p.wait_for("skipped")
    p.wait_for("Understood, I will not touch it.")
    p.wait_chat_prompt()
    assert not target.exists()
    assert mock.attempts == 2
    tools = tool_messages(mock.requests[1])
    assert [t["tool_call_id"] for t in tools] == ["call_no"]
    assert "declined" in tools[0]["content"]
    # Nothing ran in the session either: no output, no traceback.
    assert "Traceback" not in p.output_after("make a file")


def test_e_edits_the_code_and_the_edited_code_runs(start, mock):
    mock.set_script([execute("print('orig' + 'inal')", id="call_edit"),
                     {"text": "Edited run seen."}])
    p = start()
    p.line("print something")
    confirm(p, "e")
    # The editor opens with the model's code, the cursor at its end.
    p.wait_for(re.compile(r"^edit › print\('orig' \+ 'inal'\)$", re.M))
    p.keys("C-u")
    p.wait_for(re.compile(r"^edit › *$", re.M))
    p.type("print('ed' + 'ited')")
    p.wait_for("edit › print('ed' + 'ited')")
    p.keys("Enter")
    p.wait_for("Edited run seen.")
    p.wait_chat_prompt()
    out = p.output_after("print something")
    assert re.search(r"^edited$", out, re.M), out
    assert not re.search(r"^original$", out, re.M), out
    tools = tool_messages(mock.requests[1])
    assert [t["tool_call_id"] for t in tools] == ["call_edit"]
    assert "edited" in tools[0]["content"] and "original" not in tools[0]["content"]


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_stream_and_the_conversation_goes_on(start, mock):
    mock.set_script([{"text": "Thinking very hard about this.", "chunk_size": 5, "stall": 30},
                     {"text": "Second answer arrives."}])
    p = start()
    p.line("think")
    # The first piece is on screen, then the server stalls for 30 s.
    p.wait_for(re.compile(r"^Think$", re.M))
    t0 = time.monotonic()
    p.keys("C-c")
    p.wait_for("stopped the model's answer", timeout=5)
    p.wait_chat_prompt(timeout=5)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"prompt back {elapsed:.2f} s after Ctrl-C"
    assert "Thinking very hard" not in p.screen()
    p.line("and now?")
    p.wait_for("Second answer arrives.")
    p.wait_chat_prompt()
    assert mock.attempts == 2
    last = messages(mock.requests[1])
    assert last[-1] == {"role": "user", "content": "and now?"}
    # What had arrived of the stopped answer stays in the conversation.
    assert any(m.get("role") == "assistant" and m.get("content") == "Think" for m in last), last


def test_ctrl_c_interrupts_a_run_and_the_session_keeps_its_state(start, mock):
    mock.set_script([
        execute("keep = 'kept-' + 'state'"),
        {"text": "Variable set."},
        execute("import time; print('sleep' + 'ing', flush=True); time.sleep(60)",
                id="call_sleep"),
        {"text": "must never be asked for"},
    ])
    p = start()
    p.line("set a variable")
    confirm(p, "y")
    p.wait_for("Variable set.")
    p.wait_chat_prompt()

    p.line("sleep a minute")
    confirm(p, "y")
    p.wait_for(re.compile(r"^sleeping$", re.M))
    t0 = time.monotonic()
    p.keys("C-c")
    p.wait_for("interrupted", timeout=5)
    p.wait_chat_prompt(timeout=5)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"prompt back {elapsed:.2f} s after Ctrl-C"
    assert "KeyboardInterrupt" in p.output_after("sleep a minute")
    # The model was not asked again after the interrupted run.
    assert mock.attempts == 3

    mock.set_script([execute("print(keep)"), {"text": "It is still there."}])
    mock.reset()
    p.line("is it still set?")
    confirm(p, "y")
    p.wait_for("It is still there.")
    p.wait_chat_prompt()
    assert re.search(r"^kept-state$", p.output_after("is it still set?"), re.M)
    # The model heard about the interrupted call in the next request.
    first = mock.requests[0]
    sleep_result = [t for t in tool_messages(first) if t["tool_call_id"] == "call_sleep"]
    assert sleep_result and "interrupted" in sleep_result[0]["content"], tool_messages(first)


# -- one task with -y: exit status, output, secrets ----------------------------------------------


def test_one_task_exits_0_and_never_shows_the_key(spindle_bin, chat_env, mock, workdir):
    mock.set_script([execute("print(6 * 7)"), {"text": "The answer is forty-two."}])
    env = dict(chat_env, SPINDLE_LOG="trace")
    r = run_chat(spindle_bin, env, "-y", "compute it", cwd=workdir)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert re.search(r"^42$", r.stdout, re.M), r.stdout
    assert r.stdout.index("42") < r.stdout.index("The answer is forty-two.")
    # The key was used, and shown nowhere, not even in a trace log.
    assert mock.requests[0]["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert r.stderr.strip(), "SPINDLE_LOG=trace logged nothing"
    assert API_KEY not in r.stdout and API_KEY not in r.stderr
    assert API_KEY[8:] not in r.stdout + r.stderr


def test_one_task_exits_2_when_nothing_is_configured(spindle_bin, base_env, workdir):
    r = run_chat(spindle_bin, base_env, "-y", "anything", cwd=workdir)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "SPINDLE_LLM_BASE_URL" in r.stderr


def test_one_task_exits_1_when_the_endpoint_refuses(spindle_bin, chat_env, workdir):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    env = dict(chat_env, SPINDLE_LLM_BASE_URL=url)
    r = run_chat(spindle_bin, env, "-y", "anything", cwd=workdir)
    assert r.returncode == 1, (r.stdout, r.stderr)
    said = r.stdout + r.stderr
    assert f"127.0.0.1:{port}" in said, said
    assert API_KEY not in said


def test_one_task_exits_3_at_the_round_limit(spindle_bin, chat_env, mock, workdir):
    mock.set_script([execute(f"print('round-' + '{i}')") for i in range(6)])
    r = run_chat(spindle_bin, chat_env, "-y", "--max-rounds", "2", "loop forever", cwd=workdir)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert mock.attempts == 2
    ran = re.findall(r"^round-(\d)$", r.stdout, re.M)
    assert ran == ["0", "1"], r.stdout
    assert "stopped after 2 tool rounds" in r.stdout + r.stderr


# -- saving, loading, exporting ------------------------------------------------------------------


def test_save_message_then_load_message_in_a_new_process(start, mock, tmp_path):
    saved = tmp_path / "conversation.json"
    mock.set_script([execute("print('ran-' + 'it')", id="call_saved"),
                     {"text": "Noted: the word is zebra."}])
    p = start()
    p.line("remember the word zebra")
    confirm(p, "y")
    p.wait_for("Noted: the word is zebra.")
    p.wait_chat_prompt()
    p.line(f"%save_message {saved}")
    p.wait_for("saved a conversation of")
    p.wait_chat_prompt()
    p.keys("C-d")
    p.wait_for("[exited 0]")
    json.loads(saved.read_text())

    mock.set_script([{"text": "The word was zebra."}])
    mock.reset()
    q = start()
    q.line(f"%load_message {saved}")
    q.wait_for("loaded a conversation of")
    q.wait_chat_prompt()
    q.line("what was the word?")
    q.wait_for("The word was zebra.")
    q.wait_chat_prompt()
    assert mock.attempts == 1
    got = [m for m in messages(mock.requests[0]) if m["role"] != "system"]
    assert [m["role"] for m in got] == ["user", "assistant", "tool", "assistant", "user"], got
    assert got[0]["content"] == "remember the word zebra"
    assert got[1]["tool_calls"][0]["id"] == "call_saved"
    assert got[2]["tool_call_id"] == "call_saved" and "ran-it" in got[2]["content"]
    assert got[3]["content"] == "Noted: the word is zebra."
    assert got[4]["content"] == "what was the word?"


def test_jupyter_in_chat_mode_writes_a_valid_notebook(start, mock, tmp_path):
    path = tmp_path / "out.ipynb"
    mock.set_script([execute("print('ran-' + 'it')"), {"text": "Ran it for you."}])
    p = start()
    p.line("run the thing")
    confirm(p, "y")
    p.wait_for("Ran it for you.")
    p.wait_chat_prompt()
    p.line(f"%jupyter {path}")
    p.wait_for("wrote a notebook of")
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 1
    assert code[0].source == "print('ran-' + 'it')"
    text = "".join(o.get("text", "") for o in code[0].outputs if o.output_type == "stream")
    assert text == "ran-it\n", code[0].outputs
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "run the thing" in md and "Ran it for you." in md


# -- chat mode inside `spindle repl` -----------------------------------------------------------


def test_chat_and_code_modes_in_the_repl(start, mock):
    mock.set_script([{"text": "Hello from the model."}, {"text": "Second reply."}])
    p = start("repl", prompt=("python", 1))
    p.line("%chat")
    p.wait_chat_prompt()
    assert f"chat mode with {MODEL} at {mock.url}" in p.screen()
    p.line("hello model")
    p.wait_for("Hello from the model.")
    p.wait_chat_prompt()
    assert mock.attempts == 1
    # Magics still run code directly in chat mode; the model hears nothing of them.
    p.line("%% echo hi")
    p.wait_chat_prompt()
    assert re.search(r"\A\nhi\n", p.output_after("%% echo hi")), p.output_after("%% echo hi")
    p.line("%%python")
    p.line("x = 6 * 7")
    p.line("print(x)")
    p.keys("Enter")
    p.wait_for(re.compile(r"^42$", re.M))
    p.wait_chat_prompt()
    assert mock.attempts == 1
    # %code: plain text runs as python again, in the same session.
    p.line("%code")
    p.wait_prompt("python", 2)
    p.run("print(x + 1)", "python", 3)
    assert "\n43\n" in p.output_after("print(x + 1)")
    assert mock.attempts == 1
    # Back in chat mode, the conversation goes on.
    p.line("%chat")
    p.wait_chat_prompt()
    p.line("again")
    p.wait_for("Second reply.")
    p.wait_chat_prompt()
    assert mock.attempts == 2
    assert [m["content"] for m in messages(mock.requests[1]) if m["role"] == "user"] == [
        "hello model", "again"]


def test_tokens_and_info(start, mock):
    mock.set_script([
        {**execute("print(1)"),
         "usage": {"prompt_tokens": 1000, "completion_tokens": 17, "total_tokens": 1017}},
        {"text": "Done.",
         "usage": {"prompt_tokens": 2345, "completion_tokens": 89, "total_tokens": 2434}},
    ])
    p = start()
    p.line("%tokens")
    p.wait_for("the server has reported no token counts yet")
    p.wait_chat_prompt()
    p.line("count tokens")
    confirm(p, "y")
    p.wait_for("Done.")
    p.wait_chat_prompt()
    p.line("%tokens")
    p.wait_for("3451 tokens: 3345 prompt, 106 completion (2 requests reported usage)")
    p.wait_chat_prompt()
    p.line("%info")
    p.wait_for("mode: chat")
    p.wait_chat_prompt()
    info = p.output_after("%info")
    assert f"model: {MODEL}" in info, info
    assert f"endpoint: {mock.url}" in info, info
    assert "API key: set (not shown)" in info, info
    screen = p.screen()
    assert API_KEY not in screen and API_KEY[8:] not in screen


# -- vision --------------------------------------------------------------------------------------


def test_vision_sends_the_plot_as_an_image(spindle_bin, chat_env, mock, workdir):
    mock.set_script([
        execute("import matplotlib.pyplot as plt; plt.plot([1,2]); plt.show()", id="call_plot"),
        {"text": "I see a rising line."},
    ])
    env = {k: v for k, v in chat_env.items() if k != "MPLBACKEND"}
    r = run_chat(spindle_bin, env, "-y", "--vision", "plot it", cwd=workdir)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "I see a rising line." in r.stdout
    assert mock.attempts == 2
    after = messages(mock.requests[1])
    i = next(k for k, m in enumerate(after) if m.get("tool_call_id") == "call_plot")
    images = [part for m in after[i + 1:] if m["role"] == "user" and isinstance(m["content"], list)
              for part in m["content"] if part.get("type") == "image_url"]
    assert len(images) == 1, after[i:]
    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,"), url[:40]
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_connect_drives_the_sessions_of_a_running_serve(spindle_bin, chat_env, mock, workdir,
                                                        tmp_path):
    """`spindle chat --connect FILE`: the model's code runs in a session of `spindle serve`
    (a child of the server, not of the chat process), state persists across tool calls, and
    the chat's sessions are closed on the server when it exits."""
    sys.path.insert(0, str(HERE.parent / "native"))
    from native_helpers import Server  # noqa: E402

    server = Server(spindle_bin, chat_env, tmp_path, name="serve-chat")
    try:
        mock.set_script([
            execute("import os; n = 6; print('pid', os.getppid(), os.getpid())"),
            execute("print('still', n * 7)"),
            {"text": "ran on the server"},
        ])
        r = run_chat(spindle_bin, chat_env, "-y", "--connect", str(server.path), "go",
                     cwd=workdir)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "still 42" in r.stdout, r.stdout
        m = re.search(r"^pid (\d+) (\d+)$", r.stdout, re.M)
        assert m, r.stdout
        # The Python process that ran it was the server's child.
        assert int(m.group(1)) == server.proc.pid, (m.groups(), server.proc.pid)
        tools = tool_messages(mock.requests[-1])
        assert [t["tool_call_id"] for t in tools] == ["call_0_0", "call_1_0"]
        # The chat's sessions were closed when it exited.
        c = server.client()
        listed = c.request({"type": "list_sessions"})
        assert listed["type"] == "sessions", listed
        assert [s for s in listed["sessions"] if s["name"].startswith("repl-")] == [], listed
    finally:
        server.close()
