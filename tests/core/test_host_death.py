"""Issue 12, fault 2: a host that is killed outright (SIGKILL, or jupyter_client's `killpg` of the
kernel's process group) leaves no process of its sessions behind.

A bash session runs `sleep 201 & sleep 101`: bash gives the background job a process group of its
own, so the PTY's hangup never reaches it. Each test kills the host while that runs and then
requires that, 2 s after the host is gone, no process of the session (nor anything else the host
started) is alive. Zombies do not count: they are dead, waiting for whoever adopted them to reap
them.
"""
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import zmq

JOB = "sleep 201 & sleep 101"
GRACE = 2.0


def wait_for_job(host_pid, timeout=30):
    """The host's descendants once both sleeps of JOB run, and their session ids; fails with
    what was there instead."""
    host = psutil.Process(host_pid)
    deadline = time.monotonic() + timeout
    kids = []
    while time.monotonic() < deadline:
        kids = host.children(recursive=True)
        sleeps = [k for k in kids if _cmdline(k) in (["sleep", "201"], ["sleep", "101"])]
        if len(sleeps) == 2:
            sids = set()
            for k in kids:
                with contextlib.suppress(OSError):
                    sids.add(os.getsid(k.pid))
            sids.discard(os.getsid(0))  # never the test's own session, whatever happens
            return kids, sids
        time.sleep(0.05)
    raise AssertionError(f"the job never ran: {[(k.pid, _cmdline(k)) for k in kids]}")


def _cmdline(p):
    with contextlib.suppress(psutil.Error):
        return p.cmdline()
    return None


def _alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(kids, sids):
    """Processes still alive (zombies excepted) among `kids` or in any of the sessions `sids`."""
    left = {k.pid: k for k in kids if _alive(k)}
    for p in psutil.process_iter():
        with contextlib.suppress(OSError):
            if os.getsid(p.pid) in sids and _alive(p):
                left[p.pid] = p
    return list(left.values())


def describe(procs):
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(f"pid {p.pid} sid {os.getsid(p.pid)} ppid {p.ppid()} {p.status()}: {' '.join(p.cmdline())}")
    return out


def assert_nothing_left(job, died_at):
    """Poll until nothing of `kids` and their sessions is alive, for at most GRACE seconds after
    the host died; then kill what is left (so a failure leaks into no other test) and fail."""
    deadline = died_at + GRACE
    left = leftovers(*job)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = leftovers(*job)
    names = describe(left)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
    assert not left, f"{GRACE} s after the host died, still alive: {names}"


def sigkill(proc):
    """SIGKILL a host started by this test and reap it; returns when it died."""
    proc.kill()
    proc.wait(timeout=10)
    return time.monotonic()


def test_killed_spindle_run_leaves_no_background_job(spindle_bin, test_env):
    proc = subprocess.Popen([str(spindle_bin), "run", "--lang", "bash", "-c", JOB],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=test_env)
    try:
        job = wait_for_job(proc.pid)
        died = sigkill(proc)
        assert_nothing_left(job, died)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


class Native:
    """Just enough of the native API (signed JSON over a DEALER) to start a job."""

    def __init__(self, conn_file):
        info = json.loads(conn_file.read_text())
        self.key = info["key"].encode()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{info['ip']}:{info['router_port']}")

    def close(self):
        self.sock.close()
        self.ctx.term()

    def send(self, body):
        rid = uuid.uuid4().hex
        data = json.dumps({"id": rid, **body}).encode()
        self.sock.send_multipart([hmac.new(self.key, data, hashlib.sha256).hexdigest().encode(), data])
        return rid

    def reply(self, rid, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(200):
                _, data = self.sock.recv_multipart()
                msg = json.loads(data)
                if msg["id"] == rid:
                    return msg
        raise AssertionError(f"no reply to {rid} within {timeout} s")


def test_killed_spindle_serve_leaves_no_background_job(spindle_bin, test_env, tmp_path):
    conn = tmp_path / "serve.json"
    proc = subprocess.Popen([str(spindle_bin), "serve", "--connection-file", str(conn)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=test_env,
                            start_new_session=True)
    client = None
    try:
        deadline = time.monotonic() + 30
        while not conn.exists():
            assert proc.poll() is None, "spindle serve exited"
            assert time.monotonic() < deadline, "no connection file"
            time.sleep(0.05)
        client = Native(conn)
        created = client.reply(client.send({"type": "create_session", "language": "bash", "name": "job"}))
        assert created["type"] == "session", created
        client.send({"type": "execute", "session": "job", "code": JOB})
        job = wait_for_job(proc.pid)
        died = sigkill(proc)
        assert_nothing_left(job, died)
    finally:
        if client:
            client.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def bash_kernelspec(spindle_bin, test_env, tmp_path, monkeypatch):
    """The spindle kernelspecs in a private Jupyter path, for jupyter_client to start."""
    prefix = tmp_path / "prefix"
    env = dict(test_env, JUPYTER_PATH=str(prefix / "share" / "jupyter"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "xdg"),
               JUPYTER_PLATFORM_DIRS="0")
    subprocess.run([str(spindle_bin), "--python", sys.executable, "kernel", "install", "--prefix", str(prefix)],
                   env=env, check=True, capture_output=True, timeout=60)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return "spindle-bash"


@pytest.mark.parametrize("how", ["sigkill", "jupyter_client"])
def test_killed_spindle_kernel_leaves_no_background_job(bash_kernelspec, how):
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name=bash_kernelspec)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    proc = km.provisioner.process
    try:
        kc.wait_for_ready(timeout=30)
        kc.execute(JOB)
        job = wait_for_job(proc.pid)
        if how == "sigkill":
            died = sigkill(proc)
        else:
            # What a frontend does to a kernel it gives up on: `killpg(pgid, SIGKILL)` of the
            # kernel's process group (jupyter_client starts it in a session of its own).
            km.shutdown_kernel(now=True)
            proc.wait(timeout=10)
            died = time.monotonic()
        assert_nothing_left(job, died)
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
