"""Files written whole: a command's output is either complete or as it was before."""
import contextlib
import errno
import os
import re
import shutil
import stat


@contextlib.contextmanager
def replacing(path):
    """A binary file whose contents replace `path`'s: a temporary file in the same directory,
    flushed to disk and renamed over `path` when the block ends, removed if it raises (Ctrl-C
    too). So `path` is either complete or as it was. A path that is not a regular file (a
    device, a pipe) is written directly. So is a file that can be written where no file can be
    created (a read-only directory), or renamed over (a file mounted alone, EBUSY): in place, as
    a plain open would, not all-or-nothing, rather than failing after all the work. OSError names
    `path`, not the temporary file."""
    path = os.fsdecode(path)
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "wb") as f:
            yield f
        return
    target = os.path.realpath(path)  # through a symlink: replace the file, keep the link
    remove_unfinished(target)  # an earlier writer's, killed mid-write (SIGKILL): nothing else would
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain open would give
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and os.path.isfile(target) \
                and os.access(target, os.W_OK):
            with open(target, "wb") as f:
                yield f
            return
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if os.path.exists(target):  # a plain open would keep its mode too
                os.chmod(fd, stat.S_IMODE(os.stat(target).st_mode))
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_all(f, data: bytes) -> None:
    """Write every byte of `data` to the binary file `f`. A raw file (standard output under
    `python -u` or PYTHONUNBUFFERED, whose binary layer is unbuffered) writes part of it and says
    how much when a signal interrupts a write blocked on a slow reader and its handler returns
    (one that only notes the signal, as `send`'s does): the rest was lost, a line cut short."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (no pid is that large)
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def remove_unfinished(path) -> int:
    """Remove the temporary files of writes of `path` that never finished (replacing's, and
    state.save_npz's: `.NAME.PID.RANDOM.tmp` beside it): a writer killed mid-write (the OOM
    killer, kill -9) leaves its file, and nothing else would remove it. A file whose writer (the
    pid in its name) is alive is left: a write running now, maybe by a worker under the same name
    that is about to be refused. Returns how many were removed."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    ours = re.compile(re.escape(f".{base}.") + r"(\d+)\.[^.]+\.tmp")
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0  # the directory is gone or unreadable: the failed write says so, nothing to remove
    for name in names:
        m = ours.fullmatch(name)
        if m is None or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError:
            pass
    return removed
