# IPython syntax for Spindle's Python sessions: line and cell magics, !cmd, x = !cmd, obj? and
# get_ipython(). The kernel writes this file into the session's run directory; the bootstrap
# loads it the first time a cell needs it (or get_ipython() is called), so a session that never
# uses IPython syntax never pays for it.
#
# When IPython is importable (and SPINDLE_IPYTHON is not 0), an InteractiveShell provides the
# input transformers and the magics, while Spindle keeps execution, display and output capture:
# the transformed source runs through the bootstrap's exec path, display goes to Spindle's
# display, the pager to a `page` display. Otherwise this module understands a common subset
# itself (see LINE and CELL below); anything else is a UsageError that names the magic.

import builtins
import os
import sys
import time

__spindle_hidden__ = True  # frames of this module are left out of the user's tracebacks
B = None  # the bootstrap's globals, set by setup()
_state = {"shell": None, "ipython": None}

HELP = (
    "Spindle's Python session without IPython understands %cd, %conda, %env, %matplotlib, "
    "%pip, %pwd, %time, %timeit, %who, %whos, %%bash, %%capture, %%html, %%markdown, %%sh, "
    "%%time, %%timeit, %%writefile, !cmd and obj?; install IPython in the session's "
    "interpreter (pip install ipython) for the others"
)


class UsageError(Exception):
    """A magic was used wrongly (unknown, or bad arguments); shown without a traceback."""


def setup(bootstrap_globals):
    global B
    B = bootstrap_globals


def _ipython_wanted():
    if _state["ipython"] is None:
        ok = os.environ.get("SPINDLE_IPYTHON", "1").strip().lower() not in ("0", "no", "false", "off")
        if ok:
            try:
                import importlib.util

                ok = importlib.util.find_spec("IPython") is not None
            except Exception:
                ok = False
        _state["ipython"] = ok
    return _state["ipython"]


def shell():
    """The session's shell: IPython's InteractiveShell (adapted) when importable, else ours."""
    sh = _state["shell"]
    if sh is None:
        if _state.get("making"):  # IPython asked for its shell while we make it
            ipy = sys.modules.get("IPython.core.interactiveshell")
            if ipy is not None and ipy.InteractiveShell.initialized():
                return ipy.InteractiveShell.instance()
            return None
        _state["making"] = True
        try:
            sh = _make_shell()
        finally:
            _state["making"] = False
        _state["shell"] = sh
        B["S"].shell = sh
    return sh


def _make_shell():
    if _ipython_wanted():
        try:
            return _make_ipython_shell()
        except Exception as e:
            B["_warn"]("IPython could not be set up (%r); using Spindle's own magics" % (e,))
            _state["ipython"] = False
    return SpindleZMQShell()


def transform(src):
    """Python source for a cell written with IPython syntax (same number of lines)."""
    sh = shell()
    if _state["ipython"]:
        try:
            return sh.transform_cell(src)
        except SyntaxError:
            return src  # compiling it reports the error on the user's line
    return _transform(src, sh)


# ---------------------------------------------------------------------------------------------
# What both shells share: the terminal, the pager, nested cells, matplotlib


def _page(data, start=0, *args, **kwargs):
    if not isinstance(data, dict):
        data = {"text/plain": str(data)}
    B["_emit"](
        {
            "type": "display",
            "data": B["_clean_bundle"](data),
            "metadata": {},
            "display_id": None,
            "update": False,
            "page": True,
        }
    )


def _system(sh, cmd):
    """!cmd: through the shell, stderr with stdout (as ipykernel).

    The command runs on the session's terminal, so its prompts become input requests. While
    something has replaced sys.stdout (%%capture, capture_output, redirect_stdout) its output
    is piped into that instead, as ipykernel's pexpect-driven system() does."""
    import subprocess

    if cmd.rstrip().endswith("&"):
        raise OSError("Background processes not supported.")
    B["_flush"]()
    if sys.stdout is not B["S"].stdout:
        ec = _system_piped(cmd, sys.stdout)
    else:
        ec = subprocess.call(cmd, shell=True, stderr=subprocess.STDOUT, executable="/bin/sh")
    if ec < 0:
        ec = -ec + 128
    sh.user_ns["_exit_code"] = ec if ec <= 128 else -(ec - 128)


def _system_piped(cmd, out):
    """Run cmd with its output (stderr too) written to `out` as it arrives; returns the status."""
    import codecs
    import subprocess

    p = subprocess.Popen(
        cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, executable="/bin/sh"
    )
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while True:
            b = p.stdout.read1(65536)
            if not b:
                break
            out.write(dec.decode(b))
        out.write(dec.decode(b"", True))
    except BaseException:
        p.kill()
        raise
    finally:
        p.stdout.close()
        p.wait()
    return p.returncode


def _getoutput(cmd):
    import subprocess

    if cmd.rstrip().endswith("&"):
        raise OSError("Background processes not supported.")
    B["_flush"]()
    out = subprocess.run(
        cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        executable="/bin/sh",
    ).stdout
    return out.decode("utf-8", "replace")


def _origin(sh, cell):
    """(file name, line offset) for a cell magic's body: the user's cell when it is that body."""
    o = getattr(sh, "_spindle_origin", None)
    if o is not None and o[0] == cell:
        return o[1], o[2]
    return "<cell-magic>", 0


def _parse(src, name, offset):
    import ast

    S = B["S"]
    return compile("\n" * offset + src, name, "exec", S.cflags | ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, True)


def _split_last(tree):
    """(body tree, last-expression tree or None)."""
    import ast

    expr = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expr = ast.Expression(tree.body.pop().value)
    return tree, expr


def _run_nested(sh, src, name, offset, local_ns=None):
    """Run `src` in the user's namespace as part of the current cell; return the last value."""
    tree, expr = _split_last(_parse(src, name, offset))
    compile_ = B["_compile"]
    ns = sh.user_ns
    if tree.body:
        code = compile_(tree, name, "exec")
        if local_ns is None:
            B["_run_code"](code)
        else:
            exec(code, ns, local_ns)
    if expr is not None:
        code = compile_(expr, name, "eval")
        return B["_run_code"](code) if local_ns is None else eval(code, ns, local_ns)
    return None


def _caller_locals(depth):
    try:
        f = sys._getframe(depth + 1)
    except ValueError:
        return None
    if f.f_globals is B["S"].ns and f.f_locals is f.f_globals:
        return None
    return f.f_locals


def _use_inline_backend():
    """%matplotlib inline: Spindle's own inline backend (figures shown after each cell)."""
    S = B["S"]
    S.mpl_ours = True
    try:
        import matplotlib
    except ImportError:
        raise UsageError("%matplotlib: matplotlib is not installed in this interpreter") from None
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].switch_backend(B["_MPL_BACKEND"])
    else:
        matplotlib.rcParams["backend"] = B["_MPL_BACKEND"]
    matplotlib.interactive(True)
    return B["_MPL_BACKEND"]


class SpindleKernel:
    """What `get_ipython().kernel` offers: enough for libraries to tell they are in a kernel."""

    implementation = "spindle"
    language = "python"

    def __init__(self, shell):
        self.shell = shell
        self.session = None

    def __repr__(self):
        return "<spindle kernel>"


# ---------------------------------------------------------------------------------------------
# With IPython: an InteractiveShell with Spindle in charge of execution and output


def _make_ipython_shell():
    from traitlets import Type
    from traitlets.config import Config
    from IPython.core import page as ipage
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class SpindleDisplayPublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            B["_publish_display_data"](data, metadata, transient=transient, update=update)

        def clear_output(self, wait=False):
            B["_clear_output"](wait)

    class IPythonZMQShell(InteractiveShell):
        """IPython's shell inside a Spindle session. The name says what libraries such as pandas
        look for to tell that a notebook frontend renders the output."""

        display_pub_class = Type(SpindleDisplayPublisher)

        def init_virtualenv(self):
            pass  # the session's interpreter is the user's choice

        def init_hooks(self):
            super().init_hooks()
            self.set_hook("show_in_pager", ipage.as_hook(_page), 99)

        def enable_matplotlib(self, gui=None):
            if gui in (None, "inline", "auto"):
                return "inline", _use_inline_backend()
            return super().enable_matplotlib(gui)

        def system(self, cmd):
            _system(self, self.var_expand(cmd, depth=1))

        def getoutput(self, cmd, split=True, depth=0):
            from IPython.utils.text import LSString, SList

            out = _getoutput(self.var_expand(cmd, depth=depth + 1))
            return SList(out.splitlines()) if split else LSString(out)

        def run_cell(self, raw_cell, store_history=False, silent=False, shell_futures=True, cell_id=None):
            # A nested cell (%%capture runs its body this way): Spindle's exec path, and the
            # value of its last expression through sys.displayhook, which a capture replaces.
            from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult

            name, offset = _origin(self, raw_cell)
            src = self.transform_cell(raw_cell)
            result = ExecutionResult(ExecutionInfo(raw_cell, store_history, silent, shell_futures, cell_id))
            value = _run_nested(self, src, name, offset)
            if value is not None and not silent:
                _display_value(value)
            result.result = value
            return result

        def showtraceback(self, exc_tuple=None, filename=None, tb_offset=None, exception_only=False, running_compiled_code=False):
            e = (exc_tuple or sys.exc_info())[1]
            if e is not None:
                B["_report_exception"](e)

        def showsyntaxerror(self, filename=None, running_compiled_code=False):
            self.showtraceback()

    IPythonZMQShell.__qualname__ = IPythonZMQShell.__name__
    c = Config()
    c.HistoryManager.enabled = False
    c.HistoryManager.hist_file = ":memory:"
    c.InteractiveShell.colors = "nocolor"
    c.IPKernelApp = Config()  # tqdm and plotly look for it to tell they are in a kernel
    ns = B["S"].ns
    keep = {k: ns[k] for k in ("exit", "quit", "open") if k in ns}
    sh = IPythonZMQShell.instance(config=c, user_module=sys.modules["__main__"])
    for k in ("exit", "quit", "open"):  # Spindle's own, whether or not a magic was used
        if k in keep:
            ns[k] = keep[k]
        else:
            ns.pop(k, None)
    sh.kernel = SpindleKernel(sh)
    builtins.display = B["display"]
    orig = sh.transform_cell

    def transform_cell(raw_cell):
        _note_cell_magic(sh, raw_cell)
        return orig(raw_cell)

    sh.transform_cell = transform_cell
    return sh


def _note_cell_magic(sh, src):
    """Remember where a cell magic's body starts in the user's cell, for its tracebacks."""
    lines = src.split("\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].startswith("%%"):
        body = "\n".join(lines[i + 1 :])
        if not body.endswith("\n"):
            body += "\n"
        sh._spindle_origin = (body, getattr(B["S"], "cell", "<cell>"), i + 1)
    else:
        sh._spindle_origin = None


def _display_value(value):
    hook = sys.displayhook
    if hook is not sys.__displayhook__:
        hook(value)
        return
    data, md = B["_format"](value)
    B["_emit"]({"type": "result", "data": data, "metadata": md})


# ---------------------------------------------------------------------------------------------
# Without IPython: the transformer


def _is_name(s):
    if not s:
        return False
    for part in s.split("."):
        if not part.isidentifier():
            return False
    return True


def _lhs_ok(lhs):
    lhs = lhs.strip()
    if not lhs or lhs[-1] in "=!<>+-*/%&|^@:~":
        return False
    return all(c.isalnum() or c in "_,.[]() *" for c in lhs)


def _q(s):
    return repr(s)


def _line(stripped, first):
    """Python for one magic line (stripped of its indent), or None when it is plain Python."""
    s = stripped
    if s.startswith("!!"):
        return "get_ipython().getoutput(%s)" % _q(s[2:].strip())
    if s.startswith("!"):
        return "get_ipython().system(%s)" % _q(s[1:].strip())
    if s.startswith("%") and not s.startswith("%%"):
        body = s[1:]
        if body.endswith("?") and _is_name(body.rstrip("?").split(" ")[0]) and " " not in body:
            level = "pinfo2" if body.endswith("??") else "pinfo"
            return "get_ipython().run_line_magic(%s, %s)" % (_q(level), _q("%" + body.rstrip("?")))
        name, _, arg = body.partition(" ")
        return "get_ipython().run_line_magic(%s, %s)" % (_q(name), _q(arg.strip()))
    if s.startswith("%%"):  # a cell magic below the first line: IPython treats it as a line magic
        name, _, arg = s[1:].partition(" ")
        return "get_ipython().run_line_magic(%s, %s)" % (_q(name), _q(arg.strip()))
    if s.startswith("?") or s.endswith("?"):
        level = "pinfo2" if s.startswith("??") or s.endswith("??") else "pinfo"
        name = s.strip("?").strip()
        if _is_name(name) or (name.startswith("%") and _is_name(name[1:])):
            return "get_ipython().run_line_magic(%s, %s)" % (_q(level), _q(name))
        return None
    i = s.find("=")
    if i > 0 and s[i + 1 : i + 2] != "=":
        lhs, rhs = s[:i], s[i + 1 :].lstrip()
        if rhs[:1] in ("!", "%") and _lhs_ok(lhs):
            inner = _line(rhs, False)
            if inner is not None and not rhs.startswith("%%"):
                if rhs.startswith("!") and not rhs.startswith("!!"):
                    inner = "get_ipython().getoutput(%s)" % _q(rhs[1:].strip())
                return "%s = %s" % (lhs.rstrip(), inner)
    return None


def _transform(src, sh):
    lines = src.split("\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i < len(lines) and lines[i].startswith("%%"):
        name, _, arg = lines[i][2:].rstrip().partition(" ")
        body = "\n".join(lines[i + 1 :])
        if not body.endswith("\n"):
            body += "\n"
        sh._spindle_origin = (body, getattr(B["S"], "cell", "<cell>"), i + 1)
        return "\n" * i + "get_ipython().run_cell_magic(%s, %s, %s)\n" % (_q(name), _q(arg.strip()), _q(body))
    sh._spindle_origin = None
    out = []
    depth, quote, cont = 0, None, False
    for line in lines:
        starts = depth == 0 and quote is None and not cont
        if starts and line.strip():
            stripped = line.lstrip()
            py = _line(stripped.rstrip(), False)
            if py is not None:
                out.append(line[: len(line) - len(stripped)] + py)
                cont = False
                continue
        out.append(line)
        depth, quote, cont = _scan(line, depth, quote)
    return "\n".join(out)


def _scan(line, depth, quote):
    """Bracket depth, open triple quote, and backslash continuation after `line`."""
    j, n = 0, len(line)
    while j < n:
        c = line[j]
        if quote is not None:
            if c == "\\":
                j += 2
                continue
            if line.startswith(quote, j):
                j += len(quote)
                quote = None
                continue
            j += 1
            continue
        if c == "#":
            return depth, None, False
        if c in "'\"":
            if line.startswith(c * 3, j):
                quote = c * 3
                j += 3
            else:
                quote = c
                j += 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        j += 1
    cont = line.endswith("\\")
    if quote in ("'", '"') and not cont:
        quote = None
    return depth, quote, cont


# ---------------------------------------------------------------------------------------------
# Without IPython: the shell


class SList(list):
    """What `x = !cmd` gives: the lines, with IPython's .s (joined by spaces), .n (by newlines)
    and .l (the list) views."""

    @property
    def s(self):
        return " ".join(self)

    @property
    def n(self):
        return "\n".join(self)

    nlstr = n
    spstr = s

    @property
    def l(self):  # noqa: E743 (IPython's name)
        return list(self)

    def grep(self, pattern, prune=False):
        import re

        rx = re.compile(pattern)
        return SList([x for x in self if bool(rx.search(x)) != prune])


class _Publisher:
    """`get_ipython().display_pub`: what display() goes through (a capture replaces it)."""

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        B["_publish_display_data"](data, metadata, transient=transient, update=update)

    def clear_output(self, wait=False):
        B["_clear_output"](wait)


class _Events:
    """`get_ipython().events`: callbacks can be registered; Spindle fires none of them yet."""

    def __init__(self):
        self.callbacks = {}

    def register(self, event, function):
        self.callbacks.setdefault(event, []).append(function)

    def unregister(self, event, function):
        try:
            self.callbacks.get(event, []).remove(function)
        except ValueError:
            raise ValueError("Function {!r} is not registered as a {} callback".format(function, event)) from None

    def trigger(self, event, *args, **kwargs):
        for f in list(self.callbacks.get(event, [])):
            f(*args, **kwargs)


class SpindleZMQShell:
    """get_ipython() without IPython: magics, the terminal and the user's namespace.

    The class is named for what pandas checks (`"zmq" in str(type(get_ipython()))`) to tell
    a notebook frontend renders its output; `config` has the `IPKernelApp` section tqdm and
    plotly look for."""

    def __init__(self):
        S = B["S"]
        self.user_ns = S.ns
        self.user_module = sys.modules["__main__"]
        self.user_ns_hidden = {}
        self.display_pub = S.pub = _Publisher()
        self.kernel = SpindleKernel(self)
        self.config = {"IPKernelApp": {}}
        self.events = _Events()
        self.magics_manager = _Magics()
        self._spindle_origin = None
        self._dir_hist = [os.getcwd()]

    def __repr__(self):
        return "<spindle shell (IPython not installed)>"

    def get_ipython(self):
        return self

    def has_trait(self, name):
        return name == "kernel"

    def find_line_magic(self, name):
        return self.magics_manager.magics["line"].get(name)

    def find_cell_magic(self, name):
        return self.magics_manager.magics["cell"].get(name)

    def find_magic(self, name, kind="line"):
        return self.magics_manager.magics[kind].get(name)

    def register_magic_function(self, func, magic_kind="line", magic_name=None):
        if magic_kind not in ("line", "cell", "line_cell"):
            raise ValueError("magic_kind must be 'line', 'cell' or 'line_cell', not %r" % (magic_kind,))
        name = magic_name or func.__name__
        kinds = ("line", "cell") if magic_kind == "line_cell" else (magic_kind,)
        for kind in kinds:
            if kind == "line":
                self.magics_manager.magics["line"][name] = lambda sh, line, f=func: f(line)
            else:
                self.magics_manager.magics["cell"][name] = lambda sh, line, cell, f=func: f(line, cell)

    def run_line_magic(self, magic_name, line, _stack_depth=1):
        fn = self.find_line_magic(magic_name)
        if fn is None:
            hint = ""
            if self.find_cell_magic(magic_name) is not None:
                hint = " (but a cell magic `%%%%%s` exists: put it on the first line of the cell)" % magic_name
            raise UsageError("Line magic function `%%%s` not found%s. %s." % (magic_name, hint, HELP))
        if getattr(fn, "expand", True):
            line = self.var_expand(line, _stack_depth)
        self._local_ns = _caller_locals(_stack_depth)
        return fn(self, line)

    def run_cell_magic(self, magic_name, line, cell):
        fn = self.find_cell_magic(magic_name)
        if fn is None:
            hint = ""
            if self.find_line_magic(magic_name) is not None:
                hint = " (but a line magic `%%%s` exists)" % magic_name
            raise UsageError("Cell magic `%%%%%s` not found%s. %s." % (magic_name, hint, HELP))
        self._local_ns = None
        return fn(self, self.var_expand(line, 1), cell)

    def var_expand(self, cmd, depth=0):
        """$name, $name.attr and {expression} from the user's namespace (and the caller's
        locals); what cannot be expanded is left as written (so $HOME reaches the shell)."""
        if "$" not in cmd and "{" not in cmd:
            return cmd
        ns = dict(self.user_ns)
        try:
            ns.update(sys._getframe(depth + 1).f_locals)
        except ValueError:
            pass
        out, i, n = [], 0, len(cmd)
        while i < n:
            c = cmd[i]
            if c == "$" and cmd[i + 1 : i + 2] == "$":
                out.append("$")
                i += 2
                continue
            if c == "$":
                j = i + 1
                while j < n and (cmd[j].isalnum() or cmd[j] in "_."):
                    j += 1
                name = cmd[i + 1 : j].rstrip(".")
                j = i + 1 + len(name)
                if name and name.split(".")[0] in ns and _is_name(name):
                    try:
                        out.append(str(eval(name, ns)))
                        i = j
                        continue
                    except Exception:
                        pass
                out.append(c)
                i += 1
                continue
            if c == "{":
                if cmd[i + 1 : i + 2] == "{":
                    out.append("{")
                    i += 2
                    continue
                k = cmd.find("}", i)
                if k > i + 1:
                    try:
                        out.append(str(eval(cmd[i + 1 : k], ns)))
                        i = k + 1
                        continue
                    except Exception:
                        pass
            if c == "}" and cmd[i + 1 : i + 2] == "}":
                out.append("}")
                i += 2
                continue
            out.append(c)
            i += 1
        return "".join(out)

    def system(self, cmd):
        _system(self, self.var_expand(cmd, depth=1))

    def getoutput(self, cmd, split=True, depth=0):
        out = _getoutput(self.var_expand(cmd, depth=depth + 1))
        return SList(out.splitlines()) if split else out

    def ev(self, expr):
        return eval(expr, self.user_ns)

    def ex(self, cmd):
        exec(cmd, self.user_ns)

    def push(self, variables, interactive=True):
        if isinstance(variables, str):
            frame = sys._getframe(1)
            variables = {name: eval(name, frame.f_globals, frame.f_locals) for name in variables.replace(",", " ").split()}
        self.user_ns.update(variables)

    def enable_matplotlib(self, gui=None):
        return "inline", _use_inline_backend()

    def showtraceback(self, exc_tuple=None, *args, **kwargs):
        e = (exc_tuple or sys.exc_info())[1]
        if e is not None:
            B["_report_exception"](e)

    def run_cell(self, raw_cell, store_history=False, silent=False, **kwargs):
        name, offset = _origin(self, raw_cell)
        src = _transform(raw_cell, self)
        value = _run_nested(self, src, name, offset)
        if value is not None and not silent:
            _display_value(value)
        return value


# ---------------------------------------------------------------------------------------------
# Without IPython: the magics


def _format_time(t):
    if t >= 60.0:
        parts = []
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            v = int(t // size)
            if v:
                parts.append("%d%s" % (v, unit))
                t -= v * size
        return " ".join(parts)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("\u00b5s", 1e-6), ("ns", 1e-9)):
        if t >= scale or unit == "ns":
            return "%.*g %s" % (3, t / scale, unit)


def _split_opts(line, spec, magic):
    """Leading -x options of `line` per `spec` ({letter: takes_value}); the rest verbatim."""
    opts = {}
    rest = line.lstrip()
    while rest.startswith("-") and not rest.startswith("--") and len(rest) > 1 and not rest[1].isdigit():
        word, _, after = rest.partition(" ")
        letter = word[1]
        if letter not in spec:
            raise UsageError("%s: option -%s not recognized" % (magic, letter))
        if spec[letter]:
            val = word[2:]
            if not val:
                val, _, after = after.lstrip().partition(" ")
            if not val:
                raise UsageError("%s: option -%s requires an argument" % (magic, letter))
            opts[letter] = val
        else:
            opts[letter] = True
            if len(word) > 2:  # -qo
                after = "-" + word[2:] + " " + after
        rest = after.lstrip()
    return opts, rest


def _int_opt(opts, letter, magic, default):
    if letter not in opts:
        return default
    try:
        v = int(opts[letter])
    except ValueError:
        raise UsageError("%s: option -%s needs an integer, got %r" % (magic, letter, opts[letter])) from None
    if v < 1:
        raise UsageError("%s: option -%s must be at least 1, got %d" % (magic, letter, v))
    return v


def _cpu():
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime
    except Exception:
        t = os.times()
        return t.user, t.system


def m_time(sh, line, cell=None):
    if cell is not None and line.strip():
        raise UsageError("Can't use statement directly after '%%time'!")
    if cell is None:
        src, name, offset = _line_source(sh, line)
    else:
        src = cell
        name, offset = _origin(sh, cell)
    u0, s0 = _cpu()
    w0 = time.perf_counter()
    try:
        value = _run_nested(sh, src, name, offset, sh._local_ns)
    finally:
        w1 = time.perf_counter()
        u1, s1 = _cpu()
        u, s = u1 - u0, s1 - s0
        print("CPU times: user %s, sys: %s, total: %s" % (_format_time(u), _format_time(s), _format_time(u + s)))
        print("Wall time: %s" % _format_time(w1 - w0))
    return value


def _line_source(sh, line):
    """A line magic's statement, placed on the line of the cell it came from when it can be
    found there (so a traceback shows the user's line)."""
    S = B["S"]
    name = getattr(S, "cell", None)
    if name:
        import linecache

        lines = linecache.cache.get(name, (0, None, [], name))[2]
        for k, text in enumerate(lines):
            if "%" in text and text.rstrip("\n").rstrip().endswith(line.strip()):
                return line.strip(), name, k
    return line.strip(), "<timed exec>", 0


class TimeitResult:
    """What `%timeit -o` returns."""

    def __init__(self, loops, repeat, best, worst, all_runs, precision=3):
        self.loops = loops
        self.repeat = repeat
        self.best = best
        self.worst = worst
        self.all_runs = all_runs
        self.timings = [t / loops for t in all_runs]
        self.average = sum(self.timings) / len(self.timings)
        var = sum((x - self.average) ** 2 for x in self.timings) / len(self.timings)
        self.stdev = var ** 0.5
        self._precision = precision

    def __str__(self):
        runs = "%d run%s" % (self.repeat, "" if self.repeat == 1 else "s")
        loops = "{:,} loop{}".format(self.loops, "" if self.loops == 1 else "s")
        if self.repeat == 1:
            return "%s per loop (mean of %s, %s each)" % (_format_time(self.average), runs, loops)
        return "%s \u00b1 %s per loop (mean \u00b1 std. dev. of %s, %s each)" % (
            _format_time(self.average), _format_time(self.stdev), runs, loops,
        )

    def __repr__(self):
        return "<TimeitResult : %s>" % self


def m_timeit(sh, line, cell=None):
    import timeit

    opts, stmt = _split_opts(line, {"n": True, "r": True, "q": False, "o": False, "p": True, "t": False, "c": False}, "%timeit")
    number = _int_opt(opts, "n", "%timeit", 0)
    repeat = _int_opt(opts, "r", "%timeit", 7)
    setup = "pass"
    if cell is not None:
        setup, stmt = stmt or "pass", cell
    if not stmt.strip():
        return None
    ns = dict(sh.user_ns) if sh._local_ns else sh.user_ns
    if sh._local_ns:
        ns.update(sh._local_ns)
    try:
        timer = timeit.Timer(stmt, setup, globals=ns)
    except SyntaxError as e:
        raise e
    B["_flush"]()
    if not number:
        number = 1
        for k in range(10):
            number = 10 ** k
            if timer.timeit(number) >= 0.2:
                break
    runs = timer.repeat(repeat, number)
    best, worst = min(runs) / number, max(runs) / number
    res = TimeitResult(number, repeat, best, worst, runs)
    if "q" not in opts:
        if worst > 4 * best and best > 0 and worst > 1e-6:
            print("The slowest run took %0.2f times longer than the fastest. This could mean that an intermediate result is being cached." % (worst / best))
        print(res)
    return res if "o" in opts else None


def _shell_words(line):
    import shlex

    try:
        return shlex.split(line)
    except ValueError as e:
        raise UsageError("could not parse the arguments %r: %s" % (line, e)) from None


def m_pip(sh, line):
    import shlex

    words = _shell_words(line)
    if not words:
        raise UsageError("%pip needs a pip command, such as: %pip install requests")
    _system(sh, " ".join([shlex.quote(sys.executable), "-m", "pip"] + [shlex.quote(w) for w in words]))
    if words[0] in ("install", "uninstall"):
        print("Note: you may need to restart the kernel to use updated packages.")


def m_conda(sh, line):
    import shlex
    import shutil

    words = _shell_words(line)
    if not os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
        raise ValueError(
            "The python kernel does not appear to be a conda environment.  Please use ``%pip install`` instead."
        )
    exe = os.environ.get("CONDA_EXE") or shutil.which("conda") or shutil.which("mamba")
    if not exe:
        raise UsageError("%conda: no conda executable found (set CONDA_EXE or put conda on PATH)")
    if not words:
        raise UsageError("%conda needs a conda command, such as: %conda install numpy")
    args = list(words)
    if args[0] in ("install", "remove", "uninstall", "update", "upgrade", "list") and not (
        {"-p", "--prefix", "-n", "--name"} & set(args)
    ):
        args[1:1] = ["--prefix", sys.prefix]
        if args[0] != "list" and "-y" not in args and "--yes" not in args:
            args.append("--yes")
    _system(sh, " ".join(shlex.quote(w) for w in [exe] + args))
    if words[0] in ("install", "remove", "uninstall", "update", "upgrade"):
        print("Note: you may need to restart the kernel to use updated packages.")


def m_cd(sh, line):
    opts, arg = _split_opts(line, {"q": False, "b": False}, "%cd")
    arg = arg.strip()
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        arg = arg[1:-1]
    if arg == "-":
        if len(sh._dir_hist) < 2:
            print("cd: no previous directory")
            return None
        target = sh._dir_hist[-2]
    elif arg.startswith("-") and arg[1:].isdigit():
        k = int(arg[1:])
        if k >= len(sh._dir_hist):
            print("cd: no directory %d in the history" % k)
            return None
        target = sh._dir_hist[k]
    else:
        target = os.path.expanduser(arg) if arg else os.path.expanduser("~")
    try:
        os.chdir(target)
    except OSError as e:
        print(e)
        return None
    cwd = os.getcwd()
    if sh._dir_hist[-1] != cwd:
        sh._dir_hist.append(cwd)
    sh.user_ns["_dh"] = sh._dir_hist
    if "q" not in opts:
        print(cwd)
    return None


def m_pwd(sh, line):
    return os.getcwd()


_SECRET = ("KEY", "TOKEN", "SECRET", "PASS", "SIG", "CRED", "AUTH")


def m_env(sh, line):
    line = line.strip()
    if not line:
        return {k: ("<hidden>" if any(w in k.upper() for w in _SECRET) else v) for k, v in os.environ.items()}
    sep = "=" if "=" in line else " "
    bits = line.split(sep, 1)
    key = bits[0].strip()
    if len(bits) == 1:
        try:
            return os.environ[key]
        except KeyError:
            raise UsageError("Environment does not have key: %s" % key) from None
    if not key or " " in key:
        raise UsageError("%%env: %r is not a variable name; use %%env NAME=value" % key)
    value = bits[1].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    os.environ[key] = value
    print("env: %s=%s" % (key, value))
    return None


def _script(sh, line, cell, interpreter):
    import shlex
    import subprocess

    words = _shell_words(line)
    out_var = err_var = None
    raise_error = True
    k = 0
    while k < len(words):
        w = words[k]
        if w in ("--out", "--err"):
            if k + 1 >= len(words) or not words[k + 1].isidentifier():
                raise UsageError("%%%%%s: %s needs a variable name" % (interpreter[0], w))
            if w == "--out":
                out_var = words[k + 1]
            else:
                err_var = words[k + 1]
            k += 2
            continue
        if w == "--no-raise-error":
            raise_error = False
            k += 1
            continue
        raise UsageError("%%%%%s: unrecognized argument %r (Spindle knows --out VAR, --err VAR, --no-raise-error)" % (interpreter[0], w))
    B["_flush"]()
    # Under a capture (%%capture, redirect_stdout) the script's output goes into it too.
    relay_out = not out_var and sys.stdout is not B["S"].stdout
    relay_err = not err_var and sys.stderr is not B["S"].stderr
    p = subprocess.Popen(
        interpreter,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if out_var or relay_out else None,
        stderr=subprocess.PIPE if err_var or relay_err else None,
    )
    out, err = p.communicate(cell.encode("utf-8"))
    if out_var:
        sh.user_ns[out_var] = out.decode("utf-8", "replace")
    elif relay_out:
        sys.stdout.write(out.decode("utf-8", "replace"))
    if err_var:
        sh.user_ns[err_var] = err.decode("utf-8", "replace")
    elif relay_err:
        sys.stderr.write(err.decode("utf-8", "replace"))
    if p.returncode and raise_error:
        raise subprocess.CalledProcessError(p.returncode, cell)
    del shlex


def m_bash(sh, line, cell):
    _script(sh, line, cell, ["bash"])


def m_sh(sh, line, cell):
    _script(sh, line, cell, ["sh"])


def m_writefile(sh, line, cell):
    words = _shell_words(line)
    append = False
    if words and words[0] in ("-a", "--append"):
        append = True
        words = words[1:]
    if not words:
        raise UsageError("%%writefile: the following arguments are required: filename")
    if len(words) > 1 or words[0].startswith("-"):
        raise UsageError("%%%%writefile: unrecognized arguments: %s (usage: %%%%writefile [-a] filename)" % " ".join(words))
    path = os.path.expanduser(words[0])
    if os.path.exists(path):
        print(("Appending to %s" if append else "Overwriting %s") % words[0])
    else:
        print("Writing %s" % words[0])
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(cell)


def m_html(sh, line, cell):
    B["display"]({"text/html": cell, "text/plain": "<IPython.core.display.HTML object>"}, raw=True)


def m_markdown(sh, line, cell):
    B["display"]({"text/markdown": cell, "text/plain": "<IPython.core.display.Markdown object>"}, raw=True)


class CapturedIO:
    """What `%%capture var` keeps: .stdout, .stderr, .outputs; show() or calling it replays."""

    def __init__(self, stdout, stderr, outputs):
        self._stdout = stdout
        self._stderr = stderr
        self.outputs = outputs

    def __repr__(self):
        return "<spindle CapturedIO: %d output%s>" % (len(self.outputs), "" if len(self.outputs) == 1 else "s")

    @property
    def stdout(self):
        return self._stdout.getvalue() if self._stdout else ""

    @property
    def stderr(self):
        return self._stderr.getvalue() if self._stderr else ""

    def show(self):
        if self.stdout:
            sys.stdout.write(self.stdout)
        if self.stderr:
            sys.stderr.write(self.stderr)
        for data, md in self.outputs:
            B["display"](data, metadata=md, raw=True)

    __call__ = show


class _CapturingPublisher:
    def __init__(self, outputs):
        self.outputs = outputs

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        self.outputs.append((B["_clean_bundle"](data), dict(metadata or {})))

    def clear_output(self, wait=False):
        del self.outputs[:]


def m_capture(sh, line, cell):
    import io

    words = _shell_words(line)
    flags = {"--no-stdout": False, "--no-stderr": False, "--no-display": False}
    var = None
    for w in words:
        if w in flags:
            flags[w] = True
        elif w.isidentifier() and var is None:
            var = w
        else:
            raise UsageError("%%%%capture: unrecognized argument %r (usage: %%%%capture [--no-stdout] [--no-stderr] [--no-display] [name])" % w)
    B["_flush"]()
    out = None if flags["--no-stdout"] else io.StringIO()
    err = None if flags["--no-stderr"] else io.StringIO()
    outputs = []
    saved = sys.stdout, sys.stderr, sh.display_pub, sys.displayhook
    if out is not None:
        sys.stdout = out
    if err is not None:
        sys.stderr = err
    if not flags["--no-display"]:
        pub = _CapturingPublisher(outputs)
        sh.display_pub = pub

        def hook(value):
            if value is not None:
                pub.publish(*B["_format"](value))

        sys.displayhook = hook
    try:
        sh.run_cell(cell)
    finally:
        sys.stdout, sys.stderr, sh.display_pub, sys.displayhook = saved
    if var:
        sh.user_ns[var] = CapturedIO(out, err, outputs)


def m_matplotlib(sh, line):
    opts, gui = _split_opts(line, {"l": False}, "%matplotlib")
    gui = gui.strip()
    if "l" in opts or gui == "--list":
        print("Available matplotlib backends: ['inline', 'agg', 'svg', 'pdf', 'ps', 'cairo', 'template'] (Spindle shows figures inline)")
        return None
    if gui in ("", "inline", "auto"):
        backend = _use_inline_backend()
        if not gui:
            print("Using matplotlib backend: %s" % backend)
        return None
    try:
        import matplotlib
    except ImportError:
        raise UsageError("%matplotlib: matplotlib is not installed in this interpreter") from None
    if gui.lower() in ("agg", "svg", "pdf", "ps", "cairo", "template") or gui.startswith("module://"):
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].switch_backend(gui)
        else:
            matplotlib.use(gui)
        return None
    # notebook, widget, ipympl, qt, tk, ...: no GUI or comm here; figures are shown inline.
    _use_inline_backend()
    print("Using matplotlib backend: %s (Spindle shows %s figures inline)" % (B["_MPL_BACKEND"], gui))
    return None


def _user_vars(sh, types):
    hidden = sh.user_ns_hidden
    out = []
    for k, v in sh.user_ns.items():
        if k.startswith("_") or (k in hidden and hidden[k] is v) or k in ("In", "Out", "get_ipython", "exit", "quit"):
            continue
        if types and type(v).__name__ not in types:
            continue
        out.append(k)
    return sorted(out)


def m_who(sh, line):
    types = line.split()
    names = _user_vars(sh, types)
    if not names:
        print("No variables match your requested type." if types else "Interactive namespace is empty.")
        return None
    for k in range(0, len(names), 9):
        print("\t ".join(names[k : k + 9]) + "\t ")
    return None


def m_whos(sh, line):
    types = line.split()
    names = _user_vars(sh, types)
    if not names:
        print("No variables match your requested type." if types else "Interactive namespace is empty.")
        return None
    rows = []
    for k in names:
        v = sh.user_ns[k]
        t = type(v).__name__
        try:
            if t == "ndarray":
                info = "%s: %s elems, type `%s`, %s bytes" % ("x".join(map(str, v.shape)), v.size, v.dtype, v.nbytes)
            elif t in ("list", "tuple", "dict", "set"):
                info = "n=%d" % len(v)
            else:
                info = str(v).replace("\n", "\\n")
        except Exception:
            info = "<unprintable>"
        if len(info) > 50:
            info = info[:25] + "<...>" + info[-20:]
        rows.append((k, t, info))
    w1 = max(len("Variable"), max(len(r[0]) for r in rows)) + 3
    w2 = max(len("Type"), max(len(r[1]) for r in rows)) + 4
    print("Variable".ljust(w1) + "Type".ljust(w2) + "Data/Info")
    print("-" * (w1 + w2 + len("Data/Info")))
    for k, t, info in rows:
        print(k.ljust(w1) + t.ljust(w2) + info)
    return None


def _pinfo(sh, line, level):
    name = line.strip()
    if name.startswith("%"):
        fn = sh.find_line_magic(name.lstrip("%")) or sh.find_cell_magic(name.lstrip("%"))
        if fn is None:
            print("Object `%s` not found." % name)
            return None
        _page({"text/plain": "Docstring:\n%s" % ((fn.__doc__ or "<no docstring>").strip())})
        return None
    found = B["_inspect"](name, len(name), level)
    if found.get("found"):
        _page(found["data"])
    else:
        print("Object `%s` not found." % name)
    return None


def m_pinfo(sh, line):
    return _pinfo(sh, line, 0)


def m_pinfo2(sh, line):
    return _pinfo(sh, line, 1)


def m_lsmagic(sh, line):
    mm = sh.magics_manager.magics
    print("Available line magics:\n%s\n" % "  ".join("%" + k for k in sorted(mm["line"])))
    print("Available cell magics:\n%s\n" % "  ".join("%%" + k for k in sorted(mm["cell"])))
    print("(Spindle's own subset; install IPython in the session's interpreter for all of them.)")


m_time.__doc__ = "Time one run of a statement or expression (%time stmt, or %%time above a cell)."
m_timeit.__doc__ = "Time many runs: %timeit [-n N] [-r R] [-q] [-o] stmt, or %%timeit [opts] [setup] above a cell."
m_pip.__doc__ = "Run pip with the session's interpreter: %pip install package."
m_conda.__doc__ = "Run conda on the session's environment: %conda install package."
m_cd.__doc__ = "Change the working directory: %cd DIR, %cd - (back), %cd (home)."
m_pwd.__doc__ = "The working directory."
m_env.__doc__ = "Environment variables: %env, %env NAME, %env NAME=value."
m_bash.__doc__ = "Run the cell with bash: %%bash [--out VAR] [--err VAR] [--no-raise-error]."
m_sh.__doc__ = "Run the cell with sh: %%sh [--out VAR] [--err VAR] [--no-raise-error]."
m_writefile.__doc__ = "Write the cell to a file: %%writefile [-a] filename."
m_html.__doc__ = "Show the cell as HTML."
m_markdown.__doc__ = "Show the cell as Markdown."
m_capture.__doc__ = "Run the cell, capturing its output: %%capture [--no-stdout] [--no-stderr] [--no-display] [name]."
m_matplotlib.__doc__ = "Figures inline: %matplotlib inline."
m_who.__doc__ = "The names of the interactive variables: %who [type ...]."
m_whos.__doc__ = "The interactive variables with their types and values: %whos [type ...]."
m_lsmagic.__doc__ = "The magics this session understands."


class _Magics:
    def __init__(self):
        self.magics = {
            "line": {
                "time": lambda sh, line: m_time(sh, line),
                "timeit": lambda sh, line: m_timeit(sh, line),
                "pip": m_pip,
                "conda": m_conda,
                "cd": m_cd,
                "pwd": m_pwd,
                "env": m_env,
                "matplotlib": m_matplotlib,
                "who": m_who,
                "whos": m_whos,
                "pinfo": m_pinfo,
                "pinfo2": m_pinfo2,
                "lsmagic": m_lsmagic,
            },
            "cell": {
                "time": m_time,
                "timeit": m_timeit,
                "bash": m_bash,
                "sh": m_sh,
                "writefile": m_writefile,
                "html": m_html,
                "markdown": m_markdown,
                "capture": m_capture,
            },
        }
        for name in ("time", "timeit"):
            fn = self.magics["line"][name]
            fn.__doc__ = self.magics["cell"][name].__doc__
        for name in ("pinfo", "pinfo2", "time", "timeit"):
            self.magics["line"][name].expand = False
