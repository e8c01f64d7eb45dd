"""IPython syntax, side by side: the notebooks in tests/notebooks run through nbclient on
ipykernel and on spindle-python, and every code cell must give the same kinds of output (stream
names, MIME types of displays and results, error names).

spindle-python runs twice: on the test venv, where IPython is importable (its transformers and
magics run inside Spindle), and on an interpreter without IPython (the bootstrap's built-in
subset): `$SPINDLE_TEST_NOIPY_PYTHON` or `<repo>/.venv-noipy`, which the README's test command
makes with only matplotlib, pandas and tqdm; failing both, the test venv with SPINDLE_IPYTHON=0
in the kernelspec's environment. The reference is ipykernel on the test venv in both runs.

What is compared, and why not more: texts differ by nature (timings, paths, addresses), so only
the kinds are compared. A run of consecutive stream outputs counts as one item, the set of its
stream names: how a kernel splits a stream into messages, and how stdout and stderr written at
the same moment by a subprocess interleave, is not behaviour. Help (`obj?`) goes to the pager as
an execute_reply payload, which nbclient does not record; test_help_is_a_page_payload checks
the payload itself.

Known, documented differences of the built-in subset: none in these notebooks (the subset was
written to give ipykernel's output kinds for each magic it knows).
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jupyter_kernel_test as jkt
import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_kit import collect, kernel

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "tests" / "notebooks").glob("*.ipynb"))
REFERENCE = "python3"  # ipykernel, from the test venv
NOIPY = "spindle-noipy-python"

# (notebook, code cell index, flavour) -> the kinds Spindle gives instead, with the reason.
DIFFERENCES = {}


def noipy_python():
    p = os.environ.get("SPINDLE_TEST_NOIPY_PYTHON")
    if p:
        return pathlib.Path(p)
    p = ROOT / ".venv-noipy" / "bin" / "python"
    return p if p.exists() else None


@pytest.fixture(scope="module", autouse=True)
def noipy_kernelspec(jupyter_env, spindle_bin):
    """spindle-noipy-python: spindle-python on an interpreter without IPython."""
    py = noipy_python()
    prefix = jupyter_env["prefix"]
    subprocess.run(
        [str(spindle_bin), "--python", str(py or sys.executable), "kernel", "install",
         "--prefix", str(prefix), "--name", "spindle-noipy", "--languages", "python"],
        env=jupyter_env["env"], check=True, capture_output=True, timeout=60,
    )
    spec = prefix / "share" / "jupyter" / "kernels" / NOIPY / "kernel.json"
    if py is None:
        data = json.loads(spec.read_text())
        data.setdefault("env", {})["SPINDLE_IPYTHON"] = "0"
        spec.write_text(json.dumps(data, indent=1))
    return spec


def kinds(nb):
    """Per code cell: the kinds of its outputs, stream runs folded into their set of names."""
    cells = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        out = []
        for o in c.get("outputs", []):
            t = o["output_type"]
            if t == "stream":
                if out and out[-1][0] == "stream":
                    out[-1] = ("stream", tuple(sorted(set(out[-1][1]) | {o["name"]})))
                    continue
                out.append(("stream", (o["name"],)))
            elif t in ("display_data", "execute_result"):
                out.append((t, tuple(sorted(o["data"]))))
            elif t == "error":
                out.append(("error", o["ename"]))
            else:
                out.append((t,))
        cells.append((c.source, out))
    return cells


def execute(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    work = tempfile.mkdtemp(prefix="spindle-parity-")
    NotebookClient(
        nb, kernel_name=kernel_name, timeout=180, allow_errors=True,
        resources={"metadata": {"path": work}},
    ).execute()
    return nb


_reference = {}


def reference(path):
    if path not in _reference:
        _reference[path] = kinds(execute(path, REFERENCE))
    return _reference[path]


def compare(path, kernel_name, flavour):
    want = reference(path)
    nb = execute(path, kernel_name)
    assert nb.metadata["language_info"]["name"] == "python"
    got = kinds(nb)
    assert len(got) == len(want)
    bad = []
    for i, ((src, g), (_, w)) in enumerate(zip(got, want)):
        expect = DIFFERENCES.get((path.name, i, flavour), w)
        if g != expect:
            bad.append(f"cell {i} {src!r}:\n  ipykernel: {w}\n  spindle:   {g}")
    assert not bad, f"{path.name} ({flavour}) differs:\n" + "\n".join(bad)
    # The notebooks are meant to exercise something: most cells have output.
    assert sum(1 for _, w in want if w) >= len(want) // 2


def test_the_reference_is_ipykernel_and_the_noipy_kernel_has_no_ipython(noipy_kernelspec):
    with kernel(REFERENCE) as (km, kc):
        reply, iopub = collect(kc, kc.execute("import ipykernel, sys; print(sys.prefix)"))
        assert reply["content"]["status"] == "ok"
    if noipy_python() is None:
        assert json.loads(noipy_kernelspec.read_text())["env"]["SPINDLE_IPYTHON"] == "0"
        return
    with kernel(NOIPY) as (km, kc):
        code = "import importlib.util; print(importlib.util.find_spec('IPython'))"
        reply, iopub = collect(kc, kc.execute(code))
        text = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
        assert text == "None\n"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_ipykernel_with_ipython(path):
    compare(path, "spindle-python", "ipython")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_ipykernel_without_ipython(path):
    compare(path, NOIPY, "builtin")


@pytest.mark.parametrize("name", [REFERENCE, "spindle-python", NOIPY])
@pytest.mark.parametrize("code", ["len?", "x = 1\nlen??", "?len"])
def test_help_is_a_page_payload(name, code):
    """`obj?` answers as ipykernel does: no output, one `page` payload with text/plain."""
    with kernel(name) as (km, kc):
        reply, iopub = collect(kc, kc.execute(code))
        c = reply["content"]
        assert c["status"] == "ok", c
        outputs = [m for m in iopub if m["msg_type"] in ("stream", "display_data", "execute_result", "error")]
        assert outputs == []
        assert len(c["payload"]) == 1, c["payload"]
        page = c["payload"][0]
        assert page["source"] == "page"
        assert page["start"] == 0
        assert "len" in page["data"]["text/plain"]
        assert "Docstring" in page["data"]["text/plain"]


@pytest.mark.parametrize("name", [REFERENCE, "spindle-python", NOIPY])
def test_a_usage_error_is_stderr_and_an_error_reply(name):
    with kernel(name) as (km, kc):
        reply, iopub = collect(kc, kc.execute("%nosuchmagic"))
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "UsageError"
        text = "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream")
        assert text.startswith("UsageError: Line magic function `%nosuchmagic` not found")
        assert not [m for m in iopub if m["msg_type"] == "error"]
        reply, _ = collect(kc, kc.execute("1 + 1"))
        assert reply["content"]["status"] == "ok"


@pytest.mark.parametrize("name", [REFERENCE, "spindle-python", NOIPY])
def test_capture_keeps_the_output_of_a_shell_command(name):
    """Regression: `!cmd` (and the built-in %%bash) inside %%capture wrote to the terminal,
    past the capture."""
    with kernel(name) as (km, kc):
        code = "%%capture cap\nprint('py')\n!echo sh-out; echo sh-err >&2; exit 3"
        reply, iopub = collect(kc, kc.execute(code))
        assert reply["content"]["status"] == "ok", reply["content"]
        shown = [m for m in iopub if m["msg_type"] in ("stream", "display_data", "error")]
        assert shown == []
        reply, iopub = collect(kc, kc.execute("print(repr(cap.stdout)); print(_exit_code)"))
        text = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
        # ipykernel runs the command on a pexpect terminal, so its lines end in \r\n.
        assert text.replace("\\r", "") == "'py\\nsh-out\\nsh-err\\n'\n3\n"
        # A script cell magic inside a capture, stdout and stderr kept apart.
        code = "%%capture cap2\n%%bash\necho b-out\necho b-err >&2"
        reply, iopub = collect(kc, kc.execute(code))
        assert reply["content"]["status"] == "ok", reply["content"]
        assert [m for m in iopub if m["msg_type"] in ("stream", "display_data", "error")] == []
        reply, iopub = collect(kc, kc.execute("print(repr(cap2.stdout), repr(cap2.stderr))"))
        text = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
        assert text == "'b-out\\n' 'b-err\\n'\n"
        # Outside a capture the command still runs on the terminal.
        reply, iopub = collect(kc, kc.execute("!echo free"))
        text = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
        assert text.replace("\r\n", "\n") == "free\n"


class NoIPythonConformance(jkt.KernelTests):
    """jupyter_kernel_test on spindle-python without IPython (the README says it needs none)."""

    kernel_name = NOIPY
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('oops', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q", "1 +* 2"]
    code_page_something = "print?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "here = %pwd\nhere == __import__('os').getcwd()", "result": "True"},
    ]
    code_display_data = [
        {"code": "display({'text/html': '<b>test</b>', 'text/plain': 'test'}, raw=True)",
         "mime": "text/html"},
        {"code": "%%markdown\n*test*", "mime": "text/markdown"},
        {"code": (
            "%matplotlib inline\n"
            "import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(figsize=(2, 2), dpi=50)\n"
            "ax.plot([0, 1], [1, 0])\n"
            "plt.show()\n"
        ), "mime": "image/png"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
