"""A real terminal for end-to-end tests: `Pane` runs a command (the `spindle` REPL, `spindle chat`)
in a detached tmux session on a private server (`-L`), types with `send-keys`, and reads the
screen with `capture-pane`, polling with time limits (never sleeping blindly). `close()` ends
tmux and every process the command started.

Shared by tests/repl and tests/llm (import it as `tmux_pane`; tests/ is on sys.path through
tests/conftest.py).
"""
import os
import pathlib
import re
import shlex
import subprocess
import time
import uuid

import psutil

PROMPT = re.compile(r"^\[(python|bash|node) (\d+)\]> ?(.*)$")
# Chat mode (`spindle chat`, `%chat`): `[chat]> `.
CHAT_PROMPT = re.compile(r"^\[chat\]> ?(.*)$")


def is_prompt(line):
    """A REPL prompt line of either mode, with or without typed text."""
    return bool(PROMPT.match(line) or CHAT_PROMPT.match(line))


class Pane:
    def __init__(self, tmux, argv, env, cwd, width=120, height=50):
        self.tmux = tmux
        self.sock = "spindle-test-" + uuid.uuid4().hex[:12]
        self.env = env
        # A shell wrapper keeps the pane open after the REPL exits, so a test can read how it
        # exited. It traps SIGINT (Ctrl-C reaches the whole foreground group): an untrapped one
        # would end the shell, and the pane, as soon as the REPL exits.
        log = os.environ.get("SPINDLE_TEST_LOG")
        redirect = f" 2>>{shlex.quote(log)}" if log else ""
        script = (
            "trap true INT; "
            + " ".join(shlex.quote(str(a)) for a in argv)
            + redirect
            + '; echo "[exited $?]"; sleep 600'
        )
        self._tmux(
            "-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", str(height),
            "-c", str(cwd), "sh", "-c", script,
        )
        self._tmux("set-option", "-g", "history-limit", "20000")
        self.shell_pid = int(self._tmux("display-message", "-p", "#{pane_pid}").strip())
        self.socket_path = self._tmux("display-message", "-p", "#{socket_path}").strip()
        self.prompts_seen = 0

    def _tmux(self, *args, check=True):
        r = subprocess.run(
            [self.tmux, "-L", self.sock, *args],
            env=self.env, capture_output=True, text=True, timeout=20,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {r.stderr}")
        return r.stdout

    # -- typing ---------------------------------------------------------------------------------

    def keys(self, *keys):
        """Send tmux key names (Enter, C-c, Up, ...)."""
        self._tmux("send-keys", *keys)

    def type(self, text):
        """Type literal text (no Enter)."""
        self._tmux("send-keys", "-l", "--", text)

    def line(self, text):
        self.type(text)
        self.keys("Enter")

    # -- reading --------------------------------------------------------------------------------

    def screen(self, colors=False):
        args = ["capture-pane", "-p", "-J", "-S", "-20000"]
        if colors:
            args.append("-e")
        return self._tmux(*args)

    def wait_for(self, pattern, timeout=20.0, colors=False):
        """Poll the screen until `pattern` (a regex or a plain string) appears; return the match."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(colors=colors)
            m = rx.search(text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear within {timeout} s; screen:\n{text}")
            time.sleep(0.05)

    def last_prompt(self):
        """The last prompt line on screen as (language, count, typed text), or None."""
        for line in reversed(self.screen().rstrip("\n").split("\n")):
            m = PROMPT.match(line)
            if m:
                return m.group(1), int(m.group(2)), m.group(3)
        return None

    def wait_prompt(self, lang, count, timeout=20.0):
        """Wait for a *new* empty prompt `[lang count]> ` as the last non-empty line (new: more
        prompt lines than at the previous wait, so a prompt still on screen from before the
        keys were typed does not count)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [l for l in self.screen().split("\n") if l.strip()]
            prompts = sum(1 for l in lines if is_prompt(l))
            if (
                prompts > self.prompts_seen
                and lines
                and re.fullmatch(rf"\[{lang} {count}\]> ?", lines[-1])
            ):
                self.prompts_seen = prompts
                return
            if time.monotonic() > deadline:
                text = "\n".join(lines[-40:])
                raise AssertionError(f"no new [{lang} {count}]> prompt within {timeout} s; screen:\n{text}")
            time.sleep(0.05)

    def wait_chat_prompt(self, timeout=20.0):
        """Wait for a *new* empty chat prompt `[chat]> ` as the last non-empty line (new as in
        `wait_prompt`: more prompt lines, of either mode, than at the previous wait)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [l for l in self.screen().split("\n") if l.strip()]
            prompts = sum(1 for l in lines if is_prompt(l))
            if prompts > self.prompts_seen and lines and re.fullmatch(r"\[chat\]> ?", lines[-1]):
                self.prompts_seen = prompts
                return
            if time.monotonic() > deadline:
                text = "\n".join(lines[-40:])
                raise AssertionError(f"no new [chat]> prompt within {timeout} s; screen:\n{text}")
            time.sleep(0.05)

    def wait_count(self, pattern, n, timeout=20.0):
        """Poll until `pattern` is on screen at least `n` times; return the screen. For text that
        appears again and again (a question asked each round), `n` comes from what the test
        has seen so far, not from the screen after typing (it may already be there)."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if len(rx.findall(text)) >= n:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} did not appear {n} times within {timeout} s; screen:\n{text}")
            time.sleep(0.05)

    def run(self, text, lang, count, timeout=20.0):
        """Type one line, press Enter, wait for the next prompt `[lang count]> `."""
        self.line(text)
        self.wait_prompt(lang, count, timeout)
        return self.screen()

    def output_after(self, marker):
        """Screen text after the last prompt line that ends with `marker` (else after the last
        occurrence of `marker` anywhere)."""
        text = self.screen()
        m = None
        for m in re.finditer(r"^\[(?:\w+ \d+|chat)\]> .*" + re.escape(marker) + r"$", text, re.M):
            pass
        if m:
            return text[m.end():]
        i = text.rfind(marker)
        return text[i + len(marker):] if i >= 0 else ""

    # -- ending ---------------------------------------------------------------------------------

    def processes(self):
        try:
            return psutil.Process(self.shell_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self):
        """End tmux; every process the command started must end with it. Returns the ones still
        alive 10 s later (zombies excepted), described, after killing them: a caller fails on
        a non-empty list, and nothing leaks into the next test either way."""
        procs = self.processes()
        self._tmux("kill-server", check=False)
        # tmux leaves its socket file behind.
        if self.socket_path.startswith("/"):
            pathlib.Path(self.socket_path).unlink(missing_ok=True)
        _, alive = psutil.wait_procs(procs, timeout=10)
        left = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {p.pid} ({p.status()}): {' '.join(p.cmdline())}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        return left
