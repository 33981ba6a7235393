"""Runs a command line and SIGKILLs itself in the middle of one of its file writes.

    python tests/_kill_at_write.py PATTERN N MODULE [ARGS...]

Every file of keras_transfer is written through `keras_transfer.files.atomic_path`.
This wrapper lets the N-th write whose destination contains PATTERN write its
temporary file, truncates that file to half its size (a write cut short), and
kills the process with SIGKILL before the rename: the state a power cut or an
OOM kill leaves. The test then runs the same command without the wrapper.
"""

import contextlib
import os
import runpy
import signal
import sys

pattern, nth, module, *args = sys.argv[1:]
nth = int(nth)

from keras_transfer import files  # noqa: E402

original = files.atomic_path
seen = 0


@contextlib.contextmanager
def atomic_path(path, *, suffix=None):
    global seen
    with original(path, suffix=suffix) as tmp:
        yield tmp
        if pattern in os.fspath(path):
            seen += 1
            if seen == nth:
                size = os.path.getsize(tmp)
                with open(tmp, "r+b") as f:
                    f.truncate(size // 2)
                print(f"KILLED writing {path}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)


files.atomic_path = atomic_path
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
