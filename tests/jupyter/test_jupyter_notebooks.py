"""Real notebooks on Spindle kernels: nbconvert --execute and papermill."""
import base64
import os
import pathlib
import subprocess
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "examples" / "notebooks"
BIN = pathlib.Path(sys.executable).parent


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_nbconvert_executes_plot_and_table(tmp_path):
    out = tmp_path / "executed.ipynb"
    subprocess.run(
        [str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=120", "--output", str(out),
         str(NOTEBOOKS / "plot_and_table.ipynb")],
        check=True, capture_output=True, timeout=180, env=os.environ,
    )
    nb = nbformat.read(out, as_version=4)
    outs = outputs(nb)
    pngs = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    png = base64.b64decode(pngs[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    tables = [o for o in outs if o.get("output_type") == "execute_result"
              and "text/html" in o.get("data", {})]
    assert len(tables) == 1 and "<table" in tables[0]["data"]["text/html"]
    assert tables[0]["execution_count"] == 3
    streams = [o for o in outs if o.get("output_type") == "stream"]
    assert streams[-1]["text"].startswith("5 rows")
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert nb.metadata["language_info"]["name"] == "python"


def test_papermill_runs_a_parameterised_python_notebook(tmp_path):
    out = tmp_path / "out.ipynb"
    subprocess.run(
        [str(BIN / "papermill"), str(NOTEBOOKS / "parameterised.ipynb"), str(out),
         "-p", "n", "5", "-p", "label", "squares", "--kernel", "spindle-python"],
        check=True, capture_output=True, timeout=180, env=os.environ,
    )
    nb = nbformat.read(out, as_version=4)
    texts = [o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream"]
    assert "squares [0, 1, 4, 9, 16]\n" in texts
    results = [o["data"]["text/plain"] for o in outputs(nb) if o.get("output_type") == "execute_result"]
    assert results == ["30"]
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_papermill_runs_a_bash_notebook(tmp_path):
    out = tmp_path / "out.ipynb"
    subprocess.run(
        [str(BIN / "papermill"), str(NOTEBOOKS / "bash_report.ipynb"), str(out),
         "-p", "count", "2", "-p", "word", "hey", "--kernel", "spindle-bash"],
        check=True, capture_output=True, timeout=180, env=os.environ,
    )
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream")
    assert "hey 1\nhey 2\n" in text
    assert "shell: 5." in text and "done\n" in text


def test_papermill_reports_a_failing_bash_cell(tmp_path):
    src = tmp_path / "fail.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "spindle-bash", "display_name": "Bash", "language": "bash"}}
    nb.cells = [nbformat.v4.new_code_cell("echo first"), nbformat.v4.new_code_cell("exit_three() { return 3; }; exit_three"),
                nbformat.v4.new_code_cell("echo never")]
    nbformat.write(nb, src)
    r = subprocess.run([str(BIN / "papermill"), str(src), str(tmp_path / "o.ipynb")],
                       capture_output=True, timeout=180, env=os.environ, text=True)
    assert r.returncode != 0
    done = nbformat.read(tmp_path / "o.ipynb", as_version=4)
    cells = {c.source: c for c in done.cells if c.cell_type == "code"}
    failing = cells["exit_three() { return 3; }; exit_three"]
    assert [o["output_type"] for o in failing.outputs] == ["error"]
    assert failing.outputs[0]["evalue"] == "3"
    assert cells["echo never"].outputs == []
