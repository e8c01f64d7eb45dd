"""jupyter_kernel_test conformance for the three Spindle kernels (every applicable sample filled),
plus JEP 65 (iopub_welcome) for each."""
import jupyter_kernel_test as jkt


class PythonKernel(jkt.KernelTests):
    kernel_name = "spindle-python"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('oops', file=sys.stderr)"
    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import zipim", "matches": {"zipimport"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q", "1 +* 2"]
    code_page_something = "print?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "'a' * 3", "result": "'aaa'"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
        {"code": (
            "import io, matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(figsize=(2, 2), dpi=50)\n"
            "ax.plot([0, 1], [1, 0])\n"
            "plt.show()\n"
        ), "mime": "image/png"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class PythonIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = "spindle-python"
    support_iopub_welcome = True


class BashKernel(jkt.KernelTests):
    kernel_name = "spindle-bash"
    language_name = "bash"
    file_extension = ".sh"

    code_hello_world = "echo 'hello, world'"
    code_stderr = "echo 'oops' >&2"
    completion_samples = [{"text": "ech", "matches": {"echo"}}]
    complete_code_samples = ["echo hi", "for i in 1 2; do echo $i; done"]
    incomplete_code_samples = ["for i in 1 2; do", "echo 'unclosed", "if true; then"]
    invalid_code_samples = ["fi", "done"]
    code_generate_error = "false"
    code_display_data = [
        {"code": "display_html '<b>hi</b>'", "mime": "text/html"},
        {"code": "printf '<svg xmlns=\"http://www.w3.org/2000/svg\"/>' > /tmp/spindle-jkt.svg; "
                 "display /tmp/spindle-jkt.svg; rm -f /tmp/spindle-jkt.svg", "mime": "image/svg+xml"},
    ]
    code_inspect_sample = "echo"
    code_clear_output = "clear_output"
    # Bash has no values, so no execute_result, and jupyter_kernel_test's history test (which
    # replays execute_result samples) cannot run; test_history below covers history instead.

    def test_history(self):
        codes = ["echo one", "echo two", "echo one"]
        self.flush_channels()
        for code in codes:
            reply, _ = self.execute_helper(code)
            self.assertEqual(reply["content"]["status"], "ok")
        self.flush_channels()
        self.kc.history(hist_access_type="tail", n=3, output=False, raw=True)
        tail = self.get_non_kernel_info_reply(timeout=jkt.TIMEOUT)["content"]["history"]
        self.assertEqual([h[2] for h in tail], codes)
        session, start = tail[0][0], tail[0][1]
        self.kc.history(hist_access_type="range", session=session, start=start, stop=start + 2,
                        output=False, raw=True)
        rng = self.get_non_kernel_info_reply(timeout=jkt.TIMEOUT)["content"]["history"]
        self.assertEqual([(h[0], h[1], h[2]) for h in rng],
                         [(session, start, "echo one"), (session, start + 1, "echo two")])
        self.kc.history(hist_access_type="search", pattern="echo o*", unique=True,
                        output=False, raw=True)
        found = self.get_non_kernel_info_reply(timeout=jkt.TIMEOUT)["content"]["history"]
        self.assertEqual([h[2] for h in found], ["echo one"])


    def test_execute_result(self):
        # Bash has no values: output is a stream, and no execute_result is made up.
        self.flush_channels()
        reply, msgs = self.execute_helper("expr 1 + 2 + 3")
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual([m["msg_type"] for m in msgs], ["stream"])
        self.assertEqual(msgs[0]["content"]["text"], "6\n")

    def test_pager(self):
        # `?` is a glob character in bash, not a help request: the code runs as bash.
        self.flush_channels()
        reply, msgs = self.execute_helper("echo nomatch_zz?")
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual(reply["content"]["payload"], [])
        self.assertEqual(msgs[0]["content"]["text"], "nomatch_zz?\n")


class BashIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = "spindle-bash"
    support_iopub_welcome = True


class NodeKernel(jkt.KernelTests):
    kernel_name = "spindle-node"
    language_name = "javascript"
    file_extension = ".js"

    code_hello_world = "console.log('hello, world')"
    code_stderr = "console.error('oops')"
    # Matches replace the text from cursor_start, here the part after "Math.".
    completion_samples = [{"text": "Math.ma", "matches": {"max"}}]
    complete_code_samples = ["1 + 1", "function f(x) { return x * 2 }"]
    incomplete_code_samples = ["function f(x) {", "[1, 2,"]
    invalid_code_samples = ["let = = 3", "1 +* 2"]
    code_generate_error = "throw new Error('boom')"
    code_execute_result = [
        {"code": "1 + 2 + 3", "result": "6"},
        {"code": "[1, 2, 3].map(n => n * n)", "result": "[ 1, 4, 9 ]"},
    ]
    code_history_pattern = "1?+?2*"
    supported_history_operations = ("tail", "range", "search")
    code_display_data = [
        {"code": "display.html('<b>hi</b>')", "mime": "text/html"},
        {"code": "display.markdown('*hi*')", "mime": "text/markdown"},
    ]
    code_inspect_sample = "Math"
    code_clear_output = "clear_output()"


    def test_pager(self):
        # `Math?` is not JavaScript; only the Python kernel turns `name?` into a page.
        self.flush_channels()
        reply, msgs = self.execute_helper("Math?")
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "SyntaxError")
        self.assertEqual(reply["content"]["payload"], [])


class NodeIopubWelcome(jkt.IopubWelcomeTests):
    kernel_name = "spindle-node"
    support_iopub_welcome = True
