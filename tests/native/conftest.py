"""Fixtures for the native API tests (helpers live in native_helpers.py)."""
import pytest

from native_helpers import Server


@pytest.fixture
def serve(spindle_bin, test_env, tmp_path):
    """Start servers with given flags; all are stopped (SIGTERM) at the end."""
    servers = []

    def start(*args, name=None):
        s = Server(spindle_bin, test_env, tmp_path, *args, name=name or f"serve{len(servers)}")
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def shared_server(spindle_bin, test_env, tmp_path_factory):
    """One server for the tests that do not need special flags."""
    s = Server(spindle_bin, test_env, tmp_path_factory.mktemp("native"), "--max-message",
               "1000000")
    yield s
    s.close()


@pytest.fixture
def client(shared_server):
    c = shared_server.client()
    yield c
