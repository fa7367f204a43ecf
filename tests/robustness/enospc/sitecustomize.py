"""A disk that fills up, for the fault tests, without root: put this folder on PYTHONPATH and set
DDPIPE_TEST_ENOSPC_UNDER (a folder) and DDPIPE_TEST_ENOSPC_AFTER (bytes). Every file opened for writing
under that folder then counts its bytes, and the write that passes the budget fails with ENOSPC, as the
kernel's does (no file name). Python starts by importing `sitecustomize`, so the stage runs unchanged.

Writes that skip Python's file objects (safetensors and torch.save write from native code) are not
counted: test such stages on a real small tmpfs instead.
"""
import builtins
import errno
import io
import os
import shutil

UNDER = os.environ.get("DDPIPE_TEST_ENOSPC_UNDER")

if UNDER:
    UNDER = os.path.realpath(UNDER)
    budget = [int(os.environ.get("DDPIPE_TEST_ENOSPC_AFTER", "0"))]
    real_open = builtins.open
    shutil._USE_CP_SENDFILE = False  # copyfile's sendfile fast path would write past the counter

    class Filling:
        """A writable file under UNDER: its writes draw on the shared budget."""

        def __init__(self, f):
            self._f = f

        def write(self, data):
            if len(data) > budget[0]:
                budget[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            budget[0] -= len(data)
            return self._f.write(data)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def fileno(self):  # so PIL and shutil write through write() instead of the descriptor
            raise io.UnsupportedOperation("fileno")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __iter__(self):
            return iter(self._f)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def filling_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")
        if writing and os.path.realpath(os.fsdecode(file)).startswith(UNDER + os.sep):
            return Filling(f)
        return f

    builtins.open = io.open = filling_open
