"""The Docker sandbox through the native API: per session (`create_session` with `sandbox`) and
for a whole host (`spindle serve --sandbox docker`). Needs Docker and spindle-sandbox:latest
(scripts/sandbox-image.sh; the README's test command builds it); SPINDLE_TEST_DOCKER=0 skips."""
import os
import subprocess

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
