# Spindle's Python loader (`python -c <this>`): runs the bootstrap, `spindle_bootstrap.py` in
# the run directory, from its compiled code when the code cache holds a copy made by this very
# interpreter. Unmarshalling the code costs about 0.3 MB; compiling the source costs about 3.5 MB
# that the allocator keeps for the life of the session.
#
# SPINDLE_CODE_CACHE, when set, is a path prefix in a private directory the host checked (owned
# by this user, not writable by others); the interpreter's tag and version complete the name.
# Anything wrong with the cache (missing, stale, unreadable, unwritable) falls back to compiling.
import marshal
import os
import sys


def _spindle_code():
    cache = os.environ.pop("SPINDLE_CODE_CACHE", "")
    if cache:
        cache = "%s-%s-%x.bin" % (cache, sys.implementation.cache_tag, sys.hexversion)
        try:
            with open(cache, "rb") as f:
                code = marshal.load(f)
            if type(code) is type(_spindle_code.__code__):
                return code
        except Exception:
            pass
    with open(os.path.join(os.environ.get("SPINDLE_RUNDIR", ""), "spindle_bootstrap.py"), "rb") as f:
        code = compile(f.read(), "<spindle bootstrap>", "exec")
    if cache:
        tmp = "%s.%d.tmp" % (cache, os.getpid())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                marshal.dump(code, f)
            os.replace(tmp, cache)
        except Exception:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return code


_spindle_boot = _spindle_code()
del _spindle_code
exec(_spindle_boot)
