"""The Jupyter history store under compaction (issue 12, fault 5), with real `spindle kernel`
processes and jupyter_client.

A store of more than 40,000 lines is compacted when a kernel starts: rewritten with the newest
20,000 entries and renamed over the old one. That rewrite used the default mode (a private store
became world-readable), and the lock was taken on the store itself, so a second kernel waiting
on the old inode woke after the rename, read the stale file and claimed the same session number.
"""
import json
import os
import pathlib
import signal
import subprocess

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

pytestmark = pytest.mark.timeout(300)

TIMEOUT = 60
COMPACT_AT = 40_000


def big_history(path, lines=COMPACT_AT + 10, pad=300):
    """A private store over the compaction threshold: entries of sessions 1 to 3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    filler = "#" + "x" * pad
    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"session": 1 + i * 3 // lines, "line": i + 1,
                                "input": f"old_{i} = {i}  {filler}"}) + "\n")
    path.chmod(0o600)


class Kernel:
    """`spindle kernel -f` started by hand (umask 022, like a login shell), with a client."""

    def __init__(self, spindle_bin, env, tmp_path, name):
        self.cf = str(tmp_path / f"{name}.json")
        write_connection_file(self.cf, ip="127.0.0.1", key=os.urandom(16).hex().encode())
        env = dict(env)
        env.pop("JPY_PARENT_PID", None)
        self.proc = subprocess.Popen(
            [str(spindle_bin), "kernel", "-f", self.cf, "--language", "python"],
            env=env, umask=0o022, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "wb"))
        self.kc = None

    def connect(self):
        self.kc = BlockingKernelClient(connection_file=self.cf)
        self.kc.load_connection_file()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def run(self, code):
        reply = self.kc.execute(code, reply=True, timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]

    def session(self):
        reply = self.kc.history(hist_access_type="tail", n=1, output=False, raw=True,
                                reply=True, timeout=TIMEOUT)
        (session, _line, _input), = reply["content"]["history"]
        return session

    def close(self):
        if self.kc is not None:
            if self.proc.poll() is None:
                self.kc.shutdown()
            self.kc.stop_channels()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError("the kernel did not exit after shutdown_request")


def entries(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


@pytest.fixture
def kernel_env(test_env, tmp_path):
    env = dict(test_env)
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def store_of(env):
    return os.path.join(env["XDG_DATA_HOME"], "spindle", "history", "python.jsonl")


def test_history_keeps_mode_0600_after_compaction(spindle_bin, kernel_env, tmp_path):
    store = pathlib.Path(store_of(kernel_env))
    big_history(store)
    k = Kernel(spindle_bin, kernel_env, tmp_path, "k")
    try:
        k.connect()
        k.run("after_compaction = 1")
        session = k.session()
    finally:
        k.close()
    assert (os.stat(store).st_mode & 0o777) == 0o600, oct(os.stat(store).st_mode)
    kept = entries(store)
    assert len(kept) <= 20_002, "the store was not compacted"
    assert {"session": session, "line": 1, "input": "after_compaction = 1"}.items() <= \
        next(e for e in kept if e.get("input") == "after_compaction = 1").items()


def test_two_kernels_starting_during_compaction_claim_distinct_sessions(spindle_bin, kernel_env,
                                                                        tmp_path):
    store = pathlib.Path(store_of(kernel_env))
    for round_ in range(6):
        big_history(store)
        # Both start at once: the second opens the store while the first is compacting it.
        ks = [Kernel(spindle_bin, kernel_env, tmp_path, f"r{round_}k{i}") for i in range(2)]
        sessions = []
        try:
            for i, k in enumerate(ks):
                k.connect()
                k.run(f"round_{round_}_kernel_{i} = {i}")
                sessions.append(k.session())
        finally:
            for k in ks:
                k.close()
        assert sessions[0] != sessions[1], f"round {round_}: both kernels claimed {sessions[0]}"
        kept = entries(store)
        for i, s in enumerate(sessions):
            code = f"round_{round_}_kernel_{i} = {i}"
            found = [e for e in kept if e.get("input") == code]
            assert [e["session"] for e in found] == [s], \
                f"round {round_}: kernel {i}'s entry (session {s}) is missing or duplicated: {found}"
        assert (store.stat().st_mode & 0o777) == 0o600
