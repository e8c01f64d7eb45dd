# Spindle's Python bootstrap: runs inside the child (`python -c <this>`), speaks the child
# protocol of docs/child-protocol.md. Any CPython >= 3.8, standard library only; heavy modules
# are imported lazily so the process is ready quickly.
#
# Names: this module renames itself `_spindle` (so its classes do not claim to live in the
# user's `__main__`), and the user gets a fresh `__main__` module whose dict persists across
# executions.

__name__ = "_spindle"

import builtins
import io
import os
import signal
import sys
import time
import _thread
from _collections import deque

_G = globals()  # frames running with these globals are the bootstrap's, hidden from tracebacks
_MAIN = _thread.get_ident()
_FRAME_MAX = 1 << 20  # split o/e frames larger than this
_FLUSH_AT = 64 << 10  # flush buffered output once this much is waiting
_FLUSH_DELAY = 0.002  # ... or this long after the first unflushed write
_MSG_MAX = 16 << 20  # the protocol's largest frame payload
_BINARY = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
_REPRS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
_MPL_BACKEND = "module://spindle_inline"


class _State:
    """Mutable bootstrap state, one instance (attribute access avoids `global` everywhere)."""

    def __init__(self):
        self.evt = -1  # event FIFO (write)
        self.req = -1  # request FIFO (read)
        self.pty = -1  # private dup of fd 1, for sentinels
        self.err = -1  # private dup of fd 2, for sentinels
        self.nonce = b""
        self.sync = 0  # number of the latest sentinel written
        self.total = 0  # bytes buffered in _q (approximate under threads; only a threshold)
        self.armed = False  # a timed flush is pending
        self.flusher = False  # the flusher thread runs
        self.busy = False  # frames are being written (reentrancy guard)
        self.late = []  # messages emitted re-entrantly while busy
        self.crit = 0  # main thread is writing frames: defer SIGINT
        self.pending_int = False
        self.executing = False
        self.gen = 0  # counts executions, so the SIGINT watchdog never re-sends into a later one
        self.sigr = -1  # signal wakeup pipe (read end, non-blocking), drained by _on_sigint
        self.sigw = -1  # ... and its write end, given to signal.set_wakeup_fd
        self.allow_stdin = True
        self.child = False  # we are a forked child: no frames, write to the fds directly
        self.rbuf = bytearray()  # request bytes not yet split into lines
        self.rmem = memoryview(bytearray(1 << 16))  # what each read of the FIFO fills
        self.wakeup_dirty = False  # someone called signal.set_wakeup_fd since we last looked
        self.ns = None  # the user's namespace
        self.cflags = 0  # __future__ flags accumulated over executions
        self.loop = None  # asyncio loop for top-level await
        self.result_figs = ()
        self.mpl_canvas = None  # our FigureCanvas class once matplotlib used the backend
        self.mpl_ours = False
        self.jedi = None  # None: not tried; False: unavailable
        self.done_sent = False
        self.stdout = None
        self.stderr = None
        self.stdin = None
        self.rundir = ""
        self.cell = None  # the `<cell-N>` name of the cell running now
        self.magics = None  # the IPython-syntax module (magics.py), loaded on first need
        self.shell = None  # what get_ipython() returns, once made
        self.pub = None  # the shell's own display publisher (a capture swaps in another)


S = _State()
# Buffered output: (kind, bytes) in write order. deque.append/popleft are atomic under the GIL,
# so writers take no lock; flushing (rare) is serialised by _lock.
_q = deque()
_qappend = _q.append
_lock = _thread.RLock()
_wake = _thread.allocate_lock()
_wake.acquire()


class StdinNotImplementedError(RuntimeError):
    """input() or getpass() while this execution does not accept input."""


# ---------------------------------------------------------------------------------------------
# Low-level writing: frames and sentinels


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _writev_all(fd, bufs):
    total = 0
    for b in bufs:
        total += len(b)
    n = os.writev(fd, bufs)
    if n != total:  # a partial write (signal); finish byte-exactly
        _write_all(fd, b"".join(bytes(b) for b in bufs)[n:])


def _host_gone(exc):
    # The host holds the read ends for our whole life; losing them means it is gone.
    os._exit(0 if isinstance(exc, BrokenPipeError) else 70)


def _sync_locked():
    S.sync += 1
    s = b"\x1b]5151;" + S.nonce + b";" + str(S.sync).encode() + b"\x07"
    for fd in (S.pty, S.err):
        try:
            _write_all(fd, s)
        except OSError:
            pass  # a hung-up terminal: nothing better to do
    return S.sync


def _frame(kind, sync, payload):
    try:
        _writev_all(S.evt, [b"%s %d %d\n" % (kind, sync, len(payload)), payload])
    except OSError as e:
        _host_gone(e)


def _flush_locked():
    """Write buffered output as frames (after one sentinel). Caller holds the lock."""
    count = len(_q)  # only what is there now: a busy writer thread cannot keep us here
    if not count or S.busy:
        return False
    S.total = 0
    S.busy = True
    try:
        n = _sync_locked()
        kind, parts, size = None, [], 0
        for _ in range(count):
            k, data = _q.popleft()
            if k != kind and parts:
                _frames(kind, n, parts, size)
                parts, size = [], 0
            kind = k
            parts.append(data)
            size += len(data)
        if parts:
            _frames(kind, n, parts, size)
    finally:
        S.busy = False
    return True


def _frames(kind, n, parts, size):
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if size <= _FRAME_MAX:
        _frame(kind, n, data)
    else:
        view = memoryview(data)
        for off in range(0, size, _FRAME_MAX):
            _frame(kind, n, view[off : off + _FRAME_MAX])


def _enter():
    if _thread.get_ident() == _MAIN:
        S.crit += 1
        return True
    return False


def _leave(main):
    if main:
        S.crit -= 1
        if S.pending_int and not S.crit:
            S.pending_int = False
            if S.executing:
                raise KeyboardInterrupt


def _flush():
    """Send buffered stdout/stderr now."""
    if S.child:
        return
    main = _enter()
    try:
        with _lock:
            _flush_locked()
            _drain_late()
    finally:
        _leave(main)


def _out(kind, data):
    """Buffer bytes the language wrote to stdout (b"o") or stderr (b"e")."""
    if S.child:
        try:
            _write_all(1 if kind == b"o" else 2, data)
        except OSError:
            pass
        return
    _q.append((kind, data))
    S.total += len(data)
    if S.total >= _FLUSH_AT:
        _flush()
    elif not S.armed:
        _arm()


def _arm():
    """Schedule a flush in a few ms."""
    main = _enter()
    try:
        with _lock:
            if not S.armed:
                S.armed = True
                if not S.flusher:
                    S.flusher = True
                    _start_flusher()
                _wake.release()
    finally:
        _leave(main)


def _start_flusher():
    _start_thread(_flusher_loop)


def _start_thread(fn):
    # The thread starts with every signal blocked (it inherits the mask): a SIGINT the kernel
    # delivers to it would not wake the main thread out of time.sleep() or a blocking read.
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    except (AttributeError, OSError, ValueError):
        old = None
    try:
        _thread.start_new_thread(fn, ())
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _flusher_loop():
    # Live output: whatever was written is sent within a few ms even if nothing else happens.
    while True:
        _wake.acquire()
        time.sleep(_FLUSH_DELAY)
        try:
            with _lock:
                S.armed = False
                _flush_locked()
                _drain_late()
        except BaseException:
            pass


def _make_codec():
    """JSON (compact, non-ASCII kept, NaN refused) to text and back.

    Uses the `_json` accelerator directly when it behaves as expected: `import json` costs
    ~10 ms at start-up, mostly for `re`. Falls back to `json` otherwise."""
    try:
        import _json

        class Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = float

        scan = _json.make_scanner(Ctx())

        def default(o):
            raise TypeError("%s is not JSON serializable" % type(o).__name__)

        def dumps(obj):
            enc = _json.make_encoder({}, default, _json.encode_basestring, None, ":", ",", False, False, False)
            return "".join(enc(obj, 0))

        def loads(text):
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            text = text.strip()
            try:
                obj, end = scan(text, 0)
            except StopIteration:
                raise ValueError("invalid JSON") from None
            if end != len(text):
                raise ValueError("extra data after JSON")
            return obj

        probe = {"a": [1, -2.5, "\u00e9\n\"", None, True, {}]}
        if loads(dumps(probe)) != probe or dumps(probe) != '{"a":[1,-2.5,"\u00e9\\n\\"",null,true,{}]}':
            raise ValueError("unexpected _json behaviour")
        return dumps, loads
    except Exception:
        import json

        def dumps(obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

        return dumps, json.loads


_json_dumps, _json_loads = _make_codec()


def _dumps(msg):
    try:
        text = _json_dumps(msg)
    except (TypeError, ValueError, RecursionError):
        text = _json_dumps(_jsonable(msg))
    return text.encode("utf-8", "replace")


def _jsonable(v, depth=0):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else None
    if depth > 64:
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, (bytes, bytearray, memoryview)):
        import base64

        return base64.b64encode(bytes(v)).decode("ascii")
    try:
        return str(v)
    except Exception:
        return None


def _emit(msg, sync=True):
    """Send one `m` frame, after any buffered output, behind a sentinel when `sync`."""
    if S.child:
        return
    payload = _dumps(msg)
    if len(payload) > _MSG_MAX:
        payload = _dumps(_too_large(msg, len(payload)))
    main = _enter()
    try:
        with _lock:
            if S.busy:  # re-entered from a signal handler while writing frames
                S.late.append((payload, sync))
                return
            flushed = _flush_locked()
            S.busy = True
            try:
                n = _sync_locked() if sync and not flushed else S.sync
                _frame(b"m", n, payload)
            finally:
                S.busy = False
            _drain_late()
    finally:
        _leave(main)


def _drain_late():
    while S.late and not S.busy:
        payload, sync = S.late.pop(0)
        _flush_locked()
        S.busy = True
        try:
            _frame(b"m", _sync_locked() if sync else S.sync, payload)
        finally:
            S.busy = False


def _too_large(msg, size):
    note = "[spindle: output of %.1f MB is too large to send]" % (size / 1e6)
    kind = msg.get("type")
    if kind in ("display", "result"):
        out = dict(msg)
        out["data"] = {"text/plain": note}
        out["metadata"] = {}
        return out
    if kind == "error":
        return {"type": "error", "ename": msg.get("ename", "Error"), "evalue": note, "traceback": [note]}
    return {"type": "error", "ename": "SpindleError", "evalue": note, "traceback": [note]}


# ---------------------------------------------------------------------------------------------
# sys.stdout / sys.stderr


class _BinaryWriter(io.BufferedIOBase):
    """`sys.stdout.buffer`: bytes go into the same ordered buffer as the text."""

    def __init__(self, kind, fd, name):
        self._kind = kind
        self._fd = fd
        self.name = name
        self.mode = "wb"

    def write(self, b):
        data = bytes(b)
        if data:
            _out(self._kind, data)
        return len(data)

    def writable(self):
        return True

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def flush(self):
        _flush()

    def close(self):
        pass  # closing would only break later output

    def detach(self):
        raise io.UnsupportedOperation("the Spindle stream cannot be detached")


class _TextWriter(io.TextIOBase):
    """A text file whose writes become `o`/`e` frames, batched."""

    encoding = "utf-8"
    errors = "surrogateescape"
    newlines = None
    line_buffering = False
    write_through = False

    def __init__(self, kind, fd, name):
        self._kind = kind
        self._fd = fd
        self.name = name
        self.mode = "w"
        self.buffer = _BinaryWriter(kind, fd, name)

    def write(self, s):
        # The hot path of every print(): _out() inlined, state read once.
        if type(s) is not str and not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if not s:
            return 0
        if len(s) > _FRAME_MAX and s.isascii():
            return self._write_ascii(s)
        try:
            data = s.encode()
        except UnicodeEncodeError:
            try:
                data = s.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                data = s.encode("utf-8", "backslashreplace")
        kind = self._kind
        if S.child:
            _out(kind, data)
            return len(s)
        _qappend((kind, data))
        S.total += len(data)
        if S.total >= _FLUSH_AT:
            _flush()
        elif not S.armed:
            _arm()
        return len(s)

    def _write_ascii(self, s):
        # A large ASCII string (isascii is O(1) on one) goes out a frame's worth at a time,
        # each slice through write() as any string of that size: its first bytes reach the
        # host before the rest is encoded, and each piece reuses the memory the last one freed,
        # where encoding it whole mapped every page of a fresh copy (20 MB: 20 ms, half of it
        # page faults). The bytes are the same.
        for off in range(0, len(s), _FRAME_MAX):
            self.write(s[off : off + _FRAME_MAX])
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def flush(self):
        _flush()

    def close(self):
        pass

    def reconfigure(self, **kwargs):
        pass  # always UTF-8, always batched

    def detach(self):
        raise io.UnsupportedOperation("the Spindle stream cannot be detached")

    def __repr__(self):
        return "<spindle stream %s>" % self.name


# ---------------------------------------------------------------------------------------------
# Signals and processes


def _on_sigint(signum, frame):
    if S.child:
        raise KeyboardInterrupt
    _drain_sig()  # tells the watchdog that this SIGINT reached us
    if not S.executing:
        return  # idle: an interrupt has nothing to stop
    if S.crit:
        S.pending_int = True  # raised once the frame being written is complete
        return
    raise KeyboardInterrupt


# SIGINT watchdog. CPython's C-level handler only marks the signal; the Python handler runs later,
# in the main thread, between bytecodes. When that C handler ran anywhere but inside the main
# thread's blocking call (on another thread: user and library threads do not block SIGINT; or on
# the main thread just before it entered time.sleep(), a lock or a read), nothing wakes the main
# thread and the interrupt waits until the call returns by itself: a lost Ctrl-C. The C handler
# also writes a byte to the wakeup fd. This thread sees it and, if _on_sigint has not drained
# the pipe soon after and an execution is still running, sends SIGINT to the main thread
# itself (pthread_kill), which interrupts the blocking call so that the handler runs.


def _start_sigwatch():
    try:
        r, w = os.pipe()
    except OSError:
        return
    try:
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (AttributeError, OSError, ValueError):
        os.close(r)
        os.close(w)
        return
    S.sigr, S.sigw = r, w
    real = signal.set_wakeup_fd

    def set_wakeup_fd(fd, /, **kw):
        # Noted, so that the next execution puts ours back (it costs two system calls to look).
        S.wakeup_dirty = True
        return real(fd, **kw)

    set_wakeup_fd.__doc__ = real.__doc__
    signal.set_wakeup_fd = set_wakeup_fd
    _start_thread(_sigwatch_loop)


def _claim_wakeup_fd():
    """Put our wakeup fd back if something reset it (an asyncio loop's close() sets -1); leave
    one that belongs to someone else (a running asyncio loop's signal handlers)."""
    if S.sigw < 0 or not S.wakeup_dirty:
        return
    try:
        old = signal.set_wakeup_fd(S.sigw, warn_on_full_buffer=False)
        if old != -1 and old != S.sigw:
            signal.set_wakeup_fd(old)
        S.wakeup_dirty = False
    except (OSError, ValueError):
        pass


def _drain_sig():
    if S.sigr < 0:
        return
    try:
        while os.read(S.sigr, 512):
            pass
    except OSError:
        pass  # BlockingIOError: empty


def _sig_waiting(timeout):
    import select

    return bool(select.select([S.sigr], [], [], timeout)[0])


def _sigwatch_loop():
    r = S.sigr
    while True:
        try:
            _sig_waiting(None)
            gen = S.gen
            delay = 0.02
            while True:
                time.sleep(delay)
                if not _sig_waiting(0):
                    break  # _on_sigint ran
                if not S.executing or S.gen != gen:
                    _drain_sig()  # arrived while idle or for an execution that has ended
                    break
                signal.pthread_kill(_MAIN, signal.SIGINT)
                delay = min(delay * 2, 0.5)  # main may be in C code that checks no signals
        except BaseException:
            if S.sigr != r:
                return  # closed after a fork
            time.sleep(0.1)


def _before_fork():
    try:
        _flush()
    except BaseException:
        pass


def _after_fork_child():
    # A forked child (multiprocessing, os.fork) must not write frames into our event stream:
    # its language output goes straight to the PTY and stderr, rich output is dropped.
    S.child = True
    if S.sigr >= 0:  # the watchdog thread did not survive the fork; its pipe must not be shared
        try:
            signal.set_wakeup_fd(-1)
        except (OSError, ValueError):
            pass
        for fd in (S.sigr, S.sigw):
            try:
                os.close(fd)
            except OSError:
                pass
        S.sigr = S.sigw = -1
    try:
        if sys.stdout is S.stdout:
            sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        if sys.stderr is S.stderr:
            sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    except Exception:
        pass


def _wrap_spawn(owner, name):
    orig = getattr(owner, name, None)
    if orig is None or getattr(orig, "_spindle", False):
        return

    def spawn(*args, **kwargs):
        _flush()  # what Python printed comes before what the child prints
        return orig(*args, **kwargs)

    spawn._spindle = True
    spawn.__name__ = getattr(orig, "__name__", name)
    spawn.__qualname__ = getattr(orig, "__qualname__", name)
    spawn.__doc__ = getattr(orig, "__doc__", None)
    spawn.__wrapped__ = orig
    setattr(owner, name, spawn)


def _patch_subprocess(mod):
    _wrap_spawn(mod.Popen, "_execute_child")


# ---------------------------------------------------------------------------------------------
# Post-import hooks: patch modules right after they are imported, without importing them first.


class _PostImportFinder:
    def __init__(self, hooks):
        self.hooks = hooks
        self.busy = set()

    def find_spec(self, fullname, path, target=None):
        hook = self.hooks.get(fullname)
        if hook is None or fullname in self.busy:
            return None
        self.busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self.busy.discard(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        orig = loader.exec_module

        def exec_module(module):
            orig(module)
            try:
                hook(module)
            except Exception as e:
                _warn("could not adapt %s for Spindle: %r" % (fullname, e))

        loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        pass


def _warn(text):
    try:
        _out(b"e", ("[spindle] %s\n" % text).encode("utf-8", "replace"))
    except Exception:
        pass


def _patch_getpass(mod):
    mod.getpass = _getpass


def _patch_matplotlib(mod):
    if S.mpl_ours:
        mod.rcParams["backend"] = _MPL_BACKEND


def _comms():
    """The comm registry (spindle_comm.py in the run directory), loaded on first need."""
    mod = sys.modules.get("_spindle_comm")
    if mod is None:
        import importlib.util

        path = os.path.join(os.environ.get("SPINDLE_RUNDIR", ""), "spindle_comm.py")
        spec = importlib.util.spec_from_file_location("_spindle_comm", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_spindle_comm"] = mod
        try:
            spec.loader.exec_module(mod)
            mod._bind(_G)
        except BaseException:
            del sys.modules["_spindle_comm"]
            raise
    return mod


def _patch_ipython_display(mod):
    # `from IPython.display import display, HTML, clear_output` then reaches Spindle.
    for name, fn in (
        ("display", display),
        ("publish_display_data", _publish_display_data),
        ("clear_output", _clear_output),
        ("update_display", _update_display),
    ):
        if hasattr(mod, name):
            setattr(mod, name, fn)


def _patch_getipython(mod):
    # IPython.get_ipython() gives the session's shell (made on first call), as in a kernel.
    mod.get_ipython = _get_ipython


_HOOKS = {
    "IPython.core.getipython": _patch_getipython,
    "subprocess": _patch_subprocess,
    "getpass": _patch_getpass,
    "matplotlib": _patch_matplotlib,
    "IPython.core.display_functions": _patch_ipython_display,
    "IPython.core.display": _patch_ipython_display,
    "IPython.display": _patch_ipython_display,
    "comm": lambda mod: _comms().hook_comm(mod),
    "tqdm.autonotebook": lambda mod: _comms().hook_tqdm_autonotebook(mod),
}


# ---------------------------------------------------------------------------------------------
# Rich output


def _b64(data):
    import base64

    return base64.b64encode(bytes(data)).decode("ascii")


def _encode_value(mime, value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        if mime in _BINARY:
            return _b64(value)
        return bytes(value).decode("utf-8", "replace")
    if mime == "application/json" or mime.endswith("+json"):
        if isinstance(value, str):
            try:
                return _json_loads(value)
            except ValueError:
                return value
        return value
    if isinstance(value, str):
        return value
    return str(value)


def _clean_bundle(data):
    out = {}
    for mime, value in dict(data).items():
        out[str(mime)] = _encode_value(str(mime), value)
    return out


def _safe_getattr(obj, name):
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _rich_method(obj, name):
    if isinstance(obj, type):
        return None  # a class's unbound _repr_*_ is not a representation of the class
    m = _safe_getattr(obj, name)
    return m if callable(m) else None


def _mpl_figure(obj):
    mod = sys.modules.get("matplotlib.figure")
    if mod is None:
        return None
    try:
        return obj if isinstance(obj, mod.Figure) else None
    except Exception:
        return None


def _figure_bundle(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return {"image/png": _b64(buf.getvalue()), "text/plain": repr(fig)}


def _format(obj, include=None, exclude=None):
    """The MIME bundle and metadata for `obj`, as Jupyter's display formatter would build them."""
    data = {}
    md = {}
    fig = _mpl_figure(obj)
    if fig is not None:
        data.update(_figure_bundle(fig))
    elif _safe_getattr(obj, "_ipython_canary_method_should_not_exist_") is None:
        m = _rich_method(obj, "_repr_mimebundle_")
        if m is not None:
            try:
                try:
                    r = m(include=include, exclude=exclude)
                except TypeError:
                    r = m()
                if isinstance(r, tuple) and len(r) == 2:
                    r, rmd = r
                    if isinstance(rmd, dict):
                        md.update(rmd)
                if isinstance(r, dict):
                    data.update(_clean_bundle(r))
            except Exception as e:
                _warn("%s._repr_mimebundle_ failed: %r" % (type(obj).__name__, e))
        for meth, mime in _REPRS:
            if mime in data or (include and mime not in include) or (exclude and mime in exclude):
                continue
            m = _rich_method(obj, meth)
            if m is None:
                continue
            try:
                r = m()
            except Exception as e:
                _warn("%s.%s failed: %r" % (type(obj).__name__, meth, e))
                continue
            if isinstance(r, tuple) and len(r) == 2:
                r, rmd = r
                if isinstance(rmd, dict) and rmd:
                    md[mime] = rmd
            if r is None:
                continue
            data[mime] = _encode_value(mime, r)
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data, md


def _new_display_id():
    return os.urandom(16).hex()


class DisplayHandle:
    """A display that can be updated later (what `display(..., display_id=True)` returns)."""

    def __init__(self, display_id=None):
        self.display_id = display_id or _new_display_id()

    def __repr__(self):
        return "<DisplayHandle display_id=%s>" % self.display_id

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        kwargs["update"] = True
        display(obj, display_id=self.display_id, **kwargs)


def display(
    *objs,
    include=None,
    exclude=None,
    metadata=None,
    transient=None,
    display_id=None,
    raw=False,
    clear=False,
    update=False,
    **kwargs
):
    """Show objects as rich output (HTML, images, ...), like IPython's display().

    display_id=True creates an id and returns a DisplayHandle whose update() replaces the
    output; update=True replaces the output with that display_id."""
    if clear:
        _clear_output(wait=True)
    if display_id is True:
        display_id = _new_display_id()
    if display_id is None and transient and transient.get("display_id"):
        display_id = transient["display_id"]
    if display_id is not None and not isinstance(display_id, str):
        display_id = str(display_id)
    for obj in objs:
        if raw:
            data, md = _clean_bundle(obj), {}
        else:
            data, md = _format(obj, include, exclude)
        if metadata:
            md = dict(md)
            md.update(metadata)
        _show(data, md, display_id, update)
    if display_id is not None:
        return DisplayHandle(display_id)
    return None


def display_file(path, mime=None):
    """Announce a file the code produced (a CSV, a video, ...) as output."""
    p = os.path.abspath(os.fspath(path))
    if not os.path.exists(p):
        raise FileNotFoundError(2, "display_file: no such file", p)
    if mime is None:
        import mimetypes

        mime = mimetypes.guess_type(p)[0] or "application/octet-stream"
    _emit({"type": "file", "path": p, "mime": str(mime)})


def _show(data, md, display_id, update):
    pub = getattr(S.shell, "display_pub", None)
    if pub is not None and pub is not S.pub:  # a capture (%%capture, capture_output) is on
        pub.publish(data, md, transient={"display_id": display_id} if display_id else {}, update=bool(update))
        return
    _emit({"type": "display", "data": data, "metadata": md, "display_id": display_id, "update": bool(update)})


def _publish_display_data(data, metadata=None, source=None, *, transient=None, **kwargs):
    display_id = (transient or {}).get("display_id")
    _emit(
        {
            "type": "display",
            "data": _clean_bundle(data),
            "metadata": dict(metadata or {}),
            "display_id": display_id,
            "update": bool(kwargs.get("update", False)),
        }
    )


def _update_display(obj, *, display_id, **kwargs):
    kwargs["update"] = True
    display(obj, display_id=display_id, **kwargs)


def _clear_output(wait=False):
    _emit({"type": "clear_output", "wait": bool(wait)})


# ---------------------------------------------------------------------------------------------
# matplotlib: the `spindle_inline` backend module, filled in when matplotlib first asks for it.


def _make_backend_module():
    mod = type(sys)("spindle_inline")
    mod.__doc__ = "Spindle's matplotlib backend: show() and finished executions display figures."

    def __getattr__(name):
        if name.startswith("__") or mod.__dict__.get("_populated"):
            raise AttributeError(name)
        _populate_backend(mod)
        try:
            return mod.__dict__[name]
        except KeyError:
            raise AttributeError(name) from None

    mod.__getattr__ = __getattr__
    return mod


def _populate_backend(mod):
    from matplotlib.backend_bases import FigureCanvasBase, FigureManagerBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    class FigureManager(FigureManagerBase):
        def show(self):
            _display_figure(self.canvas.figure)

    class FigureCanvas(FigureCanvasAgg):
        manager_class = FigureManager

    def show(*args, **kwargs):
        _show_open_figures()

    def draw_if_interactive(*args, **kwargs):
        pass

    mod.FigureCanvas = FigureCanvas
    mod.FigureManager = FigureManager
    mod.show = show
    mod.draw_if_interactive = draw_if_interactive
    if not hasattr(FigureCanvasBase, "new_manager"):  # matplotlib < 3.6

        def new_figure_manager_given_figure(num, figure):
            return FigureManager(FigureCanvas(figure), num)

        def new_figure_manager(num, *args, **kwargs):
            from matplotlib.figure import Figure

            cls = kwargs.pop("FigureClass", Figure)
            return new_figure_manager_given_figure(num, cls(*args, **kwargs))

        mod.new_figure_manager = new_figure_manager
        mod.new_figure_manager_given_figure = new_figure_manager_given_figure
    mod._populated = True
    S.mpl_canvas = FigureCanvas


def _display_figure(fig):
    _emit({"type": "display", "data": _figure_bundle(fig), "metadata": {}, "display_id": None, "update": False})


def _show_open_figures(skip=()):
    """Display every open figure of our backend, then close them (as the inline backend does)."""
    if S.mpl_canvas is None or "matplotlib.pyplot" not in sys.modules:
        return
    from matplotlib._pylab_helpers import Gcf
    import matplotlib.pyplot as plt

    figs = [
        m.canvas.figure for m in Gcf.get_all_fig_managers() if isinstance(m.canvas, S.mpl_canvas)
    ]
    try:
        for fig in figs:
            if id(fig) not in skip:
                _display_figure(fig)
    finally:
        for fig in figs:
            plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Input


def _ask(prompt, password, what):
    if not S.executing or not S.allow_stdin:
        raise StdinNotImplementedError(
            "%s was called, but this execution does not accept input (allow_stdin is false)" % what
        )
    if _thread.get_ident() != _MAIN:
        raise StdinNotImplementedError("%s can only ask for input from the main thread" % what)
    _emit({"type": "input_request", "prompt": prompt, "password": bool(password)})
    while True:
        req = _read_request()
        if isinstance(req, dict) and req.get("op") == "input_reply":
            value = req.get("value")
            return "" if value is None else str(value)
        # Anything else is out of turn (the host sends nothing else while input is pending).


def _input(prompt=""):
    return _ask(str(prompt), False, "input()")


def _getpass(prompt="Password: ", stream=None):
    return _ask(str(prompt), True, "getpass()")


# ---------------------------------------------------------------------------------------------
# Requests


def _read_request():
    """The next request (a parsed JSON line) from the request FIFO; blocks."""
    while True:
        buf = S.rbuf
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            if not line.strip():
                continue
            try:
                return _json_loads(line)
            except ValueError as e:
                _report_internal(e, "unreadable request")
                continue
        # Into a buffer of our own: a fresh 1 MiB bytes object per read cost three system calls.
        n = os.readv(S.req, [S.rmem])
        if not n:
            os._exit(0)  # nobody can write requests any more
        buf += S.rmem[:n]


def _done(rid, status, exit_status, user_expressions=None):
    S.executing = False
    _flush()
    msg = {"type": "done", "id": rid, "status": status, "exit_status": exit_status}
    if user_expressions is not None:
        msg["user_expressions"] = user_expressions
    _emit(msg)
    S.done_sent = True


def _handle(req):
    S.done_sent = False
    rid = req.get("id") if isinstance(req, dict) else None
    try:
        if not isinstance(req, dict):
            raise ValueError("a request must be a JSON object, got %r" % (req,))
        op = req.get("op")
        if op in ("execute", "comm"):
            S.parent = req.get("parent")  # the frontend's request (a Jupyter header): get_parent()
        if op == "execute":
            _execute(req)
        elif op in ("comm", "comm_info"):
            _comms().handle(op, req)
        elif op in ("complete", "inspect", "is_complete"):
            _query(op, req)
        elif op == "input_reply":
            pass  # a reply that arrived after its input() was interrupted
        else:
            raise ValueError("unknown request op %r" % (op,))
    except BaseException as e:
        S.executing = False
        try:
            if isinstance(e, KeyboardInterrupt):
                _report_exception(e)
                status = "interrupted"
            else:
                _report_internal(e, "request failed")
                status = "error"
            if rid is not None and not S.done_sent:
                _done(rid, status, 1)
        except BaseException:
            pass


def _main():
    while True:
        try:
            req = _read_request()
        except KeyboardInterrupt:
            continue
        except OSError as e:
            _host_gone(e)
        _handle(req)


# ---------------------------------------------------------------------------------------------
# Errors


def _strip_tb(tb):
    keep = []
    while tb is not None:
        g = tb.tb_frame.f_globals
        if g is not _G and not g.get("__spindle_hidden__"):
            keep.append(tb)
        tb = tb.tb_next
    new = None
    for t in reversed(keep):
        new = type(t)(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _clean_exc(e, seen):
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        try:
            e.__traceback__ = _strip_tb(e.__traceback__)
        except Exception:
            pass
        if e.__cause__ is not None:
            _clean_exc(e.__cause__, seen)
        e = e.__context__


def _exc_fields(e, strip=True):
    import traceback

    if strip:
        _clean_exc(e, set())
    try:
        evalue = str(e)
    except Exception:
        evalue = "<unprintable %s>" % type(e).__name__
    try:
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception:
        text = "%s: %s\n" % (type(e).__name__, evalue)
    return type(e).__name__, evalue, text.rstrip("\n").split("\n")


def _report_exception(e):
    ename, evalue, tb = _exc_fields(e)
    if ename == "UsageError":  # a magic used wrongly: the message says it all (as IPython)
        tb = ["UsageError: %s" % evalue]
    sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
    _emit({"type": "error", "ename": ename, "evalue": evalue, "traceback": tb})


def _report_internal(e, what):
    try:
        ename, evalue, tb = _exc_fields(e, strip=False)
        _emit(
            {
                "type": "error",
                "ename": ename,
                "evalue": "spindle bootstrap: %s: %s" % (what, evalue),
                "traceback": tb,
            }
        )
    except BaseException:
        pass


# ---------------------------------------------------------------------------------------------
# Execution


def _register_source(src, count):
    """Put the cell into linecache under `<cell-N>` so tracebacks and inspect show its lines."""
    import linecache

    lines = [line + "\n" for line in src.split("\n")]
    if src.endswith("\n"):
        lines.pop()
    name = "<cell-%s>" % count
    k = 1
    while name in linecache.cache and linecache.cache[name][2] != lines:
        k += 1
        name = "<cell-%s-%d>" % (count, k)
    linecache.cache[name] = (len(src), None, lines, name)
    return name


def _suppressed(src, node):
    """Whether the expression statement `node` is followed by `;` (IPython: no result)."""
    lines = src.split("\n")
    try:
        line = lines[node.end_lineno - 1]
        rest = line.encode("utf-8")[node.end_col_offset :].decode("utf-8", "replace")
    except (IndexError, AttributeError, TypeError):
        return False
    rest = rest + "\n" + "\n".join(lines[node.end_lineno :])
    return rest.lstrip().startswith(";")


def _compile(tree, name, mode):
    import ast
    import __future__

    code = compile(tree, name, mode, S.cflags | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, True)
    for feature in __future__.all_feature_names:
        flag = getattr(__future__, feature).compiler_flag
        if code.co_flags & flag:
            S.cflags |= flag
    return code


def _run_code(code):
    value = eval(code, S.ns)
    if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
        import asyncio

        if S.loop is None or S.loop.is_closed():
            S.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(S.loop)
        value = S.loop.run_until_complete(value)
    return value


def _tracer(filename):
    def local(frame, event, arg):
        if event == "line":
            try:
                _emit({"type": "active_line", "line": frame.f_lineno}, sync=False)
            except KeyboardInterrupt:
                raise
            except Exception:
                pass
        return local

    def on_call(frame, event, arg):
        return local if frame.f_code.co_filename == filename else None

    return on_call


def _run_cell(src, count, silent, active_lines):
    import ast

    name = _register_source(src, count)
    S.cell = name
    src = _ipython_syntax(src)
    tree = compile(src, name, "exec", S.cflags | ast.PyCF_ONLY_AST, True)
    expr = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not silent:
        if not _suppressed(src, tree.body[-1]):
            expr = ast.Expression(tree.body.pop().value)
    body = _compile(tree, name, "exec") if tree.body else None
    last = _compile(expr, name, "eval") if expr is not None else None
    value = None
    prev = sys.gettrace()
    if active_lines:
        sys.settrace(_tracer(name))
    try:
        if body is not None:
            _run_code(body)
        if last is not None:
            value = _run_code(last)
    finally:
        if active_lines:
            sys.settrace(prev)
    if value is not None:
        builtins._ = value
        data, md = _format(value)
        if _mpl_figure(value) is not None:
            S.result_figs = (id(value),)
        _emit({"type": "result", "data": data, "metadata": md})


# ---------------------------------------------------------------------------------------------
# IPython syntax (magics, !cmd, obj?) and get_ipython(): magics.py, loaded on first need


def _may_be_ipython(src):
    """A cheap look for IPython syntax: %, ! or ? at a line's start, ? at its end, `= !`."""
    if "%" not in src and "!" not in src and "?" not in src:
        return False
    for line in src.split("\n"):
        s = line.strip()
        if not s:
            continue
        if s[0] in "%!?" or s[-1] == "?":
            return True
        i = s.find("=")
        if i > 0 and s[i + 1 : i + 2] != "=" and s[i + 1 :].lstrip()[:1] in ("!", "%"):
            return True
    return False


def _ipython_syntax(src):
    """The cell as Python: IPython syntax transformed (line numbers kept), Python unchanged."""
    if not _may_be_ipython(src):
        return src
    import ast

    try:
        compile(src, "<check>", "exec", S.cflags | ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, True)
        return src  # valid Python: nothing for IPython to transform
    except (SyntaxError, ValueError):
        pass
    return _magics().transform(src)


def _load_sidecar(name):
    """A module the kernel wrote beside the FIFOs (`spindle_<name>.py` in the run directory)."""
    import importlib.util

    path = os.path.join(S.rundir, "spindle_%s.py" % name)
    spec = importlib.util.spec_from_file_location("_spindle_" + name, path)
    if spec is None or not os.path.exists(path):
        raise ImportError("Spindle's %s module is missing from the run directory (%s)" % (name, path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _magics():
    if S.magics is None:
        mod = _load_sidecar("magics")
        mod.setup(_G)
        S.magics = mod
    return S.magics


def _get_ipython():
    """The session's shell: IPython's (adapted to Spindle) when IPython is importable, else a
    small one of Spindle's with run_line_magic, run_cell_magic, system, user_ns, display_pub
    and kernel."""
    return _magics().shell()


def _user_expressions(exprs):
    out = {}
    if not isinstance(exprs, dict):
        return out
    for key, expr in exprs.items():
        try:
            value = eval(compile(str(expr), "<user-expression>", "eval"), S.ns)
            data, md = _format(value)
            out[str(key)] = {"status": "ok", "data": data, "metadata": md}
        except Exception as e:
            ename, evalue, tb = _exc_fields(e)
            out[str(key)] = {"status": "error", "ename": ename, "evalue": evalue, "traceback": tb}
    return out


def _execute(req):
    rid = req.get("id", "")
    code = req.get("code") or ""
    count = req.get("execution_count") or 0
    S.allow_stdin = bool(req.get("allow_stdin", True))
    S.result_figs = ()
    status, exit_status, err = "ok", 0, None
    # Nothing from an earlier request may leak into this one: the main thread is outside every
    # frame-writing section here, and a SIGINT that arrived while idle is forgotten.
    S.crit = 0
    S.pending_int = False
    S.gen += 1
    _claim_wakeup_fd()
    _drain_sig()
    S.executing = True
    try:
        try:
            _run_cell(str(code), count, bool(req.get("silent")), bool(req.get("active_lines")))
        except BaseException as e:
            err = e
        try:
            _show_open_figures(S.result_figs)
        except BaseException as e:
            if err is None:
                err = e
    except BaseException as e:  # an interrupt between the two steps above
        err = err or e
    S.executing = False
    if sys.stdin is S.stdin and S.stdin is not None and S.stdin.closed:
        _fresh_stdin()  # exit() or quit() closed it; the process lives on
    if isinstance(err, SystemExit):
        code = err.code
        if code is None or code is False or code == 0:
            err = None
        else:
            status = "error"
            exit_status = code if isinstance(code, int) and not isinstance(code, bool) else 1
    elif isinstance(err, KeyboardInterrupt):
        status, exit_status = "interrupted", 1
    elif err is not None:
        status, exit_status = "error", 1
    if err is not None:
        _report_exception(err)
    uexpr = {}
    if status == "ok" and req.get("user_expressions"):
        uexpr = _user_expressions(req.get("user_expressions"))
    _done(rid, status, exit_status, uexpr)


# ---------------------------------------------------------------------------------------------
# Queries: complete, inspect, is_complete


def _query(op, req):
    rid = req.get("id", "")
    code = req.get("code") or ""
    if not isinstance(code, str):
        code = str(code)
    try:
        pos = int(req.get("cursor_pos", len(code)))
    except (TypeError, ValueError):
        pos = len(code)
    pos = max(0, min(pos, len(code)))
    status = "ok"
    try:
        if op == "complete":
            content = _complete(code, pos)
        elif op == "inspect":
            content = _inspect(code, pos, int(req.get("detail_level") or 0))
        else:
            content = _is_complete(code)
    except Exception as e:
        _report_internal(e, op)
        status = "error"
        content = {
            "complete": {"matches": [], "cursor_start": pos, "cursor_end": pos, "metadata": {}},
            "inspect": {"found": False, "data": {}, "metadata": {}},
            "is_complete": {"status": "unknown"},
        }[op]
    _emit({"type": "reply", "id": rid, "content": content}, sync=False)
    _done(rid, status, 0 if status == "ok" else 1)


def _complete(code, pos):
    before = code[:pos]
    if S.jedi is None:
        try:
            import jedi

            S.jedi = jedi
        except Exception:
            S.jedi = False
    if S.jedi:
        try:
            line = before.count("\n") + 1
            col = len(before) - (before.rfind("\n") + 1)
            comps = S.jedi.Interpreter(code, [S.ns]).complete(line, col)
            matches, start = [], pos
            for c in comps:
                if c.complete is None:
                    continue
                if not matches:
                    start = pos - (len(c.name) - len(c.complete))
                matches.append(c.name_with_symbols)
            return {"matches": matches, "cursor_start": start, "cursor_end": pos, "metadata": {}}
        except Exception:
            pass  # fall back to rlcompleter
    return _complete_fallback(before, pos)


def _complete_fallback(before, pos):
    import re

    line = before[before.rfind("\n") + 1 :]
    token = re.search(r"[\w.]*$", line).group()
    matches = []
    m = re.match(r"\s*(?:import\s+|from\s+)([\w.]*)$", line)
    if m:
        token = m.group(1)
        if "." not in token:
            import pkgutil

            names = set(sys.builtin_module_names)
            names.update(mod.name for mod in pkgutil.iter_modules())
            matches = sorted(n for n in names if n.startswith(token))
    elif token:
        import rlcompleter

        comp = rlcompleter.Completer(S.ns)
        for i in range(2000):
            try:
                r = comp.complete(token, i)
            except Exception:
                break
            if r is None:
                break
            r = r.rstrip("( ")
            if r not in matches:
                matches.append(r)
    return {"matches": matches, "cursor_start": pos - len(token), "cursor_end": pos, "metadata": {}}


def _name_at(code, pos):
    import re

    left = re.search(r"[\w.]*$", code[:pos]).group()
    right = re.match(r"\w*", code[pos:]).group()
    names = []
    name = (left + right).strip(".")
    if name and not name[0].isdigit():
        names.append(name)
    # Inside a call's parentheses: the callee.
    depth = 0
    for i in range(pos - 1, -1, -1):
        ch = code[i]
        if ch in ")]}":
            depth += 1
        elif ch in "([{":
            if depth == 0:
                if ch == "(":
                    callee = re.search(r"[\w.]*$", code[:i]).group().strip(".")
                    if callee and not callee[0].isdigit():
                        names.append(callee)
                break
            depth -= 1
    return names


def _resolve(name):
    parts = name.split(".")
    if parts[0] in S.ns:
        obj = S.ns[parts[0]]
    elif hasattr(builtins, parts[0]):
        obj = getattr(builtins, parts[0])
    else:
        raise LookupError(name)
    for p in parts[1:]:
        obj = getattr(obj, p)
    return obj


def _inspect(code, pos, level):
    import inspect

    for name in _name_at(code, pos):
        try:
            obj = _resolve(name)
        except Exception:
            continue
        out = []
        sig = None
        if callable(obj):
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                pass
        if sig is not None:
            out.append("Signature: %s%s" % (name, sig))
        else:
            try:
                form = repr(obj)
            except Exception:
                form = "<unprintable>"
            if len(form) > 200:
                form = form[:200] + "..."
            if not callable(obj):
                out.append("String form: %s" % form)
        out.append("Type:      %s" % type(obj).__name__)
        try:
            doc = inspect.getdoc(obj)
        except Exception:
            doc = None
        out.append("Docstring:\n%s" % doc if doc else "Docstring: <no docstring>")
        if level >= 1:
            try:
                out.append("Source:\n%s" % inspect.getsource(obj).rstrip("\n"))
            except Exception:
                pass
        return {"found": True, "data": {"text/plain": "\n".join(out)}, "metadata": {}}
    return {"found": False, "data": {}, "metadata": {}}


def _is_complete(code):
    if not code.strip():
        return {"status": "complete"}
    import codeop
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compiled = codeop.compile_command(code, "<input>", "exec")
        except (SyntaxError, OverflowError, ValueError, MemoryError):
            return {"status": "invalid"}
    body = code[:-1] if code.endswith("\n") else code
    last = body.split("\n")[-1]
    if compiled is None:
        return {"status": "incomplete", "indent": _next_indent(body)}
    if "\n" in body and last.strip() and last[:1] in " \t":
        # A block is open until a blank line ends it, as in the REPL.
        return {"status": "incomplete", "indent": _next_indent(body)}
    return {"status": "complete"}


def _next_indent(body):
    lines = [line for line in body.split("\n") if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    indent = last[: len(last) - len(last.lstrip())]
    stripped = last.split("#", 1)[0].rstrip()
    if stripped.endswith(":"):
        return indent + "    "
    word = stripped.split(None, 1)[0] if stripped.split() else ""
    if word in ("return", "pass", "break", "continue", "raise"):
        return indent[:-4] if indent.endswith("    ") else ""
    return indent


# ---------------------------------------------------------------------------------------------
# Start-up


def _fresh_stdin():
    # `exit()` closes sys.stdin; that must not close fd 0, which subprocesses still need.
    try:
        S.stdin = sys.stdin = open(0, "r", encoding="utf-8", errors="surrogateescape", closefd=False)
    except OSError:
        pass


def _start():
    env = os.environ
    try:
        evt, req = env["SPINDLE_EVT"], env["SPINDLE_REQ"]
    except KeyError:
        sys.stderr.write("spindle: SPINDLE_EVT and SPINDLE_REQ must be set; this is Spindle's bootstrap\n")
        os._exit(2)
    S.nonce = env.get("SPINDLE_NONCE", "").encode()
    S.rundir = env.get("SPINDLE_RUNDIR", "")
    S.pty = os.dup(1)
    S.err = os.dup(2)
    # Read-write: the host opens its writer only after `ready`, and fails if no reader exists.
    S.req = os.open(req, os.O_RDWR | os.O_CLOEXEC)
    S.evt = os.open(evt, os.O_WRONLY | os.O_CLOEXEC)

    # MPLBACKEND=module://spindle_inline only exists in this process: keep it out of the
    # environment of subprocesses (another Python would fail to import it) and hand it to
    # matplotlib when matplotlib is imported.
    if env.get("MPLBACKEND") == _MPL_BACKEND:
        S.mpl_ours = True
        del env["MPLBACKEND"]
    sys.modules["spindle_inline"] = _make_backend_module()

    S.stdout = _TextWriter(b"o", 1, "<stdout>")
    S.stderr = _TextWriter(b"e", 2, "<stderr>")
    sys.stdout = S.stdout
    sys.stderr = S.stderr
    _fresh_stdin()
    sys.argv = [""]

    me = sys.modules["__main__"]
    sys.modules["_spindle"] = me
    user = type(sys)("__main__")
    user.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = user
    S.ns = user.__dict__

    builtins.input = _input
    builtins.display = display
    builtins.display_file = display_file
    builtins.get_ipython = _get_ipython

    signal.signal(signal.SIGINT, _on_sigint)
    _start_sigwatch()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)
    # os._exit too: what was printed just before it must not be lost in our buffer.
    for name in ("system", "posix_spawn", "posix_spawnp", "execv", "execve", "_exit"):
        _wrap_spawn(os, name)
    finder = _PostImportFinder(_HOOKS)
    sys.meta_path.insert(0, finder)
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            try:
                hook(sys.modules[name])
            except Exception:
                pass

    _emit(
        {
            "type": "ready",
            "language_version": "%d.%d.%d" % sys.version_info[:3],
            "pid": os.getpid(),
        },
        sync=False,
    )


_start()
del _start
_main()
