"""The Docker sandbox through the native API: per session (`create_session` with `sandbox`) and
for a whole host (`spindle serve --sandbox docker`). Needs Docker and spindle-sandbox:latest
(scripts/sandbox-image.sh; the README's test command builds it); SPINDLE_TEST_DOCKER=0 skips."""
import json
import os
import pathlib
import shutil
import tempfile
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

from native_helpers import stdout

pytestmark = pytest.mark.skipif(os.environ.get("SPINDLE_TEST_DOCKER") == "0",
                                reason="SPINDLE_TEST_DOCKER=0")


def containers(session_id):
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=spindle.session={session_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_session_asks_for_its_own_sandbox(client):
    s = client.create("python", sandbox={"kind": "docker", "memory": 200 << 20, "pids": 50})
    sb = s["sandbox"]
    assert sb["kind"] == "docker" and sb["limits"]["memory"] == 200 << 20
    assert sb["limits"]["pids"] == 50 and sb["limits"]["network"] == "none"
    chunks = client.execute(s["id"], "import os; print(os.getuid() != 0, os.path.exists('/work'))")
    assert stdout(chunks) == "True True\n"
    assert len(containers(s["id"])) == 1
    client.ok({"type": "close", "session": s["id"]})
    assert containers(s["id"]) == []
    # A session without the field runs on the host, as before.
    plain = client.create("python")
    assert "sandbox" not in plain


def test_a_sandbox_that_cannot_be_had_is_an_error_not_a_host_process(client):
    r = client.request({"type": "create_session", "language": "python",
                        "sandbox": {"kind": "docker", "image": "spindle-no-such:image"}}, 60)
    assert r["type"] == "error", r
    assert "scripts/sandbox-image.sh" in r["reason"], r


def test_serve_sandboxed_puts_every_session_in_a_container(serve, tmp_path):
    srv = serve("--sandbox", "docker", "--memory", "300m")
    c = srv.client()
    s = c.create("bash")
    assert s["sandbox"]["limits"]["memory"] == 300 << 20
    uid = 1000 if os.getuid() == 0 else os.getuid()
    assert stdout(c.execute(s["id"], "id -u; echo $HOME")) == f"{uid}\n/work\n"
    r = c.request({"type": "create_session", "language": "bash", "sandbox": {"kind": "none"}})
    assert r["type"] == "error" and "sandbox" in r["reason"], r


def test_serve_refuses_to_start_without_the_engine(spindle_bin, test_env, tmp_path):
    env = dict(test_env, DOCKER_HOST="unix:///nonexistent/docker.sock")
    p = subprocess.run([str(spindle_bin), "serve", "--sandbox", "docker", "--connection-file",
                        str(tmp_path / "c.json")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert "cannot reach the Docker engine" in p.stderr, p.stderr
    assert not (tmp_path / "c.json").exists()


# --- lifecycle: no container outlives what owns it -------------------------------------------------

def host_containers(pid):
    """Ids of the containers (running or not) whose spindle.host label names process `pid` of
    this machine (`hostname/boot id/pid/start time`)."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=spindle.host", "--format",
                          '{{.ID}} {{.Label "spindle.host"}}'],
                         capture_output=True, text=True, check=True).stdout
    ids = []
    for line in out.splitlines():
        cid, _, label = line.partition(" ")
        parts = label.split("/")
        if len(parts) == 4 and parts[2] == str(pid):
            ids.append(cid)
    return ids


def wait_containers(pid, want_empty=True, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        left = host_containers(pid)
        if bool(left) != want_empty or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_close_restart_and_timeout_leave_no_container_behind(serve):
    srv = serve("--sandbox", "docker")
    c = srv.client()
    s = c.create("python")
    first = containers(s["id"])
    assert len(first) == 1, first
    c.ok({"type": "restart", "session": s["id"]}, 60)
    second = containers(s["id"])
    assert len(second) == 1 and second != first, (first, second)
    chunks = c.execute(s["id"], "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                       "time.sleep(60)", timeout=0.5)
    assert chunks[-1]["content"]["outcome"] == "timeout", chunks[-1]
    third = containers(s["id"])
    assert len(third) == 1 and third != second, (second, third)
    c.ok({"type": "close", "session": s["id"]}, 60)
    assert containers(s["id"]) == []
    assert host_containers(srv.proc.pid) == []


def test_sigterm_of_serve_removes_all_of_its_containers(serve):
    srv = serve("--sandbox", "docker", "--warm", "1", "--warm-languages", "python")
    c = srv.client()
    for lang in ("python", "bash"):
        s = c.create(lang)
        assert stdout(c.execute(s["id"], "echo hi" if lang == "bash" else "print('hi')")) == "hi\n"
    # Two sessions and the warm pool's python.
    assert len(wait_containers(srv.proc.pid, want_empty=False)) >= 3
    assert srv.stop() == 0
    assert host_containers(srv.proc.pid) == []


def test_kill_9_then_a_new_host_start_sweeps_the_dead_hosts_containers(serve, spindle_bin,
                                                                        test_env, tmp_path):
    srv = serve("--sandbox", "docker", name="doomed")
    c = srv.client()
    s = c.create("python")
    assert stdout(c.execute(s["id"], "print(1)")) == "1\n"
    pid = srv.proc.pid
    srv.proc.kill()
    srv.proc.wait(10)
    # The dead host could not clean up: its container is still there.
    assert len(host_containers(pid)) == 1
    # A new host, itself not sandboxed, removes it at start.
    fresh = serve(name="fresh")
    assert wait_containers(pid) == [], "the dead host's container survived a new host start"
    assert fresh.proc.poll() is None


def test_sigterm_of_run_removes_its_container(spindle_bin, test_env):
    p = subprocess.Popen([str(spindle_bin), "run", "--sandbox", "docker", "-l", "python", "-c",
                          "import time\nprint('go', flush=True)\ntime.sleep(60)"],
                         env=test_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"go\n"
        assert len(host_containers(p.pid)) == 1
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 143
    finally:
        if p.poll() is None:
            p.kill()
    assert host_containers(p.pid) == []


def test_sigterm_of_the_repl_removes_its_containers(tmux, spindle_bin, test_env, tmp_path):
    from tmux_pane import Pane
    pane = Pane(tmux, [spindle_bin, "repl", "--no-history", "--sandbox", "docker"], test_env,
                tmp_path)
    try:
        pane.wait_for("]>", timeout=30)
        pane.line("import os; print('home', os.environ['HOME'])")
        pane.wait_for("home /work", timeout=30)
        repl = [k for k in psutil.Process(pane.shell_pid).children()
                if "spindle" in " ".join(k.cmdline())]
        assert len(repl) == 1, repl
        pid = repl[0].pid
        assert len(host_containers(pid)) == 1
        repl[0].send_signal(signal.SIGTERM)
        pane.wait_for("[exited", timeout=30)
        assert host_containers(pid) == []
    finally:
        pane.close()


# --- fail closed: a sandbox that cannot be had is an error, and nothing runs on the host ----------

@pytest.mark.parametrize("case", ["engine unreachable", "image missing"])
def test_run_fails_closed_and_runs_nothing_on_the_host(case, spindle_bin, test_env, tmp_path):
    marker = tmp_path / "ran-on-the-host"
    env = dict(test_env)
    args = [str(spindle_bin), "run", "--sandbox", "docker", "-l", "python", "-c",
            f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"]
    if case == "engine unreachable":
        env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
        want = ["cannot reach the Docker engine at unix:///nonexistent/docker.sock",
                "DOCKER_HOST", "no session is started outside the sandbox"]
    else:
        args += ["--image", "nope:none"]
        want = ["nope:none", "scripts/sandbox-image.sh", "--image"]
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = set()
    while p.poll() is None:
        try:
            for k in psutil.Process(p.pid).children(recursive=True):
                seen.add(" ".join(k.cmdline()))
        except psutil.Error:
            pass
        time.sleep(0.005)
    out, err = p.communicate(10)
    err = err.decode()
    assert p.returncode != 0, err
    for w in want:
        assert w in err, err
    assert not [c for c in seen if "python" in c], f"a process ran on the host: {seen}"
    assert not marker.exists(), "the code ran on the host"


@pytest.mark.parametrize("command", [["repl"], ["mcp"], ["chat", "--base-url", "http://127.0.0.1:9/v1",
                                                          "--model", "m"], ["kernel", "-f", "CONN"]])
def test_every_entry_point_fails_closed(command, spindle_bin, test_env, tmp_path):
    conn = tmp_path / "kernel.json"
    conn.write_text('{"ip": "127.0.0.1", "transport": "tcp", "shell_port": 0, "iopub_port": 0, '
                    '"stdin_port": 0, "control_port": 0, "hb_port": 0, "key": "k", '
                    '"signature_scheme": "hmac-sha256", "kernel_name": "x"}')
    command = [str(conn) if a == "CONN" else a for a in command]
    env = dict(test_env, DOCKER_HOST="unix:///nonexistent/docker.sock")
    p = subprocess.run([str(spindle_bin), *command, "--sandbox", "docker"], env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, p
    assert "cannot reach the Docker engine" in p.stderr, p.stderr
    assert p.stdout == "", "nothing on stdout (an MCP client reads only the protocol there)"


# --- a remote engine: DOCKER_HOST=tcp://… ------------------------------------------------------------

class DockerTcpProxy:
    """127.0.0.1:PORT ↔ /var/run/docker.sock, bytes both ways (attach's upgraded streams too)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            engine = socket.socket(socket.AF_UNIX)
            engine.connect("/var/run/docker.sock")
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def test_a_session_through_a_tcp_engine(spindle_bin, test_env):
    proxy = DockerTcpProxy()
    try:
        env = dict(test_env, DOCKER_HOST=f"tcp://127.0.0.1:{proxy.port}")
        p = subprocess.run([str(spindle_bin), "run", "--sandbox", "docker", "-l", "python", "-c",
                            "import os\nx = 6 * 7\nprint(x, os.environ['HOME'])"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == "42 /work\n"
        assert proxy.connections > 0, "the session did not go through DOCKER_HOST"
    finally:
        proxy.close()


# --- kernelspecs -------------------------------------------------------------------------------------

def test_sandboxed_kernelspec_runs_its_kernel_in_a_container(spindle_bin, test_env, tmp_path):
    import jupyter_client
    subprocess.run([str(spindle_bin), "kernel", "install", "--sandbox", "docker", "--memory", "300m",
                    "--prefix", str(tmp_path), "--languages", "python"], env=test_env, check=True,
                   capture_output=True)
    spec = json.loads((tmp_path / "share/jupyter/kernels/spindle-python-sandbox/kernel.json")
                      .read_text())
    assert spec["argv"][1:] == ["kernel", "-f", "{connection_file}", "--language", "python",
                                "--sandbox", "docker", "--image", "spindle-sandbox:latest",
                                "--memory", "300m", "--cpus", "1", "--pids", "256", "--network",
                                "none", "--workdir-size", "512m"]
    ksm = jupyter_client.kernelspec.KernelSpecManager(
        kernel_dirs=[str(tmp_path / "share/jupyter/kernels")])
    km = jupyter_client.KernelManager(kernel_name="spindle-python-sandbox", kernel_spec_manager=ksm)
    km.start_kernel(env=test_env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out = []
        kc.execute_interactive("import os; print(os.environ['HOME'], os.getuid() != 0)",
                               output_hook=lambda m: out.append(m["content"].get("text", "")),
                               timeout=60)
        assert "".join(out) == "/work True\n"
        pid = km.provisioner.process.pid
        assert len(host_containers(pid)) == 1
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert wait_containers(pid) == []


# --- spindle mcp --sandbox docker --------------------------------------------------------------------

def test_mcp_sessions_run_in_the_sandbox(spindle_bin, test_env):
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    pids = []

    async def body():
        params = StdioServerParameters(command=str(spindle_bin),
                                       args=["mcp", "--sandbox", "docker", "--memory", "300m"],
                                       env=dict(test_env))
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    r = await s.call_tool("execute", {
                        "code": "import os\nprint(os.environ['HOME'], open("
                                "'/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())"})
                    t = "\n".join(c.text for c in r.content if c.type == "text")
                    assert t.startswith(f"/work {300 << 20}\n"), t
                    mcp = [p for p in psutil.process_iter(["cmdline"])
                           if (p.info["cmdline"] or [])[:2] == [str(spindle_bin), "mcp"]]
                    pids.extend(p.pid for p in mcp)
                    assert any(host_containers(pid) for pid in pids), pids
    anyio.run(body)
    # The client closed stdin: the server ended its sessions, and their containers.
    for pid in pids:
        assert wait_containers(pid) == []


def test_a_host_directory_is_the_work_directory_read_only_unless_asked(spindle_bin, test_env,
                                                                        tmp_path, serve):
    d = tmp_path / "project"
    d.mkdir()
    (d / "data.txt").write_text("from the host\n")
    d.chmod(0o777)  # the sandbox's user is not the host's
    code = ("print(open('data.txt').read().strip())\n"
            "try:\n    open('out.txt', 'w').write('x'); print('wrote')\n"
            "except OSError as e:\n    print('refused', e.errno)\n")
    run = [str(spindle_bin), "run", "--sandbox", "docker", "-l", "python", "--mount", str(d)]
    p = subprocess.run(run + ["-c", code], env=test_env, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout == "from the host\nrefused 30\n", (p.stdout, p.stderr)
    assert not (d / "out.txt").exists()
    p = subprocess.run(run + ["--mount-rw", "-c", code], env=test_env, capture_output=True,
                       text=True, timeout=120)
    assert p.stdout == "from the host\nwrote\n", (p.stdout, p.stderr)
    assert (d / "out.txt").read_text() == "x"
    # session_info says so.
    srv = serve("--sandbox", "docker", "--mount", str(d))
    s = srv.client().create("python")
    assert s["sandbox"]["limits"]["mount"] == str(d.resolve()), s
    assert "mount_writable" not in s["sandbox"]["limits"], s


def test_an_invalid_mount_path_is_a_clear_error(spindle_bin, test_env, tmp_path):
    marker = tmp_path / "ran"
    for bad in (tmp_path / "missing", tmp_path / "file.txt"):
        if bad.name == "file.txt":
            bad.write_text("")
        p = subprocess.run([str(spindle_bin), "run", "--sandbox", "docker", "--mount", str(bad),
                            "-l", "python", "-c", f"open({str(marker)!r}, 'w')"],
                           env=test_env, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        assert f"invalid mount path {bad}" in p.stderr, p.stderr
        assert not marker.exists()


def test_permission_denied_on_the_socket_is_said_plainly(spindle_bin, test_env):
    sock = "/var/run/docker.sock"
    if os.getuid() != 0 or not os.path.exists(sock):
        pytest.skip("needs root (to run as another user) and the local socket")
    if os.stat(sock).st_mode & 0o006:
        pytest.skip("the socket is open to every user here")
    env = dict(test_env, HOME="/tmp")
    env.pop("DOCKER_HOST", None)
    # A copy the other user can reach (the checkout may be private to root).
    d = pathlib.Path(tempfile.mkdtemp(prefix="spindle-perm-"))
    d.chmod(0o755)
    exe = d / "spindle"
    shutil.copy(spindle_bin, exe)
    exe.chmod(0o755)
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(exe), "run", "--sandbox", "docker", "-l", "python", "-c",
                        "print(1)"], env=env, cwd="/", capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0
    assert f"permission denied on the Docker socket {sock}" in p.stderr, p.stderr
    assert "docker` group" in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    shutil.rmtree(d)
