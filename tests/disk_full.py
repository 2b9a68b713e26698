"""A full disk for the tests of atomic writes: a file whose writes fail with ENOSPC once ``room``
bytes (or characters) are written, after writing what fitted -- in-process, and in the
subprocess driver of tests/test_outputs_atomic.py."""
import errno
import os


class DiskFullAfter:
    """Wraps the open file ``f``; everything but ``write`` is the file's own."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if not isinstance(data, (bytes, str)):
            data = bytes(data)  # torch's writer hands memoryviews
        if len(data) > self.room:
            self.f.write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
