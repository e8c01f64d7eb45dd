"""Comms (the Jupyter comm protocol) through jupyter_client, both directions: comm_info with
targets, comms the code opens (ipywidgets' models, with their buffers), comm messages from the
client reaching the code's handlers (a widget's value, an interact callback whose output comes
back under the comm message), and the bad cases (an unknown comm id, a target nobody has).
Where it helps, the same exchange runs against ipykernel side by side."""
import base64
import uuid

import pytest

from jupyter_kit import TIMEOUT, collect, kernel, run, stdout, types

ipywidgets = pytest.importorskip("ipywidgets", reason="ipywidgets is in tests/requirements.txt")
VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def py():
    with kernel("spindle-python") as (km, kc):
        yield km, kc


def send(kc, msg_type, content, buffers=None, metadata=None):
    """Send a comm message on the shell channel (with buffers, as a frontend does)."""
    msg = kc.session.msg(msg_type, content, metadata=metadata or {})
    kc.session.send(kc.shell_channel.socket, msg, buffers=buffers or [])
    return msg["header"]["msg_id"]


def until_idle(kc, msg_id, timeout=TIMEOUT):
    """The iopub messages caused by one request, up to its idle status (comm messages get no
    shell reply)."""
    _, iopub = collect_iopub(kc, msg_id, timeout)
    return iopub


def collect_iopub(kc, msg_id, timeout=TIMEOUT):
    import time

    deadline = time.monotonic() + timeout
    out = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no idle for {msg_id}; got {types(out)}"
        m = kc.get_iopub_msg(timeout=left)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return None, out


def comm_info(kc, target=None):
    msg_id = kc.comm_info(target_name=target)
    reply, _ = collect(kc, msg_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    return {k: v["target_name"] for k, v in reply["content"]["comms"].items()}


def comms(iopub, kind):
    return [m for m in iopub if m["msg_type"] == kind]


def open_widget_comms(iopub):
    return {m["content"]["comm_id"]: m for m in comms(iopub, "comm_open")
            if m["content"]["target_name"] == "jupyter.widget"}


# -- comm_info and comms opened by the code ---------------------------------------------------


def test_comm_info_lists_the_comms_the_code_opened_by_target(py):
    _, kc = py
    reply, iopub = run(kc, "import comm\n"
                           "ca = comm.create_comm(target_name='t.alpha', data={'n': 1})\n"
                           "cb = comm.create_comm(target_name='t.beta')\n"
                           "print(ca.comm_id, cb.comm_id)")
    assert reply["content"]["status"] == "ok", reply["content"]
    a, b = stdout(iopub).split()
    opens = comms(iopub, "comm_open")
    assert [(m["content"]["comm_id"], m["content"]["target_name"]) for m in opens] == \
        [(a, "t.alpha"), (b, "t.beta")]
    assert opens[0]["content"]["data"] == {"n": 1}
    # The comm messages belong to the execution that sent them.
    assert all(m["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"] for m in opens)
    assert comm_info(kc, "t.alpha") == {a: "t.alpha"}
    everything = comm_info(kc)
    assert everything[a] == "t.alpha" and everything[b] == "t.beta"
    # Closing one sends comm_close and takes it out of comm_info.
    reply, iopub = run(kc, "cb.close()")
    assert [m["content"]["comm_id"] for m in comms(iopub, "comm_close")] == [b]
    assert b not in comm_info(kc)


def test_kernel_buffers_arrive_as_frames_and_client_buffers_reach_the_handler(py):
    _, kc = py
    reply, iopub = run(kc, "import comm\n"
                           "got = []\n"
                           "cz = comm.create_comm(target_name='t.bytes')\n"
                           "cz.on_msg(lambda m: (got.append([bytes(b) for b in m['buffers']]),"
                           " print('handler saw', m['content']['data'])))\n"
                           "cz.send({'k': 1}, buffers=[b'\\x00\\x01\\xff', bytearray(b'two')])")
    assert reply["content"]["status"] == "ok", reply["content"]
    (msg,) = comms(iopub, "comm_msg")
    assert msg["content"]["data"] == {"k": 1}
    assert [bytes(b) for b in msg["buffers"]] == [b"\x00\x01\xff", b"two"]
    cid = msg["content"]["comm_id"]
    msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"from": "client"}},
                  buffers=[b"\xde\xad\xbe\xef"])
    iopub = until_idle(kc, msg_id)
    assert stdout(iopub) == "handler saw {'from': 'client'}\n"
    reply, iopub = run(kc, "print(got)")
    assert stdout(iopub) == "[[b'\\xde\\xad\\xbe\\xef']]\n"


def test_a_target_the_code_registered_takes_a_comm_the_client_opens(py):
    _, kc = py
    run(kc, "import comm\n"
            "opened = []\n"
            "def take(c, msg):\n"
            "    opened.append((c.comm_id, msg['content']['data']))\n"
            "    c.on_msg(lambda m: c.send({'echo': m['content']['data']}))\n"
            "    print('opened by the client')\n"
            "comm.get_comm_manager().register_target('t.client', take)")
    cid = uuid.uuid4().hex
    msg_id = send(kc, "comm_open", {"comm_id": cid, "target_name": "t.client", "data": {"hi": 1}})
    iopub = until_idle(kc, msg_id)
    assert stdout(iopub) == "opened by the client\n"
    assert not comms(iopub, "comm_close")
    assert comm_info(kc, "t.client") == {cid: "t.client"}
    msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"ping": 2}})
    iopub = until_idle(kc, msg_id)
    (echo,) = comms(iopub, "comm_msg")
    assert echo["content"] == {"comm_id": cid, "data": {"echo": {"ping": 2}}}
    msg_id = send(kc, "comm_close", {"comm_id": cid, "data": {}})
    until_idle(kc, msg_id)
    assert cid not in comm_info(kc)


# -- bad input ----------------------------------------------------------------------------------


def test_comm_msg_for_an_unknown_comm_id_is_logged_and_ignored(py):
    _, kc = py
    cid = uuid.uuid4().hex
    msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"x": 1}})
    iopub = until_idle(kc, msg_id)
    assert types(iopub)[0] == "status" and types(iopub)[-1] == "status"
    assert not [m for m in iopub if m["msg_type"].startswith("comm_") or m["msg_type"] == "error"]
    text = "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream")
    assert f"No such comm: {cid}" in text
    reply, iopub = run(kc, "print('still fine')")
    assert stdout(iopub) == "still fine\n"


def test_comm_open_for_a_target_nobody_registered_is_closed_back(py):
    _, kc = py
    cid = uuid.uuid4().hex
    msg_id = send(kc, "comm_open", {"comm_id": cid, "target_name": "no.such.target", "data": {}})
    iopub = until_idle(kc, msg_id)
    (close,) = comms(iopub, "comm_close")
    assert close["content"]["comm_id"] == cid
    assert close["parent_header"]["msg_id"] == msg_id
    assert cid not in comm_info(kc)


def test_ipykernel_does_the_same_with_an_unknown_target_and_comm_id():
    with kernel("python3") as (_, kc):
        cid = uuid.uuid4().hex
        msg_id = send(kc, "comm_open", {"comm_id": cid, "target_name": "no.such.target", "data": {}})
        iopub = until_idle(kc, msg_id)
        assert [m["content"]["comm_id"] for m in comms(iopub, "comm_close")] == [cid]
        msg_id = send(kc, "comm_msg", {"comm_id": uuid.uuid4().hex, "data": {}})
        iopub = until_idle(kc, msg_id)
        assert not [m for m in iopub if m["msg_type"].startswith("comm_")]


def test_bash_has_no_comms_and_closes_what_is_opened():
    with kernel("spindle-bash") as (_, kc):
        assert comm_info(kc) == {}
        assert comm_info(kc, "jupyter.widget") == {}
        cid = uuid.uuid4().hex
        msg_id = send(kc, "comm_open", {"comm_id": cid, "target_name": "jupyter.widget", "data": {}})
        iopub = until_idle(kc, msg_id)
        assert [m["content"]["comm_id"] for m in comms(iopub, "comm_close")] == [cid]
        msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {}})
        assert not comms(until_idle(kc, msg_id), "comm_msg")
        reply, iopub = run(kc, "echo alive")
        assert stdout(iopub) == "alive\n"


def test_node_opens_comms_lists_them_and_hears_the_client():
    with kernel("spindle-node") as (_, kc):
        assert comm_info(kc) == {}
        reply, iopub = run(kc, "globalThis.c = comm.open('t.node', { a: 1 }, {}, [Buffer.from('xyz')]);\n"
                               "c.onMsg((m) => console.log('node got', JSON.stringify(m.content.data),"
                               " m.buffers.map(String)));\n"
                               "c.commId")
        assert reply["content"]["status"] == "ok", reply["content"]
        (opened,) = comms(iopub, "comm_open")
        cid = opened["content"]["comm_id"]
        assert opened["content"]["target_name"] == "t.node" and opened["content"]["data"] == {"a": 1}
        assert [bytes(b) for b in opened["buffers"]] == [b"xyz"]
        assert comm_info(kc) == {cid: "t.node"}
        assert comm_info(kc, "other") == {}
        msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"b": 2}}, buffers=[b"raw"])
        assert stdout(until_idle(kc, msg_id)) == "node got {\"b\":2} [ 'raw' ]\n"
        # A target nobody registered is closed back, as in Python.
        other = uuid.uuid4().hex
        msg_id = send(kc, "comm_open", {"comm_id": other, "target_name": "nope", "data": {}})
        assert [m["content"]["comm_id"] for m in comms(until_idle(kc, msg_id), "comm_close")] == [other]


# -- ipywidgets ---------------------------------------------------------------------------------


def test_a_displayed_slider_opens_widget_comms_and_shows_the_widget_view(py):
    _, kc = py
    reply, iopub = run(kc, "import ipywidgets as w\ns = w.IntSlider(value=3, min=0, max=10)\ndisplay(s)")
    assert reply["content"]["status"] == "ok", reply["content"]
    opens = open_widget_comms(iopub)
    models = {m["content"]["data"]["state"]["_model_name"]: cid for cid, m in opens.items()}
    assert "IntSliderModel" in models, sorted(models)
    slider = opens[models["IntSliderModel"]]
    assert slider["metadata"]["version"].startswith("2."), slider["metadata"]
    assert slider["content"]["data"]["state"]["value"] == 3
    (shown,) = [m for m in iopub if m["msg_type"] == "display_data"]
    assert shown["content"]["data"][VIEW]["model_id"] == models["IntSliderModel"]
    # The comm_opens come before the display that refers to them.
    assert iopub.index(slider) < iopub.index(shown)
    assert models["IntSliderModel"] in comm_info(kc, "jupyter.widget")


def test_a_client_update_changes_the_value_and_runs_the_observer(py):
    _, kc = py
    reply, iopub = run(kc, "import ipywidgets as w\n"
                           "s2 = w.IntSlider(value=1)\n"
                           "s2.observe(lambda ch: print('observed', ch['old'], '->', ch['new']), names='value')\n"
                           "print(s2.model_id)")
    cid = stdout(iopub).strip()
    assert cid in open_widget_comms(iopub)
    msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"method": "update", "state": {"value": 7},
                                                          "buffer_paths": []}})
    iopub = until_idle(kc, msg_id)
    (out,) = [m for m in iopub if m["msg_type"] == "stream"]
    assert out["content"]["text"] == "observed 1 -> 7\n"
    assert out["parent_header"]["msg_id"] == msg_id
    reply, iopub = run(kc, "print(s2.value)")
    assert stdout(iopub) == "7\n"


def test_interact_output_is_captured_by_the_output_widget_under_each_request(py):
    _, kc = py
    reply, iopub = run(kc, "from ipywidgets import interact\n"
                           "@interact(x=(0, 20))\n"
                           "def shout(x=5):\n"
                           "    print('x is', x)")
    assert reply["content"]["status"] == "ok", reply["content"]
    exec_id = reply["parent_header"]["msg_id"]
    opens = open_widget_comms(iopub)
    by_model = {}
    for cid, m in opens.items():
        by_model.setdefault(m["content"]["data"]["state"]["_model_name"], []).append(cid)
    (slider,) = by_model["IntSliderModel"]
    (output,) = by_model["OutputModel"]
    # The Output widget captures by the request's msg_id: it is told which one, and the print
    # carries it as parent.
    def msg_ids_told(iopub):
        return [m["content"]["data"]["state"]["msg_id"] for m in comms(iopub, "comm_msg")
                if m["content"]["comm_id"] == output and "msg_id" in m["content"]["data"].get("state", {})]
    assert exec_id in msg_ids_told(iopub)
    printed = [m for m in iopub if m["msg_type"] == "stream"]
    assert [m["content"]["text"] for m in printed] == ["x is 5\n"]
    msg_id = send(kc, "comm_msg", {"comm_id": slider, "data": {"method": "update", "state": {"value": 12},
                                                             "buffer_paths": []}})
    iopub = until_idle(kc, msg_id)
    assert msg_id in msg_ids_told(iopub)
    printed = [m for m in iopub if m["msg_type"] == "stream"]
    assert [m["content"]["text"] for m in printed] == ["x is 12\n"]
    assert printed[0]["parent_header"]["msg_id"] == msg_id
    # The capture ends with the handler: msg_id is reset.
    assert msg_ids_told(iopub)[-1] == ""


def test_a_comm_message_waits_for_the_running_cell_as_in_ipykernel(py):
    _, kc = py
    reply, iopub = run(kc, "import ipywidgets as w, time\n"
                           "s3 = w.IntSlider(value=0)\n"
                           "s3.observe(lambda ch: print('update', ch['new']), names='value')\n"
                           "print(s3.model_id)")
    cid = stdout(iopub).strip()
    exec_id = kc.execute("time.sleep(1.0); print('cell done', s3.value)")
    msg_id = send(kc, "comm_msg", {"comm_id": cid, "data": {"method": "update", "state": {"value": 4},
                                                          "buffer_paths": []}})
    reply, iopub = collect(kc, exec_id)
    assert stdout(iopub) == "cell done 0\n"
    assert stdout(until_idle(kc, msg_id)) == "update 4\n"


def test_tqdm_notebook_and_auto_show_a_widget_progress_bar(py):
    _, kc = py
    for module in ("tqdm.notebook", "tqdm.auto"):
        reply, iopub = run(kc, f"from {module} import tqdm as bar\n"
                               "for _ in bar(range(3), desc='work'):\n"
                               "    pass\n"
                               "type(bar).__module__, bar.__module__")
        assert reply["content"]["status"] == "ok", reply["content"]
        models = {m["content"]["data"]["state"]["_model_name"] for m in open_widget_comms(iopub).values()}
        assert {"FloatProgressModel", "HBoxModel", "HTMLModel"} <= models, (module, models)
        assert any(VIEW in m["content"]["data"] for m in iopub if m["msg_type"] == "display_data"), module
