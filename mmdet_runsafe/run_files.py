"""The files a training run writes into its work_dir (and the checkpoint hook's ``out_dir``):
never through a symbolic link or into anything else it did not create there, and each one
recorded, so that ``tools/train.py --overwrite`` removes what runs wrote and nothing else.

The record is ``run_files.jsonl`` in the folder of the files it names: one line per write, the
file's name (no folder), size and modification time once complete. A file is a run's when it is
a regular file whose latest line still matches it: a file another user or tool wrote, or
rewrote since, at one of those names is not. The record is trusted only when it is a regular
file of the user reading it (POSIX), so that no one else's record can name our files.
"""
import json
import os
import os.path as osp
import stat

from mmengine.logging import print_log

from .errors import Argument, InputError

RECORD_NAME = 'run_files.jsonl'
# The work dir, named in messages (our tools word it as --work-dir).
WORK_DIR = Argument('work_dir')
KINDS = ((stat.S_ISLNK, 'a symbolic link'), (stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'),
         (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a device'), (stat.S_ISBLK, 'a device'))
NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)


def foreign_file_error(path: str, mode: int, what: str) -> InputError:
    """The error for a path where a run writes a file of its own but finds something else (a
    link, a folder, a FIFO): it was not made by a run, and a run writes neither into it nor
    through it."""
    kind = next((name for test, name in KINDS if test(mode)), 'not a regular file')
    return InputError(f'{path} is {kind}, not {what}; a run never writes into or through one it '
                      f'did not create (in a shared work dir it could lead to someone else\'s '
                      f'file): remove it, or choose another ', WORK_DIR)


def refuse_link(path: str, what: str) -> None:
    """Raise :func:`foreign_file_error` when something other than a regular file (a symbolic
    link above all) is at ``path``, where the run will write ``what``."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise foreign_file_error(path, mode, what)


def last_checkpoint(work_dir: str) -> str:
    """MMEngine's ``WORK_DIR/last_checkpoint`` (the newest checkpoint's path), refused when a
    link or anything but a regular file is in its place: MMEngine writes it with a plain
    open, which would follow a link."""
    path = osp.join(work_dir, 'last_checkpoint')
    refuse_link(path, 'the file in which MMEngine names the last checkpoint')
    return path


def _identity(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns]


def record_written(path: str) -> None:
    """Add the complete file ``path`` to its folder's record. A record that cannot be written
    (a link or a folder in its place, no rights) costs only --overwrite's knowledge of the
    file, with a warning: the file itself is in place."""
    folder = osp.dirname(osp.abspath(path))
    st = os.lstat(path)
    line = json.dumps(dict(name=osp.basename(path), identity=_identity(st))) + '\n'
    record = osp.join(folder, RECORD_NAME)
    try:
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f'{record} is not a regular file')
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as err:
        print_log(f'cannot record {path} in {record} ({err.strerror or err}): tools/train.py '
                  f'will not remove it when asked to overwrite the run', logger='current',
                  level=30)


def _trusted(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and (not hasattr(os, 'getuid') or st.st_uid == os.getuid())


def written_by_runs(folder: str) -> set:
    """The absolute paths of the files in ``folder`` that runs wrote and that are as they left
    them (see the module docstring)."""
    try:
        fd = os.open(osp.join(folder, RECORD_NAME), os.O_RDONLY | NOFOLLOW)
    except OSError:
        return set()
    with os.fdopen(fd, 'rb') as f:
        lines = f.read().decode(errors='replace').splitlines() if _trusted(fd) else []
    latest = {}
    for line in lines:
        try:
            entry = json.loads(line)
            name, identity = entry['name'], entry['identity']
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
        if isinstance(name, str) and name == osp.basename(name) and name not in ('', '.', '..'):
            latest[name] = identity
    ours = set()
    for name, identity in latest.items():
        path = osp.abspath(osp.join(folder, name))
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _identity(st) == identity:
            ours.add(path)
    return ours
