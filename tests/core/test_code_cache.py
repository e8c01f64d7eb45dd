"""The Python code cache: sessions run the bootstrap from its compiled copy.

Compiling the 55 kB bootstrap in every session left ~3.5 MB with the allocator for the life of
the session; unmarshalling a compiled copy costs a tenth of that. The host keeps the copy in
`$XDG_CACHE_HOME/spindle/python/` (0700, checked to be the user's own). These tests drive the
real binary with `spindle run` and a private XDG_CACHE_HOME.
"""
import marshal
import os
import stat
import subprocess
import sys

import pytest

CODE = "import sys; print('ran', 6 * 7); print(sys.modules['_spindle'].__name__)\n"


def run(spindle_bin, test_env, cache_home, code=CODE, **extra):
    env = dict(test_env, XDG_CACHE_HOME=str(cache_home))
    env.pop("SPINDLE_CODE_CACHE", None)
    env.update(extra)
    p = subprocess.run([str(spindle_bin), "--python", sys.executable, "run", "-l", "python", "-c", code],
                       capture_output=True, text=True, env=env, timeout=60)
    return p


def entries(cache_home):
    d = cache_home / "spindle" / "python"
    return sorted(d.glob("bootstrap-*.bin")) if d.exists() else []


def test_first_session_fills_a_private_cache_and_the_next_uses_it(spindle_bin, test_env, tmp_path):
    p = run(spindle_bin, test_env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "ran 42" in p.stdout and "_spindle" in p.stdout
    [entry] = entries(tmp_path)
    tag = "%s-%x" % (sys.implementation.cache_tag, sys.hexversion)
    assert entry.name.endswith(f"-{tag}.bin"), entry.name
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    # It is this interpreter's compiled bootstrap.
    code = marshal.loads(entry.read_bytes())
    assert code.co_filename == "<spindle bootstrap>"

    # The next session loads it: replace it with compiled code of our own, which then runs.
    marker = tmp_path / "loaded-from-cache"
    planted = compile(
        f"open({str(marker)!r}, 'w').write('x')\n"
        f"exec(compile(open(__import__('os').environ['SPINDLE_RUNDIR'] + '/spindle_bootstrap.py').read(),"
        f" '<spindle bootstrap>', 'exec'))\n",
        "<planted>", "exec")
    entry.write_bytes(marshal.dumps(planted))
    p = run(spindle_bin, test_env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "ran 42" in p.stdout
    assert marker.exists(), "the second session compiled the bootstrap instead of using the cache"


def test_a_corrupt_or_foreign_cache_entry_falls_back_to_compiling(spindle_bin, test_env, tmp_path):
    assert run(spindle_bin, test_env, tmp_path).returncode == 0
    [entry] = entries(tmp_path)
    for junk in (b"", b"\x00garbage" * 100, marshal.dumps(12345)):
        entry.write_bytes(junk)
        p = run(spindle_bin, test_env, tmp_path)
        assert p.returncode == 0, (junk[:20], p.stderr)
        assert "ran 42" in p.stdout


def test_a_cache_others_can_write_is_never_used(spindle_bin, test_env, tmp_path):
    """Whoever can write the cache can run code in every session: a directory others can write
    to is refused, and a planted entry there does not run."""
    d = tmp_path / "spindle" / "python"
    assert run(spindle_bin, test_env, tmp_path).returncode == 0
    [entry] = entries(tmp_path)
    marker = tmp_path / "planted-ran"
    entry.write_bytes(marshal.dumps(compile(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n",
                                            "<planted>", "exec")))
    os.chmod(d, 0o777)
    try:
        p = run(spindle_bin, test_env, tmp_path)
        assert p.returncode == 0, p.stderr
        assert "ran 42" in p.stdout
        assert not marker.exists(), "a cache entry in a world-writable directory was run"
    finally:
        os.chmod(d, 0o700)


def test_an_unwritable_cache_still_runs_sessions(spindle_bin, test_env, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory would go")
    p = run(spindle_bin, test_env, blocked)
    assert p.returncode == 0, p.stderr
    assert "ran 42" in p.stdout


def test_code_cache_can_be_turned_off(spindle_bin, test_env, tmp_path):
    p = run(spindle_bin, test_env, tmp_path, SPINDLE_CODE_CACHE="0")
    assert p.returncode == 0, p.stderr
    assert "ran 42" in p.stdout
    assert entries(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through file modes")
def test_a_read_only_entry_directory_is_tolerated(spindle_bin, test_env, tmp_path):
    d = tmp_path / "spindle" / "python"
    d.mkdir(parents=True, mode=0o700)
    os.chmod(d, 0o500)
    try:
        p = run(spindle_bin, test_env, tmp_path)
        assert p.returncode == 0, p.stderr
        assert "ran 42" in p.stdout
    finally:
        os.chmod(d, 0o700)
