# Spindle's comm registry for Python: the kernel side of the Jupyter comm protocol.
#
# The bootstrap writes nothing of this until it is needed: the host puts this file into the
# session's run directory, and the bootstrap loads it (as the module `spindle_comm`) the first
# time the `comm` package is imported or a comm request arrives, then calls `_bind` with its own
# globals. From then on:
#
# - `comm.create_comm` and `comm.get_comm_manager` (the package ipywidgets uses, `pip install
#   comm`) return this module's `Comm` and `CommManager`, as ipykernel arranges for its own;
#   without the package, the same classes stand alone (`spindle_comm.create_comm(...)`);
# - a comm message the code sends (`comm_open`, `comm_msg`, `comm_close`) is an `m` frame
#   `{"type":"comm", "msg_type":…, "comm_id":…, "data":…, "metadata":…, "buffers":[base64]}`;
# - a comm message from the frontend arrives as the request
#   `{"op":"comm", "id":…, "msg_type":…, "content":{…}, "metadata":{…}, "buffers":[…],
#   "parent":{header}}` and runs the registered handler, its output belonging to that request;
#   `{"op":"comm_info", "id":…, "target_name":…}` answers with the open comms.
#
# As in ipykernel, a message for an unknown comm id and a `comm_open` for a target nobody
# registered are logged (the `Comm` logger, to stderr); the latter is answered by `comm_close`.

import logging
import sys
import uuid

__all__ = ["Comm", "CommManager", "create_comm", "get_comm_manager", "register_target", "kernel"]

logger = logging.getLogger("Comm")

_B = {}  # the bootstrap's globals, from _bind
_STATE = {"manager": None, "classes": None}


def _bind(bootstrap_globals):
    _B.update(bootstrap_globals)
    _adopt_shell_kernel()


def _adopt_shell_kernel():
    """Give `get_ipython().kernel` (the bootstrap's shell's) what comm users call on it: the
    Output widget asks it for the parent request, whose msg_id it captures by."""
    try:
        cls = getattr(_B["_magics"](), "SpindleKernel", None)
    except Exception:
        return
    if cls is None:
        return
    for name in ("get_parent", "send_response", "comm_manager", "iopub_socket"):
        if not hasattr(cls, name):
            setattr(cls, name, _Kernel.__dict__[name])


def _b64(data):
    import base64

    return base64.b64encode(bytes(data)).decode("ascii")


def _unb64(text):
    import base64

    try:
        return memoryview(base64.b64decode(text))
    except Exception:
        return memoryview(b"")


def _current_parent():
    """The header of the request being served (a Jupyter request's header, as the host gave it)."""
    s = _B.get("S")
    parent = getattr(s, "parent", None) if s is not None else None
    return parent if isinstance(parent, dict) else None


class _Kernel:
    """The little of ipykernel's `Kernel` that comm users look for: `get_parent()` (the Output
    widget captures by the parent's msg_id), `comm_manager`, `session`, and `send_response` for
    the error an Output widget reports when no shell is around."""

    iopub_socket = None
    session = None

    def get_parent(self, channel="shell"):
        header = _current_parent()
        if not header:
            return {}
        return {
            "header": header,
            "msg_id": header.get("msg_id"),
            "msg_type": header.get("msg_type"),
            "parent_header": {},
            "metadata": {},
            "content": {},
        }

    @property
    def comm_manager(self):
        return get_comm_manager()

    def send_response(self, stream, msg_type, content=None, **kwargs):
        content = content or {}
        emit = _B["_emit"]
        if msg_type == "error":
            tb = content.get("traceback") or []
            emit({"type": "error", "ename": str(content.get("ename", "Error")),
                  "evalue": str(content.get("evalue", "")), "traceback": [str(t) for t in tb]})
        elif msg_type == "stream":
            out = sys.stderr if content.get("name") == "stderr" else sys.stdout
            out.write(str(content.get("text", "")))
        elif msg_type in ("display_data", "update_display_data"):
            emit({"type": "display", "data": content.get("data") or {}, "metadata": content.get("metadata") or {},
                  "display_id": (content.get("transient") or {}).get("display_id"),
                  "update": msg_type == "update_display_data"})
        elif msg_type == "clear_output":
            emit({"type": "clear_output", "wait": bool(content.get("wait"))})


kernel = _Kernel()


def _publish(comm, msg_type, data=None, metadata=None, buffers=None, **keys):
    msg = {
        "type": "comm",
        "msg_type": msg_type,
        "comm_id": comm.comm_id,
        "data": data if data is not None else {},
        "metadata": metadata if metadata is not None else {},
        "buffers": [_b64(b) for b in (buffers or [])],
    }
    if msg_type == "comm_open":
        msg["target_name"] = str(keys.get("target_name") or comm.target_name or "")
        if keys.get("target_module"):
            msg["target_module"] = str(keys["target_module"])
    _B["_emit"](msg)


def _shell_events():
    ipy = sys.modules.get("IPython")
    get = getattr(ipy, "get_ipython", None) if ipy is not None else None
    try:
        shell = get() if get is not None else None
    except Exception:
        shell = None
    events = getattr(shell, "events", None)
    return events if events is not None and hasattr(events, "trigger") else None


def _make_classes(base_comm, base_manager):
    """`Comm` and `CommManager` on the given bases (the `comm` package's, or our own)."""

    class Comm(base_comm):
        """A comm whose messages go to the frontend through Spindle."""

        kernel = kernel

        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            _publish(self, msg_type, data, metadata, buffers, **keys)

        def handle_msg(self, msg):
            # As the `comm` package's, but IPython's pre/post_execute events only if there is a
            # shell with events to trigger.
            if self._msg_callback:
                events = _shell_events()
                if events is not None:
                    events.trigger("pre_execute")
                self._msg_callback(msg)
                if events is not None:
                    events.trigger("post_execute")

    class CommManager(base_manager):
        """The session's registry of targets and open comms."""

        kernel = kernel

    return Comm, CommManager


class _BaseComm:
    """The `comm` package's BaseComm, for sessions without the package."""

    def __init__(self, target_name="comm", data=None, metadata=None, buffers=None, comm_id=None,
                 primary=True, target_module=None, topic=None, _open_data=None, _close_data=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.comm_id = comm_id if comm_id else uuid.uuid4().hex
        self.primary = primary
        self.target_name = target_name
        self.target_module = target_module
        self.topic = topic if topic else ("comm-%s" % self.comm_id).encode("ascii")
        self._open_data = _open_data if _open_data else {}
        self._close_data = _close_data if _close_data else {}
        self._msg_callback = None
        self._close_callback = None
        self._closed = True
        if self.primary:
            self.open(data=data, metadata=metadata, buffers=buffers)
        else:
            self._closed = False

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        raise NotImplementedError("publish_msg")

    def __del__(self):
        try:
            self.close(deleting=True)
        except Exception:
            pass

    def open(self, data=None, metadata=None, buffers=None):
        if data is None:
            data = self._open_data
        manager = get_comm_manager()
        manager.register_comm(self)
        try:
            self.publish_msg("comm_open", data=data, metadata=metadata, buffers=buffers,
                             target_name=self.target_name, target_module=self.target_module)
            self._closed = False
        except Exception:
            manager.unregister_comm(self)
            raise

    def close(self, data=None, metadata=None, buffers=None, deleting=False):
        if self._closed:
            return
        self._closed = True
        if data is None:
            data = self._close_data
        self.publish_msg("comm_close", data=data, metadata=metadata, buffers=buffers)
        if not deleting:
            get_comm_manager().unregister_comm(self)

    def send(self, data=None, metadata=None, buffers=None):
        self.publish_msg("comm_msg", data=data, metadata=metadata, buffers=buffers)

    def on_close(self, callback):
        self._close_callback = callback

    def on_msg(self, callback):
        self._msg_callback = callback

    def handle_close(self, msg):
        if self._close_callback:
            self._close_callback(msg)

    def handle_msg(self, msg):
        if self._msg_callback:
            self._msg_callback(msg)


class _BaseManager:
    """The `comm` package's CommManager, for sessions without the package."""

    def __init__(self):
        self.comms = {}
        self.targets = {}

    def register_target(self, target_name, f):
        if isinstance(f, str):
            parts = f.rsplit(".", 1)
            if len(parts) == 2:
                module = __import__(parts[0], fromlist=[parts[1]])
                f = getattr(module, parts[1])
            else:
                f = __import__(parts[0])
        self.targets[target_name] = f

    def unregister_target(self, target_name, f):
        return self.targets.pop(target_name)

    def register_comm(self, comm):
        self.comms[comm.comm_id] = comm
        return comm.comm_id

    def unregister_comm(self, comm):
        self.comms.pop(comm.comm_id)

    def get_comm(self, comm_id):
        try:
            return self.comms[comm_id]
        except KeyError:
            logger.warning("No such comm: %s", comm_id)
            return None

    def comm_open(self, stream, ident, msg):
        content = msg["content"]
        comm_id = content["comm_id"]
        target_name = content["target_name"]
        f = self.targets.get(target_name, None)
        comm = create_comm(comm_id=comm_id, primary=False, target_name=target_name)
        self.register_comm(comm)
        if f is None:
            logger.error("No such comm target registered: %s", target_name)
        else:
            try:
                f(comm, msg)
                return
            except Exception:
                logger.error("Exception opening comm with target: %s", target_name, exc_info=True)
        try:
            comm.close()
        except Exception:
            logger.error("Could not close comm during `comm_open` failure clean-up.", exc_info=True)

    def comm_msg(self, stream, ident, msg):
        comm_id = msg["content"]["comm_id"]
        comm = self.get_comm(comm_id)
        if comm is None:
            return
        try:
            comm.handle_msg(msg)
        except Exception:
            logger.error("Exception in comm_msg for %s", comm_id, exc_info=True)

    def comm_close(self, stream, ident, msg):
        comm_id = msg["content"]["comm_id"]
        comm = self.get_comm(comm_id)
        if comm is None:
            return
        self.comms[comm_id]._closed = True
        del self.comms[comm_id]
        try:
            comm.handle_close(msg)
        except Exception:
            logger.error("Exception in comm_close for %s", comm_id, exc_info=True)


def _classes():
    if _STATE["classes"] is None:
        try:
            import comm as package  # its post-import hook calls hook_comm, which sets the classes
        except ImportError:
            package = None
        if _STATE["classes"] is None:
            base = getattr(package, "base_comm", None) if package is not None else None
            if base is not None:
                _STATE["classes"] = _make_classes(base.BaseComm, base.CommManager)
            else:
                _STATE["classes"] = _make_classes(_BaseComm, _BaseManager)
    return _STATE["classes"]


def create_comm(*args, **kwargs):
    """A new comm (opened on the frontend unless `primary=False`)."""
    return _classes()[0](*args, **kwargs)


def get_comm_manager():
    """The session's comm manager."""
    if _STATE["manager"] is None:
        _STATE["manager"] = _classes()[1]()
    return _STATE["manager"]


def register_target(target_name, callback):
    """Call `callback(comm, msg)` when the frontend opens a comm with this target."""
    get_comm_manager().register_target(target_name, callback)


def hook_comm(package):
    """Post-import hook of the `comm` package: plug Spindle in, as ipykernel does."""
    base = getattr(package, "base_comm", None)
    if base is None:
        import importlib

        base = importlib.import_module("comm.base_comm")
    if _STATE["classes"] is None or not issubclass(_STATE["classes"][0], base.BaseComm):
        _STATE["classes"] = _make_classes(base.BaseComm, base.CommManager)
        _STATE["manager"] = None
    package.create_comm = create_comm
    package.get_comm_manager = get_comm_manager


def hook_tqdm_autonotebook(mod):
    """`tqdm.auto` picks its widget bar only under ipykernel (it looks for `ipykernel.zmqshell`
    in `sys.modules`). In a Jupyter kernel of Spindle's, with ipywidgets there, pick it too."""
    import os

    if os.environ.get("SPINDLE_FRONTEND") != "jupyter":
        return
    try:
        from tqdm import notebook
    except Exception:
        return
    if getattr(notebook, "IProgress", None) is None:
        return
    mod.tqdm = notebook.tqdm
    mod.trange = notebook.trange


# -- requests from the host --------------------------------------------------------------------


def handle(op, req):
    """Serve a `comm` or `comm_info` request (the bootstrap sends `done` if this raises)."""
    B = _B
    rid = req.get("id", "")
    if op == "comm_info":
        target = req.get("target_name")
        comms = {}
        manager = get_comm_manager()
        for cid, c in list(manager.comms.items()):
            name = getattr(c, "target_name", "")
            if not target or name == target:
                comms[str(cid)] = {"target_name": str(name)}
        B["_emit"]({"type": "reply", "id": rid, "content": {"comms": comms}}, sync=False)
        B["_done"](rid, "ok", 0)
        return
    msg_type = req.get("msg_type")
    content = req.get("content") if isinstance(req.get("content"), dict) else {}
    parent = req.get("parent") if isinstance(req.get("parent"), dict) else {}
    header = dict(parent)
    header.setdefault("msg_type", msg_type)
    msg = {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": msg_type,
        "parent_header": {},
        "metadata": req.get("metadata") if isinstance(req.get("metadata"), dict) else {},
        "content": content,
        "buffers": [_unb64(b) for b in (req.get("buffers") or []) if isinstance(b, str)],
    }
    S = B["S"]
    S.allow_stdin = False
    S.crit = 0
    S.pending_int = False
    S.gen += 1
    B["_claim_wakeup_fd"]()
    B["_drain_sig"]()
    status = "ok"
    S.executing = True
    try:
        if msg_type not in ("comm_open", "comm_msg", "comm_close"):
            raise ValueError("unknown comm message type %r" % (msg_type,))
        if "comm_id" not in content or (msg_type == "comm_open" and "target_name" not in content):
            raise ValueError("%s without %s" % (msg_type, "comm_id" if "comm_id" not in content else "target_name"))
        getattr(get_comm_manager(), msg_type)(None, None, msg)
    except KeyboardInterrupt as e:
        S.executing = False
        B["_report_exception"](e)
        status = "interrupted"
    except BaseException as e:
        S.executing = False
        logger.error("Exception in %s", msg_type, exc_info=e)
        status = "error"
    S.executing = False
    B["_done"](rid, status, 0 if status == "ok" else 1)
