"""Protocol edge cases against the real kernels, with jupyter_client and raw ZeroMQ."""
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from jupyter_kit import (
    TIMEOUT, Raw, collect, connection_info, kernel, run, shell_reply, stdout, tree, types,
    wait_gone,
)


@pytest.fixture(scope="module")
def py():
    with kernel("spindle-python") as (km, kc):
        yield km, kc


@pytest.fixture()
def raw(py):
    r = Raw(connection_info(py[0]))
    yield r
    r.close()


def test_kernel_info_wrapped_in_busy_idle_and_echoes_parent(py):
    km, kc = py
    msg_id = kc.kernel_info()
    reply, iopub = collect(kc, msg_id)
    assert types(iopub) == ["status", "status"]
    assert [m["content"]["execution_state"] for m in iopub] == ["busy", "idle"]
    c = reply["content"]
    assert c["status"] == "ok" and c["protocol_version"].startswith("5.")
    assert c["implementation"] == "spindle" and c["implementation_version"]
    li = c["language_info"]
    assert li["name"] == "python" and li["version"].count(".") == 2
    for key in ("mimetype", "file_extension", "pygments_lexer", "codemirror_mode",
                "nbconvert_exporter"):
        assert li[key], key
    assert c["banner"] and c["help_links"]
    # Dates carry a timezone.
    assert reply["header"]["date"].tzinfo is not None


def test_control_requests_are_wrapped_in_busy_idle(py):
    _, kc = py
    msg = kc.session.msg("kernel_info_request", {})
    kc.control_channel.send(msg)
    assert kc.control_channel.get_msg(timeout=TIMEOUT)["msg_type"] == "kernel_info_reply"
    states = []
    while len(states) < 2:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            states.append(m["content"]["execution_state"])
    assert states == ["busy", "idle"]


def test_heartbeat_echoes_bytes(raw):
    import zmq
    hb = raw.ctx.socket(zmq.REQ)
    hb.linger = 0
    hb.connect(raw.url("hb_port"))
    raw.sockets.append(hb)
    for payload in (b"ping", bytes(range(256)), b""):
        hb.send(payload)
        assert hb.poll(5000), "no heartbeat echo"
        assert hb.recv() == payload


def test_bad_signature_and_malformed_frames_are_dropped(raw, py):
    shell = raw.dealer()
    raw.send(shell, "kernel_info_request", key=b"wrong key")
    shell.send_multipart([b"no delimiter here"])
    shell.send_multipart([b"<IDS|MSG>", b"sig", b"{}"])
    shell.send_multipart([b"<IDS|MSG>", raw.sign(b"nope", b"{}", b"{}", b"{}"), b"nope", b"{}",
                          b"{}", b"{}"])
    assert raw.recv(shell, timeout=0.7) is None
    header = raw.send(shell, "kernel_info_request")
    reply = raw.recv(shell)
    assert reply is not None and reply["parent_header"]["msg_id"] == header["msg_id"]
    assert py[0].is_alive()


def test_request_without_date_is_served_and_header_echoed_verbatim(raw):
    shell = raw.dealer()
    iopub = raw.sub()
    # The kernel says when the subscription reached it (JEP 65); until then iopub drops.
    welcome = raw.recv(iopub)
    assert welcome is not None and welcome["header"]["msg_type"] == "iopub_welcome", welcome
    header = raw.header("execute_request", date=None)
    header["x_extra"] = {"kept": True}
    raw.send(shell, "execute_request", {"code": "40 + 2", "silent": False,
                                        "store_history": True, "user_expressions": {},
                                        "allow_stdin": False}, header=header)
    reply = raw.recv(shell)
    assert reply["content"]["status"] == "ok"
    assert reply["parent_header"] == header
    assert "date" not in reply["parent_header"]
    seen = []
    while True:
        m = raw.recv(iopub)
        assert m is not None
        if m["header"]["msg_type"] == "iopub_welcome":
            continue
        if m["parent_header"].get("msg_id") == header["msg_id"]:
            assert m["parent_header"] == header
            seen.append(m["header"]["msg_type"])
            if m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
    assert seen == ["status", "execute_input", "execute_result", "status"]


def test_msg_ids_are_unique(py):
    _, kc = py
    reply, iopub = run(kc, "for i in range(3): print(i, flush=True)")
    ids = [m["header"]["msg_id"] for m in iopub] + [reply["header"]["msg_id"]]
    assert len(ids) == len(set(ids))


def test_reply_goes_back_to_the_requesting_identity(raw):
    a = raw.dealer(identity=b"client-a")
    b = raw.dealer(identity=b"client-b")
    ha = raw.send(a, "kernel_info_request")
    hb = raw.send(b, "kernel_info_request")
    assert raw.recv(a)["parent_header"]["msg_id"] == ha["msg_id"]
    assert raw.recv(b)["parent_header"]["msg_id"] == hb["msg_id"]


def test_client_reconnecting_with_same_identity_keeps_working(raw):
    for _ in range(3):
        s = raw.dealer(identity=b"same-identity")
        h = raw.send(s, "kernel_info_request")
        reply = raw.recv(s)
        assert reply is not None and reply["parent_header"]["msg_id"] == h["msg_id"]
        s.close(linger=0)
        raw.sockets.remove(s)
        time.sleep(0.1)


def test_unknown_request_gets_error_reply(raw):
    shell = raw.dealer()
    h = raw.send(shell, "frobnicate_request", {})
    reply = raw.recv(shell)
    assert reply["header"]["msg_type"] == "frobnicate_reply"
    assert reply["content"]["status"] == "error"
    assert reply["parent_header"]["msg_id"] == h["msg_id"]


def test_comm_messages(py, raw):
    _, kc = py
    shell = raw.dealer()
    raw.send(shell, "comm_open", {"comm_id": "c1", "target_name": "t", "data": {}})
    assert raw.recv(shell, timeout=0.5) is None  # ignored: no reply
    msg_id = kc.comm_info()
    reply = shell_reply(kc, msg_id)
    assert reply["content"] == {"status": "ok", "comms": {}}


def test_error_reply_and_exactly_one_iopub_error(py):
    _, kc = py
    reply, iopub = run(kc, "print('before')\nraise KeyError('k')")
    c = reply["content"]
    assert c["status"] == "error" and c["ename"] == "KeyError" and c["traceback"]
    assert "evalue" in c
    assert types(iopub).count("error") == 1
    assert stdout(iopub) == "before\n"


def test_silent_broadcasts_nothing_and_does_not_count(py):
    _, kc = py
    before, _ = run(kc, "1")
    reply, iopub = run(kc, "print('hidden'); 7 * 6", silent=True)
    assert reply["content"]["status"] == "ok"
    assert types(iopub) == ["status", "status"]
    after, _ = run(kc, "2")
    assert after["content"]["execution_count"] == before["content"]["execution_count"] + 1


def test_store_history_false_does_not_count_or_record(py):
    _, kc = py
    a, _ = run(kc, "'counted'")
    b, iopub = run(kc, "unrecorded_marker = 5", store_history=False)
    c, _ = run(kc, "'counted again'")
    assert c["content"]["execution_count"] == a["content"]["execution_count"] + 1
    assert b["content"]["execution_count"] == a["content"]["execution_count"]
    msg_id = kc.history(hist_access_type="search", pattern="unrecorded_marker*", output=False,
                        raw=True)
    assert shell_reply(kc, msg_id)["content"]["history"] == []
    msg_id = kc.history(hist_access_type="tail", n=1, output=True, raw=True)
    (session, line, (inp, out)), = shell_reply(kc, msg_id)["content"]["history"]
    assert (line, inp, out) == (c["content"]["execution_count"], "'counted again'",
                                "'counted again'")


def test_user_expressions(py):
    _, kc = py
    reply, _ = run(kc, "ue_x = 20", user_expressions={"double": "ue_x * 2", "bad": "nope_"})
    ue = reply["content"]["user_expressions"]
    assert ue["double"]["status"] == "ok"
    assert ue["double"]["data"]["text/plain"] == "40"
    assert ue["bad"]["status"] == "error" and ue["bad"]["ename"] == "NameError"


def test_empty_code_is_a_noop(py):
    _, kc = py
    reply, iopub = run(kc, "   \n")
    assert reply["content"]["status"] == "ok"
    assert types(iopub) == ["status", "execute_input", "status"]


def test_display_ids_and_updates(py):
    _, kc = py
    reply, iopub = run(kc, (
        "from IPython.display import HTML, display\n"
        "h = display(HTML('<i>one</i>'), display_id=True)\n"
        "h.update(HTML('<i>two</i>'))\n"
    ))
    assert reply["content"]["status"] == "ok"
    disp = [m for m in iopub if m["msg_type"] == "display_data"]
    upd = [m for m in iopub if m["msg_type"] == "update_display_data"]
    assert len(disp) == 1 and len(upd) == 1
    did = disp[0]["content"]["transient"]["display_id"]
    assert did and upd[0]["content"]["transient"]["display_id"] == did
    assert upd[0]["content"]["data"]["text/html"] == "<i>two</i>"


def test_large_output_is_lossless(py):
    _, kc = py
    reply, iopub = run(kc, "import sys; _ = sys.stdout.write(('y' * 99 + '\\n') * 50000)")
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub) == ("y" * 99 + "\n") * 50000


def test_stop_on_error_aborts_queued_requests(py):
    _, kc = py
    run(kc, "soe_ran = []")
    first = kc.execute("import time; time.sleep(0.3); raise RuntimeError('first')")
    queued = [kc.execute(f"soe_ran.append({i})") for i in range(2)]
    r0, io0 = collect(kc, first)
    assert r0["content"]["status"] == "error"
    for q in queued:
        r, io = collect(kc, q)
        assert r["content"]["status"] == "aborted"
        assert types(io) == ["status", "status"]
    reply, _ = run(kc, "soe_ran")
    assert reply["content"]["status"] == "ok"
    _, io = run(kc, "print(soe_ran)")
    assert stdout(io) == "[]\n"


def test_stop_on_error_false_keeps_the_queue(py):
    _, kc = py
    run(kc, "soe2 = []")
    first = kc.execute("raise RuntimeError('x')", stop_on_error=False)
    second = kc.execute("soe2.append(1)")
    assert collect(kc, first)[0]["content"]["status"] == "error"
    assert collect(kc, second)[0]["content"]["status"] == "ok"


def test_interrupt_signal_during_sleep_is_fast_and_state_survives(py):
    km, kc = py
    run(kc, "kept_state = 'still here'")
    msg_id = kc.execute("import time; time.sleep(60)")
    # Wait until it runs.
    while True:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input":
            break
    time.sleep(0.2)
    t0 = time.monotonic()
    km.interrupt_kernel()
    reply, iopub = collect(kc, msg_id)
    elapsed = time.monotonic() - t0
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert elapsed < 5, elapsed
    _, io = run(kc, "print(kept_state)")
    assert stdout(io) == "still here\n"


def test_interrupt_request_on_control(py):
    _, kc = py
    msg_id = kc.execute("import time; time.sleep(60)")
    while True:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input":
            break
    time.sleep(0.2)
    msg = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(msg)
    ctrl = kc.control_channel.get_msg(timeout=TIMEOUT)
    assert ctrl["msg_type"] == "interrupt_reply" and ctrl["content"]["status"] == "ok"
    reply, _ = collect(kc, msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"


def test_control_is_served_while_shell_is_busy(py):
    _, kc = py
    msg_id = kc.execute("import time; time.sleep(2)")
    while True:
        m = kc.get_iopub_msg(timeout=TIMEOUT)
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input":
            break
    msg = kc.session.msg("kernel_info_request", {})
    kc.control_channel.send(msg)
    ctrl = kc.control_channel.get_msg(timeout=TIMEOUT)
    assert ctrl["msg_type"] == "kernel_info_reply"
    # Answered while the cell still runs: its execute_reply has not come yet.
    assert not kc.shell_channel.msg_ready()
    reply, _ = collect(kc, msg_id)
    assert reply["content"]["status"] == "ok"


def test_kernel_survives_sigint_while_idle(py):
    km, kc = py
    pid = km.provisioner.process.pid
    run(kc, "sigint_state = 1")
    for _ in range(3):
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert km.is_alive()
    _, io = run(kc, "print(sigint_state)")
    assert stdout(io) == "1\n"


def test_input_with_and_without_stdin(py):
    _, kc = py
    msg_id = kc.execute("name = input('Name: '); print('hi', name)", allow_stdin=True)
    req = kc.stdin_channel.get_msg(timeout=TIMEOUT)
    assert req["msg_type"] == "input_request"
    assert req["content"]["prompt"] == "Name: "
    assert req["parent_header"]["msg_id"] == msg_id
    kc.input("Ada")
    reply, iopub = collect(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    assert stdout(iopub).endswith("hi Ada\n")
    t0 = time.monotonic()
    reply, _ = run(kc, "input('never: ')", allow_stdin=False)
    assert reply["content"]["status"] == "error"
    assert time.monotonic() - t0 < 5


def test_completion_and_inspect_and_is_complete(py):
    _, kc = py
    run(kc, "some_long_variable_name = 3")
    msg_id = kc.complete("some_long_va", 12)
    c = shell_reply(kc, msg_id)["content"]
    assert "some_long_variable_name" in c["matches"] and c["cursor_end"] == 12
    msg_id = kc.inspect("len", 3)
    c = shell_reply(kc, msg_id)["content"]
    assert c["found"] and "text/plain" in c["data"]
    msg_id = kc.is_complete("if x:")
    c = shell_reply(kc, msg_id)["content"]
    assert c["status"] == "incomplete" and c["indent"]


def test_pager_payload_for_unknown_object(py):
    _, kc = py
    reply, iopub = run(kc, "no_such_object_xyz?")
    assert reply["content"]["status"] == "ok" and reply["content"]["payload"] == []
    assert any(m["msg_type"] == "stream" and "not found" in m["content"]["text"] for m in iopub)


def test_debug_request_not_supported(py):
    _, kc = py
    msg = kc.session.msg("debug_request", {"seq": 1, "type": "request", "command": "initialize"})
    kc.control_channel.send(msg)
    reply = kc.control_channel.get_msg(timeout=TIMEOUT)
    assert reply["msg_type"] == "debug_reply" and reply["content"]["success"] is False


# ---- kernels of their own ----------------------------------------------------------------------


def test_restart_through_kernel_manager_gives_fresh_state():
    with kernel("spindle-python") as (km, kc):
        run(kc, "restart_marker = 1")
        old = km.provisioner.process.pid
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=TIMEOUT)
        assert km.provisioner.process.pid != old
        reply, _ = run(kc, "restart_marker")
        assert reply["content"]["ename"] == "NameError"
        assert reply["content"]["execution_count"] == 1


@contextlib.contextmanager
def unmanaged_kernel(spindle_bin, tmp_path, language="python"):
    """`spindle kernel -f` started by hand: no kernel manager owns it."""
    cf = str(tmp_path / "kernel.json")
    write_connection_file(cf, ip="127.0.0.1", key=os.urandom(16).hex().encode())
    env = dict(os.environ)
    env.pop("JPY_PARENT_PID", None)
    proc = subprocess.Popen([str(spindle_bin), "kernel", "-f", cf, "--language", language],
                            env=env, start_new_session=True)
    kc = BlockingKernelClient(connection_file=cf)
    kc.load_connection_file()
    kc.start_channels()
    procs = [psutil.Process(proc.pid)]
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        procs = tree(proc.pid)
        yield proc, kc
    finally:
        kc.stop_channels()
        if proc.poll() is None:
            proc.terminate()
        alive = wait_gone(procs)
        for p in alive:
            p.kill()
        assert not alive, f"processes left behind: {alive}"


def test_shutdown_with_restart_restarts_the_session_in_place(spindle_bin, tmp_path):
    with unmanaged_kernel(spindle_bin, tmp_path) as (proc, kc):
        run(kc, "in_place = 1")
        run(kc, "in_place += 1")
        # The session's processes; the host's guardian (which outlives sessions) is not one.
        child = [p for p in tree(proc.pid) if p.pid != proc.pid
                 and "spindle-guardian" not in " ".join(p.cmdline())]
        msg = kc.session.msg("shutdown_request", {"restart": True})
        kc.control_channel.send(msg)
        reply = kc.control_channel.get_msg(timeout=TIMEOUT)
        assert reply["content"] == {"status": "ok", "restart": True}
        assert not wait_gone(child), "the old session process should be gone"
        assert proc.poll() is None
        reply, _ = run(kc, "in_place")
        assert reply["content"]["ename"] == "NameError"
        assert reply["content"]["execution_count"] == 1
        # A plain shutdown ends the process and its session.
        procs = tree(proc.pid)
        msg = kc.session.msg("shutdown_request", {"restart": False})
        kc.control_channel.send(msg)
        assert kc.control_channel.get_msg(timeout=TIMEOUT)["content"]["restart"] is False
        assert proc.wait(timeout=10) == 0
        assert not wait_gone(procs)


def test_sigterm_exits_cleanly_and_kills_the_session(spindle_bin, tmp_path):
    with unmanaged_kernel(spindle_bin, tmp_path) as (proc, kc):
        run(kc, "import subprocess; p = subprocess.Popen(['sleep', '300'])")
        procs = tree(proc.pid)
        assert len(procs) >= 3  # kernel, python, sleep
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not wait_gone(procs)


def test_history_persists_across_kernels():
    with kernel("spindle-python") as (km, kc):
        run(kc, "persisted_cell = 'p1'")
        msg_id = kc.history(hist_access_type="tail", n=1, output=False, raw=True)
        (s1, l1, _), = shell_reply(kc, msg_id)["content"]["history"]
    with kernel("spindle-python") as (km, kc):
        msg_id = kc.history(hist_access_type="range", session=s1, start=l1, stop=l1 + 1,
                            output=False, raw=True)
        hist = shell_reply(kc, msg_id)["content"]["history"]
        assert hist == [[s1, l1, "persisted_cell = 'p1'"]]
        run(kc, "1")
        msg_id = kc.history(hist_access_type="tail", n=1, output=False, raw=True)
        (s2, _, _), = shell_reply(kc, msg_id)["content"]["history"]
        assert s2 > s1


@pytest.mark.parametrize("stop", ["shutdown_request", "SIGTERM"])
def test_history_batched_entries_reach_the_store_on_stop(spindle_bin, tmp_path, stop):
    """The history's writer lets entries gather (50 ms) before one append; a kernel told to
    stop right after an execution still writes it (regression: batching without a flush)."""
    marker = f"batched_marker_{stop}_{os.getpid()} = 1"
    with unmanaged_kernel(spindle_bin, tmp_path) as (proc, kc):
        run(kc, marker)
        if stop == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            kc.control_channel.send(kc.session.msg("shutdown_request", {"restart": False}))
            kc.control_channel.get_msg(timeout=TIMEOUT)
        assert proc.wait(timeout=10) == 0
    store = pathlib.Path(os.environ["XDG_DATA_HOME"]) / "spindle" / "history" / "python.jsonl"
    assert marker in store.read_text(), "the last execution is in the store"
