"""One training run per work_dir: a run holds an OS lock (``fcntl.flock``) on ``WORK_DIR/run.lock``
for its lifetime, so that a second run, or a ``--resume``, started while it lives stops with one
line naming it, instead of both overwriting each other's checkpoints and one log.

The kernel drops the lock when its holder dies, however it dies, so a lock file left by a
killed run is taken over (with a warning naming that run). The file is never deleted (deleting
it while another run opens it would let two runs hold locks on two files); a run that ends
empties it. Only one process of a distributed run holds it (rank 0): its other ranks are the
same run. flock covers the processes of one machine (and NFS clients where the server supports
it): runs on several machines writing into one shared folder are not covered.
"""
import fcntl
import json
import os
import os.path as osp
import socket
import sys
import time

from mmengine.logging import print_log

from .errors import InputError

LOCK_NAME = 'run.lock'
# The lock files this process holds (absolute path -> open file): taking a held one again is a
# no-op, so that our tools (before the Runner) and the configs' hook (in it) may both take it.
_HELD = {}


def _path(work_dir: str) -> str:
    return osp.join(osp.abspath(work_dir), LOCK_NAME)


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return (f'pid {holder["pid"]} on {holder["host"]}, started {holder["started"]}: '
                f'{holder["command"]}')
    except (ValueError, KeyError, TypeError):
        return 'a run that has not yet written its details'


def lock_work_dir(work_dir: str) -> None:
    """Hold ``work_dir``'s run lock until :func:`unlock_work_dir` or the process ends; an
    InputError naming the holder when another live run holds it."""
    path = _path(work_dir)
    if path in _HELD:
        return
    try:
        os.makedirs(osp.dirname(path), exist_ok=True)
        lock = open(path, 'a+')  # not 'w': the holder's details must stay readable
    except OSError as err:
        raise InputError(f'cannot write into the work dir {work_dir} ({err.strerror}); choose '
                         f'another with --work-dir') from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = _describe(lock.read())
        lock.close()
        raise InputError(f'another run is training in {osp.dirname(path)} ({holder}); two runs '
                         f'in one work_dir would overwrite each other\'s checkpoints: wait for '
                         f'it to end (then --resume continues it), stop it, or choose another '
                         f'--work-dir') from None
    lock.seek(0)
    left = lock.read()
    if left.strip():
        print_log(f'{path}: the run that held it ({_describe(left)}) is no longer alive; '
                  f'taking the work dir over', logger='current', level=30)
    lock.seek(0)
    lock.truncate()
    json.dump(dict(pid=os.getpid(), host=socket.gethostname(),
                   started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                   command=' '.join([osp.basename(sys.executable), *sys.argv])), lock)
    lock.flush()
    _HELD[path] = lock


def unlock_work_dir(work_dir: str) -> None:
    """Release the lock this process holds on ``work_dir`` (if any), emptying the file."""
    lock = _HELD.pop(_path(work_dir), None)
    if lock is None:
        return
    lock.seek(0)
    lock.truncate()
    lock.flush()
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
