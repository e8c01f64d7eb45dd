"""The terminal REPL, driven through tmux like a person would: typing, Enter, Ctrl-C, Ctrl-D."""
import json
import os
import re
import time

import nbformat
import psutil


def test_multiline_def_then_call(start_repl):
    p = start_repl()
    p.line("def double(x):")
    # Enter on an incomplete `def` continues the cell, indented by the session's answer.
    p.type("return x * 2")
    p.keys("Enter")
    p.wait_for("    return x * 2")
    assert p.last_prompt() == ("python", 1, "def double(x):")
    p.keys("Enter")
    p.wait_prompt("python", 2)
    out = p.run("double(21)", "python", 3)
    assert re.search(r"\[python 2\]> double\(21\)\n42\n", out), out


def test_open_bracket_continues(start_repl):
    p = start_repl()
    p.line("total = sum([1,")
    p.wait_for("total = sum([1,\n")
    assert p.last_prompt() == ("python", 1, "total = sum([1,")
    p.line("2, 3])")
    p.wait_prompt("python", 2)
    p.run("print(total * 7)", "python", 3)
    assert "\n42\n" in p.output_after("print(total * 7)")


def test_shell_magic_lists_the_working_directory(start_repl, workdir):
    (workdir / "alpha.txt").write_text("a")
    (workdir / "beta_dir").mkdir()
    p = start_repl()
    p.run("%% ls", "python", 1)
    out = p.output_after("%% ls")
    assert "alpha.txt" in out and "beta_dir" in out, out
    # The shell keeps its state between commands, whatever the current language.
    p.run("%% cd beta_dir && touch inside.txt", "python", 1)
    p.run("%% ls; pwd", "python", 1)
    out = p.output_after("%% ls; pwd")
    assert "inside.txt" in out and out.strip().split("\n")[1].endswith("beta_dir"), out


def test_bash_cell_magic_runs_once_in_bash(start_repl):
    p = start_repl()
    p.line("%%bash")
    p.line("GREETING=hello")
    p.line('for i in 1 2 3; do echo "$GREETING $i"; done')
    p.keys("Enter")
    p.wait_prompt("python", 1)
    out = p.output_after("for i in 1 2 3")
    assert "hello 1\nhello 2\nhello 3" in out, out
    # Still Python afterwards, and the bash session kept the variable.
    p.run("print(6 * 7)", "python", 2)
    assert "\n42\n" in p.output_after("print(6 * 7)")
    p.run("%% echo $GREETING world", "python", 2)
    assert "hello world" in p.output_after("%% echo $GREETING world")


def test_switch_to_node_and_back_keeps_each_state(start_repl):
    p = start_repl()
    p.run("x = 7", "python", 2)
    p.run("%node", "node", 1)
    p.run("const y = 5", "node", 2)
    p.run("%python", "python", 2)
    p.run("print(x * 3)", "python", 3)
    assert "\n21\n" in p.output_after("print(x * 3)")
    p.run("%node", "node", 2)
    p.run("console.log(y + 1)", "node", 3)
    assert "\n6\n" in p.output_after("console.log(y + 1)")
    p.run("%bash", "bash", 1)
    p.run("Z=9", "bash", 2)
    p.run("%python", "python", 3)
    p.run("print(x)", "python", 4)
    assert "\n7\n" in p.output_after("print(x)")
    p.run("%sessions", "python", 4)
    table = p.output_after("%sessions")
    for lang in ("python", "node", "bash"):
        assert re.search(rf"\b{lang}\s+idle\s+\d+", table), table


def test_ctrl_c_interrupts_and_keeps_state(start_repl):
    p = start_repl()
    p.run("import time; marker = 'still here'", "python", 2)
    p.line("time.sleep(60)")
    # Give it a moment to be running, then interrupt.
    p.wait_for("time.sleep(60)\n")
    time.sleep(0.3)
    assert p.last_prompt() == ("python", 2, "time.sleep(60)")
    t0 = time.monotonic()
    p.keys("C-c")
    p.wait_prompt("python", 3, timeout=10)
    elapsed = time.monotonic() - t0
    assert "KeyboardInterrupt" in p.output_after("time.sleep(60)")
    # The prompt is back within a second (the sleep had 60 s to go).
    assert elapsed < 1.0, f"prompt back after {elapsed:.2f} s"
    p.run("print(marker)", "python", 4)
    assert "still here" in p.output_after("print(marker)")


def test_input_prompt_answered_and_stdin_forwarded(start_repl):
    p = start_repl()
    p.line('name = input("Your name? ")')
    # The prompt on a line of its own (the typed code also contains the text).
    p.wait_for(re.compile(r"^Your name\? $", re.M))
    p.line("Ada")
    p.wait_prompt("python", 2)
    p.run('print("hello " + name)', "python", 3)
    assert "hello Ada" in p.output_after('print("hello " + name)')
    # A program reading its terminal (bash `read`) gets the typed line too.
    p.line('%% read -p "continue? [y/n] " ans; echo "answer=$ans"')
    p.wait_for(re.compile(r"^continue\? \[y/n\] $", re.M))
    p.line("y")
    p.wait_for("answer=y")
    p.wait_prompt("python", 3)
    # A password prompt is not echoed, and echo comes back afterwards.
    p.line('import getpass; secret = getpass.getpass("Password: ")')
    p.wait_for(re.compile(r"^Password: $", re.M))
    p.line("hunter2")
    p.wait_prompt("python", 4)
    assert "hunter2" not in p.screen()
    p.run("print(len(secret), secret[::-1])", "python", 5)
    assert "7 2retnuh" in p.output_after("print(len(secret), secret[::-1])")


def test_matplotlib_plot_in_tmux_prints_path_and_size(start_repl, tmp_path):
    p = start_repl()
    p.run("import matplotlib.pyplot as plt", "python", 2, timeout=60)
    p.line("plt.plot([1, 2, 3], [1, 4, 9]); plt.show()")
    m = p.wait_for(re.compile(r"\[image/png (\d+)×(\d+), [\d.]+ KiB, saved to (\S+\.png)\]"), timeout=60)
    p.wait_prompt("python", 3)
    path = m.group(3)
    assert path.startswith(str(tmp_path / "cache")), path
    data = open(path, "rb").read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (int(m.group(1)), int(m.group(2))) == (640, 480)
    # tmux supports no graphics protocol: nothing but the caption was drawn.
    assert "▀" not in p.screen()


def test_forced_blocks_render_the_plot(start_repl):
    p = start_repl("--images", "blocks", width=100, height=60)
    p.run("import matplotlib.pyplot as plt", "python", 2, timeout=60)
    p.line("plt.plot([1, 2, 3], [1, 4, 9]); plt.show()")
    p.wait_for(re.compile(r"\[image/png 640×480"), timeout=60)
    p.wait_prompt("python", 3)
    rows = [l for l in p.screen().split("\n") if "▀" in l]
    # Scaled to the terminal: 99 columns wide, aspect kept (640x480 → 99x74 px → 37 rows).
    assert len(rows) == 37, len(rows)
    assert all(len(r.rstrip()) <= 100 for r in rows)
    coloured = p.screen(colors=True)
    assert re.search(r"\x1b\[38;5;\d+m\x1b\[48;5;\d+m▀", coloured), "no colour in the blocks"


def test_jupyter_export_is_a_valid_notebook_with_outputs(start_repl, workdir):
    p = start_repl()
    p.run('print("to stdout")', "python", 2)
    p.run('import sys; print("to stderr", file=sys.stderr)', "python", 3)
    p.run("import matplotlib.pyplot as plt", "python", 4, timeout=60)
    p.run("plt.plot([3, 1, 2]); plt.show()", "python", 5, timeout=60)
    p.run("6 * 7", "python", 6)
    p.run("1 / 0", "python", 7)
    p.run("%% echo from bash", "python", 7)
    p.run("%jupyter out.ipynb", "python", 7)
    p.wait_for("wrote a notebook of 7 cells to out.ipynb")
    nb = nbformat.read(str(workdir / "out.ipynb"), as_version=4)
    nbformat.validate(nb)
    cells = nb.cells
    assert len(cells) == 7
    assert [c.metadata["spindle"]["language"] for c in cells] == ["python"] * 6 + ["bash"]
    assert cells[0].outputs[0] == {"output_type": "stream", "name": "stdout", "text": "to stdout\n"}
    assert cells[1].outputs[0]["name"] == "stderr" and cells[1].outputs[0]["text"] == "to stderr\n"
    images = [o for o in cells[3].outputs if o.output_type == "display_data"]
    assert images and images[0].data["image/png"].startswith("iVBORw0KGgo")
    result = cells[4].outputs[0]
    assert result.output_type == "execute_result" and result.data["text/plain"] == "42"
    assert result.execution_count == cells[4].execution_count == 5
    err = cells[5].outputs[0]
    assert err.output_type == "error" and err.ename == "ZeroDivisionError"
    assert cells[6].source == "echo from bash"
    assert cells[6].outputs[0]["text"] == "from bash\n"


def test_save_then_load_replays_and_malformed_changes_nothing(start_repl, workdir):
    p = start_repl()
    p.run("a = 10", "python", 2)
    p.run("b = a + 1", "python", 3)
    p.run("%save t.json", "python", 3)
    saved = json.loads((workdir / "t.json").read_text())
    assert saved["format"] == "spindle-transcript"
    assert [c["code"] for c in saved["cells"]] == ["a = 10", "b = a + 1"]
    assert saved["cells"][0]["chunks"][-1]["format"] == "finished"

    p.run("%reset", "python", 3)
    p.wait_for("python: restarted")
    p.run("print(a + b)", "python", 4)
    assert "NameError" in p.output_after("print(a + b)")
    p.run("%load t.json", "python", 6)
    p.run("print(a + b)", "python", 7)
    assert "\n21\n" in p.output_after("print(a + b)")

    bad = workdir / "bad.json"
    bad.write_text(
        '{\n  "format": "spindle-transcript",\n  "version": 1,\n  "cells": [\n'
        '    {"language": "python", "code": "zz = 1"},\n'
        '    {"language": "ruby", "code": "puts 1"}\n  ]\n}\n'
    )
    p.run("%load bad.json", "python", 7)
    out = p.output_after("%load bad.json")
    assert "bad.json:6:" in out and "ruby" in out, out
    assert "nothing was run" in out
    p.run("zz", "python", 8)
    assert "NameError: name 'zz' is not defined" in p.output_after("zz")


def test_bad_input_explains_itself(start_repl, repl_env):
    env = dict(repl_env)
    env["SPINDLE_NODE"] = "/nonexistent/bin/node"
    p = start_repl(env=env)
    p.run("%frobnicate", "python", 1)
    out = p.output_after("%frobnicate")
    assert "unknown magic %frobnicate" in out and "Magics:" in out and "%jupyter FILE.ipynb" in out
    p.run("%timeout soon", "python", 1)
    out = p.output_after("%timeout soon")
    assert '"soon" is not a positive number of seconds' in out and "usage: %timeout [SECONDS|off]" in out
    p.run("%reset ruby", "python", 1)
    assert "usage: %reset" in p.output_after("%reset ruby")
    p.run("%load", "python", 1)
    assert "give a file name" in p.output_after("%load")
    # A missing interpreter says which one and how to point Spindle at it.
    p.run("%node", "node", 1)
    p.run("1 + 1", "node", 1, timeout=30)
    out = p.output_after("1 + 1")
    assert "node is not available" in out, out
    assert "SPINDLE_NODE=" in out and "--node" in out, out
    # The other languages still work.
    p.run("%python", "python", 1)
    p.run("print('fine')", "python", 2)
    assert "fine" in p.output_after("print('fine')")


def test_settings_magics(start_repl):
    p = start_repl()
    p.run("%timeout 1", "python", 1)
    assert "timeout: 1 s per execution" in p.screen()
    p.run("import time; time.sleep(10)", "python", 2, timeout=15)
    assert "TimeoutError" in p.output_after("time.sleep(10)") or "timeout" in p.output_after("time.sleep(10)")
    p.run("%timeout off", "python", 2)
    p.run("%cap 200", "python", 2)
    p.run("print('x' * 5000)", "python", 3)
    out = p.output_after("print('x' * 5000)")
    assert "output cap" in out and "bytes dropped" in out, out
    p.run("%cap off", "python", 3)
    p.run("%verbose", "python", 3)
    p.run("print(1)", "python", 4)
    out = p.output_after("print(1)")
    assert '"type":"console"' in out and '"format":"finished"' in out, out
    p.run("%verbose off", "python", 4)


def test_progress_bar_redraws_and_stderr_is_coloured(start_repl, repl_env):
    p = start_repl()
    p.line("import sys, time")
    p.wait_prompt("python", 2)
    p.line('for i in range(5): print(f"\\rprogress {i * 25}%", end="", flush=True); time.sleep(0.05)')
    p.wait_prompt("python", 3)
    out = p.output_after("time.sleep(0.05)")
    assert out.strip().split("\n")[0] == "progress 100%", out
    p.run('print("careful", file=sys.stderr)', "python", 4)
    assert "\x1b[31mcareful" in p.screen(colors=True)
    # NO_COLOR: no colour at all.
    env = dict(repl_env)
    env["NO_COLOR"] = "1"
    q = start_repl(env=env)
    q.run('import sys; print("careful", file=sys.stderr)', "python", 2)
    assert "\x1b[31m" not in q.screen(colors=True)


def test_dataframe_html_becomes_a_text_table(start_repl):
    p = start_repl()
    p.run("import pandas as pd", "python", 2, timeout=60)
    p.run('display(pd.DataFrame({"name": ["Ada", "Bob"], "score": [1.5, 12.25]}))', "python", 3)
    out = p.output_after("12.25]}))")
    lines = out.strip().split("\n")
    assert lines[0].split() == ["name", "score"], out
    assert set(lines[1].replace(" ", "")) == {"─"}, out
    assert lines[2].split() == ["0", "Ada", "1.50"] and lines[3].split() == ["1", "Bob", "12.25"], out
    m = re.search(r"\[text/html saved to (\S+\.html)\]", out)
    assert m and "<table" in open(m.group(1)).read()


def test_ctrl_c_at_prompt_clears_then_twice_exits_and_ends_sessions(start_repl, repl_env):
    p = start_repl()
    p.run("import os; print('pid', os.getpid())", "python", 2)
    pid = int(re.search(r"pid (\d+)", p.screen()).group(1))
    assert psutil.pid_exists(pid)
    p.type("half-typed line")
    p.wait_for("half-typed line")
    p.keys("C-c")
    # Ctrl-C with text clears the line and does not count towards exiting.
    p.wait_prompt("python", 2)
    assert "Ctrl-C again" not in p.screen() and "[exited" not in p.screen()
    p.keys("C-c")
    p.wait_for("(Ctrl-C again or Ctrl-D to exit)")
    p.keys("C-c")
    p.wait_for("[exited 0]")
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the Python session outlived the REPL"
        time.sleep(0.05)


def test_ctrl_d_exits_and_history_persists(start_repl, repl_env, tmp_path):
    p = start_repl()
    p.run("%% echo bash pid $$", "python", 1)
    bash_pid = int(re.search(r"bash pid (\d+)", p.screen()).group(1))
    p.run("print('remember me')", "python", 2)
    p.keys("C-d")
    p.wait_for("[exited 0]")
    deadline = time.monotonic() + 10
    while psutil.pid_exists(bash_pid) and psutil.Process(bash_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the bash session outlived the REPL"
        time.sleep(0.05)
    history = tmp_path / "data" / "spindle" / "repl_history"
    assert "print('remember me')" in history.read_text()
    # What was typed is private: rustyline keeps the history file 0600.
    assert history.stat().st_mode & 0o777 == 0o600, oct(history.stat().st_mode)
    q = start_repl()
    q.keys("Up")
    q.wait_for("[python 1]> print('remember me')")


def test_tab_completion_and_continuations_in_every_language(start_repl):
    p = start_repl()
    # Tab asks the session (Python: jedi, or rlcompleter without it).
    p.type("import collec")
    p.keys("Tab")
    p.wait_for("[python 1]> import collections")
    p.keys("Enter")
    p.wait_prompt("python", 2)
    # Magics complete locally.
    p.type("%sess")
    p.keys("Tab")
    p.wait_for("[python 2]> %sessions")
    p.keys("C-u")
    # A heredoc continues until its end marker.
    p.run("%bash", "bash", 1)
    p.line("cat <<EOF")
    p.line("inside heredoc")
    p.wait_for("inside heredoc\n")
    assert p.last_prompt() == ("bash", 1, "cat <<EOF")
    p.line("EOF")
    p.wait_prompt("bash", 2)
    assert p.output_after("EOF").strip().startswith("inside heredoc")
    # An open brace continues in Node.
    p.run("%node", "node", 1)
    p.line("function inc(a) {")
    p.line("return a + 1")
    p.wait_for("return a + 1\n")
    assert p.last_prompt() == ("node", 1, "function inc(a) {")
    p.line("}")
    p.wait_prompt("node", 2)
    p.run("inc(41)", "node", 3)
    assert "\n42\n" in p.output_after("inc(41)")


def test_third_ctrl_c_restarts_a_session_that_ignores_interrupts(start_repl):
    p = start_repl()
    p.line("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)")
    p.wait_for("time.sleep(60)\n")
    time.sleep(0.3)
    p.keys("C-c")
    time.sleep(0.3)
    p.keys("C-c")
    p.wait_for("a third Ctrl-C restarts the python session")
    assert p.last_prompt()[:2] == ("python", 1)  # still running
    p.keys("C-c")
    p.wait_for("python restarted", timeout=20)
    p.wait_prompt("python", 2, timeout=20)
    p.run("print('alive')", "python", 3)
    assert "alive" in p.output_after("print('alive')")


def test_start_in_another_language(start_repl):
    p = start_repl("--lang", "node", first_prompt=("node", 1))
    p.run("console.log(typeof process)", "node", 2)
    assert "object" in p.output_after("console.log(typeof process)")
