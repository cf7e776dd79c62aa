"""Where a tool or function writes a file, and how: the path checked before any work (a run of
minutes must not end in a folder that does not exist, a folder given as the file, one it cannot
write, a symbolic link or one of its own inputs), and the file written into a new file of our
own beside it, renamed into place when complete (``new_file_for``), so that nothing the user
made is replaced or written through unless they named that very file with ``--force``."""
import contextlib
import errno
import os
import os.path as osp
import secrets
import tempfile
from typing import Iterator, Optional, Sequence

from .errors import InputError

# Writes that fail for lack of room: a full disk, a quota, a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_output_file(path: str, what: str, inputs: Sequence[Optional[str]] = (),
                      link_replaced: bool = False):
    """Raise InputError when ``path`` (named ``what`` in the message, e.g. '--out') is a
    symbolic link (a write would go into its target; unless ``link_replaced``: the file is
    renamed over the link), a folder, one of ``inputs`` (the files the same work reads; also
    through a link), or when its folder does not exist or cannot be written (tried, not guessed
    from permissions)."""
    if osp.islink(path) and not link_replaced:
        raise InputError(f'{what} {path} is a symbolic link (to {os.readlink(path)}); the tools '
                         f'do not write through links: give the file itself or another name')
    if osp.isdir(path):
        raise InputError(f'{what} {path} is a folder; give a file name')
    for source in inputs:
        if source and is_same_file(path, source):
            raise InputError(f'{what} {path} is a file this command reads ({source}): writing '
                             f'it would lose that file; choose another name')
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise InputError(f'{what} {path}: the folder {folder} does not exist')
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f'{what} {path}: cannot write into {folder} ({err.strerror})') from None


def check_new_output_file(path: str, what: str, inputs: Sequence[Optional[str]] = (),
                          default: Optional[str] = None) -> bool:
    """``check_output_file``, and an existing file refused (a report is not overwritten)
    unless ``path`` is ``default``, a script's own output that it is meant to regenerate (a
    committed results file): True then, for ``new_file_for(path, replace=True)``, which
    replaces a link there rather than writing through it."""
    if default is not None and osp.abspath(path) == osp.abspath(default):
        check_output_file(path, what, inputs, link_replaced=True)
        return True
    check_output_file(path, what, inputs)
    if osp.lexists(path):
        raise FileExistsError(f'{what} {path} exists; remove it or choose another name')
    return False


def write_text(path: str, text: str, replace: bool = False):
    """``text`` written as ``path`` through ``new_file_for`` (a new file renamed into place)."""
    with new_file_for(path, replace) as partial:
        with open(partial, 'w', encoding='utf-8') as f:
            f.write(text)


def is_same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (the same path, or links and hard links to it)."""
    if osp.abspath(a) == osp.abspath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:  # one of them does not exist (or is not a local path: a URL)
        return False


@contextlib.contextmanager
def new_file_for(path: str, replace: bool = False) -> Iterator[str]:
    """A new, empty file of our own beside ``path`` for the work to fill: a unique name
    (``NAME.XXXXXXXX.partial``, never a file of the user's), created exclusively and never
    through a symbolic link, with the mode the user's umask gives. When the block completes it
    becomes ``path``: renamed over an existing file only with ``replace`` (the user's
    ``--force``), otherwise linked into place so that a file that appeared there meanwhile is
    kept (FileExistsError). However the block ends otherwise (an error, an interrupt the tool
    turned into an exception), the file is removed; an OSError naming ours, or a write that
    failed for lack of room naming none (a full disk, a quota, a file-size limit), names
    ``path``."""
    folder, name = osp.split(osp.abspath(path))
    for _ in range(100):
        partial = osp.join(folder, f'{name}.{secrets.token_hex(4)}.partial')
        try:
            # 0o666 less the umask, as open() gives any new file; O_EXCL: never an existing file
            # or link (tempfile.mkstemp would give 0600).
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f'could not create a new file beside {path}')
    try:
        yield partial
        if replace:
            os.replace(partial, path)
        else:
            _link_new(partial, path)
    except OSError as err:
        if err.filename == partial or (err.filename is None and err.errno in NO_ROOM):
            raise OSError(err.errno, err.strerror, path) from None
        raise
    finally:
        if osp.lexists(partial):
            os.remove(partial)


def _link_new(partial: str, path: str):
    """``partial`` becomes ``path``, which must not exist (a rename that never replaces)."""
    try:
        os.link(partial, path)
    except FileExistsError:
        raise FileExistsError(f'{path} appeared while it was being written (another process?); '
                              f'it was kept, and the result was not written') from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # A file system without hard links (FAT, some network shares): check, then rename.
        if osp.lexists(path):
            raise FileExistsError(f'{path} appeared while it was being written; it was kept, '
                                  f'and the result was not written') from None
        os.replace(partial, path)


def check_show_dir(work_dir: str, show_dir: str):
    """MMDetection's visualization hook paints each test image into
    ``WORK_DIR/<the run's timestamp>/SHOW_DIR`` under the image's own file name: a new folder
    for a relative SHOW_DIR, but an absolute one (or one that climbs out with ..) is taken as
    it is, where the pictures would replace any file of those names (the dataset's own images,
    when it is their folder). Such a folder must be new or empty."""
    fresh = osp.join(osp.abspath(work_dir), '00000000_000000')  # a run's timestamp folder
    target = osp.normpath(osp.join(fresh, show_dir))
    if target == fresh or target.startswith(fresh + os.sep) or not osp.lexists(target):
        return
    if osp.islink(target) or not osp.isdir(target) or os.listdir(target):
        raise InputError(f'--show-dir {show_dir}: the pictures are written under the test '
                         f'images\' file names into {target}, which is not a new or empty folder '
                         f'(they would replace its files; the dataset\'s images, if it is their '
                         f'folder): give a new or empty folder, or a relative path (a new folder '
                         f'in the run\'s log folder)')
