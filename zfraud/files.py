"""Files written whole: a command's output is either complete or as it was before."""
import contextlib
import os
import stat


@contextlib.contextmanager
def replacing(path):
    """A binary file whose contents replace `path`'s: a temporary file in the same directory,
    flushed to disk and renamed over `path` when the block ends, removed if it raises (Ctrl-C
    too). So `path` is either complete or as it was. A path that is not a regular file (a
    device, a pipe) is written directly. OSError names `path`, not the temporary file."""
    path = os.fsdecode(path)
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "wb") as f:
            yield f
        return
    target = os.path.realpath(path)  # through a symlink: replace the file, keep the link
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain open would give
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if os.path.exists(target):  # a plain open would keep its mode too
                os.chmod(fd, stat.S_IMODE(os.stat(target).st_mode))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
