"""`spindle repl --connect --session` redraws the session it reattaches to from the server's
log (a `replay` request): output another client's executions produced is on screen before the
first prompt."""
from test_connect import Client, server  # noqa: F401  (the server fixture)


def test_reattached_session_is_redrawn_from_the_log(start_repl, server):  # noqa: F811
    client = Client(server.conn_file)
    try:
        created = client.request({"type": "create_session", "language": "python",
                                  "name": "earlier"})
        assert created[0]["type"] == "session", created
        code = "for i in range(3): print(f'line {i} from before')\n1 + 41"
        done = client.request({"type": "execute", "session": "earlier", "code": code})
        assert done[-1]["chunk"]["content"]["outcome"] == "ok"
        p = start_repl("--connect", str(server.conn_file), "--session", "earlier",
                       first_prompt=None)
        p.wait_prompt("python", 2)
        screen = p.screen()
        assert "redrawn from the server's log" in screen, screen
        for i in range(3):
            assert f"line {i} from before" in screen, screen
        assert "42" in screen, screen
        assert screen.index("end of the redraw") < screen.rindex("[python 2]"), screen
        p.keys("C-d")
        p.wait_for("[exited 0]")
    finally:
        client.close()
