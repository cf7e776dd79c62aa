"""One training run per work_dir: a run holds an OS lock on ``WORK_DIR/run.lock`` for its
lifetime, so that a second run, or a ``--resume``, started while it lives stops with one line
naming it, instead of both overwriting each other's checkpoints and one log.

The lock is filelock's ``lock_descriptor`` on the file: ``flock`` on Linux and macOS,
``LockFileEx`` on the file's first byte on Windows. The OS drops it when its holder dies,
however it dies, so a lock file left by a killed run is taken over (with a warning naming that
run). The holder's details follow the first byte (on Windows another process cannot read a
locked byte). The file is never deleted (deleting it while another run opens it would let two
runs hold locks on two files); a run that ends empties it. Only one process of a distributed
run holds it (rank 0): its other ranks are the same run. The lock covers the processes of one
machine (and NFS clients where the server supports it): runs on several machines writing into
one shared folder are not covered. Where the platform or the file system has no file locks,
the run trains without one, with a warning.

The lock file is opened without following a symbolic link and must be a regular file: in a
work dir shared with others, a link there could point at someone else's file.

Why not filelock's ``FileLock`` as it is (filelock 4.3, judged for issue 28): it gives two of
the three guarantees, not the third, and changes a fourth. It does lock with ``flock`` (dropped
when the holder dies) on a file opened with ``O_NOFOLLOW``. But it records no holder with a
native lock (its ``pid`` is the soft fallback's marker only; its ``Timeout`` names the lock
file), so the one line a second run gets could not say which run holds the work dir, and
writing and reading the holder's details would stay ours, on its file, beside it. And where
the file system has no ``flock`` it falls back to a soft lock, a marker file that outlives a
killed run, which would refuse the next run in that work dir until someone deletes it; here a
run trains without a lock and says so. Nor does it refuse a lock file that is not a regular
file. The OS lock itself is filelock's (``lock_descriptor``); what is ours is opening the file,
the holder's details and the message.
"""
import atexit
import errno
import json
import os
import os.path as osp
import socket
import stat
import sys
import time
import warnings

from mmengine.logging import print_log

from .errors import Argument, InputError
from .run_files import WORK_DIR, foreign_file_error, refuse_link

with warnings.catch_warnings():
    # Where fcntl is missing outside Windows, filelock warns on import that its FileLock falls
    # back to a soft lock; we use its descriptor lock alone, and lock_work_dir says what holds.
    warnings.filterwarnings('ignore', 'only soft file lock is available')
    from filelock import lock_descriptor, unlock_descriptor

LOCK_NAME = 'run.lock'
# The byte the lock covers on Windows; the holder's details start after it.
LOCK_BYTES = 1
# The lock files this process holds (absolute path -> descriptor, None where the file system
# has no locks): taking a held one again is a no-op, so that our tools (before the Runner) and
# the configs' hook (in it) may both take it.
_HELD = {}
# What a platform (a Python without fcntl outside Windows) or a file system without file locks
# (some network and FUSE file systems) answers.
NO_LOCKS = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
OPEN_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0)
              | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
WHAT = 'the run lock file a training run writes'


def _path(work_dir: str) -> str:
    return osp.join(osp.abspath(work_dir), LOCK_NAME)


def _open(path: str, work_dir: str) -> int:
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        refuse_link(path, WHAT)
    except OSError as err:
        raise InputError(f'cannot write into the work dir {work_dir} ({err.strerror}); choose '
                         f'another ', WORK_DIR) from None
    try:  # O_NOFOLLOW and O_NONBLOCK: a link or a FIFO put there since the check neither
        fd = os.open(path, OPEN_FLAGS, 0o666)  # leads elsewhere nor blocks
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise foreign_file_error(path, stat.S_IFLNK, WHAT) from None
        raise InputError(f'cannot write the run lock {path} ({err.strerror}); fix the work '
                         f'dir\'s permissions or choose another ', WORK_DIR) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise foreign_file_error(path, mode, WHAT)
    return fd


def _details(fd: int) -> str:
    """The holder's details (from byte 0 where the OS lets us read it, else after the lock's
    byte)."""
    for offset in (0, LOCK_BYTES):
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = iter(lambda: os.read(fd, 65536), b'')
            return b''.join(chunks).decode(errors='replace')
        except OSError:
            continue
    return ''


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f'pid {holder["pid"]} on {holder["host"]}, started {holder["started"]}: '
                f'{holder["command"]}')
    except (ValueError, KeyError, TypeError):
        return 'a run that has not yet written its details'


def lock_work_dir(work_dir: str) -> None:
    """Hold ``work_dir``'s run lock until :func:`unlock_work_dir` or the process ends; an
    InputError naming the holder when another live run holds it, or naming what is in the
    lock file's place when it is not a regular file."""
    path = _path(work_dir)
    if path in _HELD:
        return
    fd = _open(path, work_dir)
    try:
        locked = lock_descriptor(fd, blocking=False)
    except OSError as err:
        os.close(fd)
        if err.errno not in NO_LOCKS:
            raise
        print_log(f'{path}: no file locks here ({err.strerror}); training without the work '
                  f'dir lock, so nothing stops a second run in {work_dir} from overwriting this '
                  f'one\'s checkpoints', logger='current', level=30)
        _HELD[path] = None
        return
    if not locked:
        holder = _describe(_details(fd))
        os.close(fd)
        raise InputError(f'another run is training in {osp.dirname(path)} ({holder}); two runs '
                         f'in one work_dir would overwrite each other\'s checkpoints: wait for '
                         f'it to end (then ', Argument('resume', True), ' continues it), stop '
                         'it, or choose another ', WORK_DIR)
    left = _details(fd)
    if left.strip():
        print_log(f'{path}: the run that held it ({_describe(left)}) is no longer alive; '
                  f'taking the work dir over', logger='current', level=30)
    details = json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                              started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                              command=' '.join([osp.basename(sys.executable), *sys.argv])))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b'\n' * LOCK_BYTES + details.encode())
    if not any(_HELD.values()):
        atexit.register(_release_at_exit, os.getpid())
    _HELD[path] = fd


def unlock_work_dir(work_dir: str) -> None:
    """Release the lock this process holds on ``work_dir`` (if any), leaving no details."""
    _release(_path(work_dir))


def _release(path: str) -> None:
    fd = _HELD.pop(path, None)
    if fd is None:
        return
    os.ftruncate(fd, LOCK_BYTES)
    unlock_descriptor(fd)
    os.close(fd)


def _release_at_exit(pid: int) -> None:
    """A process that ends by itself (a refusal, an error, Ctrl-C) releases its locks without
    details, so that the next run takes the work dir without calling the last one dead; one
    killed outright leaves them, and the next run says so. Not in a process forked from it."""
    if os.getpid() == pid:
        for path in list(_HELD):
            _release(path)
