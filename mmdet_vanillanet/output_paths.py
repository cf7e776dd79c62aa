"""Where a tool or function will write a file, checked before any work: a run of minutes must
not end in a folder that does not exist, a folder given as the file, or one it cannot write."""
import os.path as osp
import tempfile

from .errors import InputError


def check_output_file(path: str, what: str):
    """Raise InputError when ``path`` (named ``what`` in the message, e.g. '--out') is a folder,
    or its folder does not exist or cannot be written (tried, not guessed from permissions)."""
    if osp.isdir(path):
        raise InputError(f'{what} {path} is a folder; give a file name')
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise InputError(f'{what} {path}: the folder {folder} does not exist')
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f'{what} {path}: cannot write into {folder} ({err.strerror})') from None
