"""An idle kernel gives back the mappings of the code it ran.

The host maps 64 KiB of its binary around every page of code it ever ran, so after start-up and
after a few executions about 10 MB of code it is not running stays resident. An idle kernel drops
those mappings (the pages stay in the page cache), a second after it is up and after each idle
spell. The test reads the host's resident memory from /proc; its bounds are loose (they check the
direction and size of the change, not a benchmark figure). That the heap a burst leaves free goes
back is checked by tests/native/test_flood_memory.py.
"""
import os
import time

from jupyter_kit import kernel, run, stdout

MiB = 1 << 20


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def binary_rss(pid):
    """Resident bytes of the host's own binary (its code and constants)."""
    path = os.readlink(f"/proc/{pid}/exe")
    total = 0
    current = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = len(head) >= 6 and head[5] == path
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_an_idle_kernel_releases_the_code_it_ran(jupyter_env):
    with kernel() as (km, kc):
        pid = km.provisioner.process.pid
        # A second after start-up, the binary's start-up code is unmapped.
        assert wait_until(lambda: binary_rss(pid) < 4 * MiB, 10), \
            f"the binary still has {binary_rss(pid) // 1024} kB resident after start-up"
        # Running code maps back what it needs...
        for i in range(20):
            reply, iopub = run(kc, f"print({i})")
            assert reply["content"]["status"] == "ok" and stdout(iopub) == f"{i}\n"
        touched = binary_rss(pid)
        # ...and the code still works after its mappings went (nothing but the file's own bytes
        # comes back): run something new after the release.
        assert wait_until(lambda: binary_rss(pid) < 4 * MiB or binary_rss(pid) < touched, 20), \
            f"after an idle spell the binary still has {binary_rss(pid) // 1024} kB resident"
        reply, iopub = run(kc, "import json; print(json.dumps({'a': [1, 2]}))")
        assert reply["content"]["status"] == "ok"
        assert stdout(iopub) == '{"a": [1, 2]}\n'
