"""Files a tool or function reads, checked before reading them: a FIFO (named pipe) given where
a file is read blocks the read until another process writes into it, forever if none does (a
FIFO as an annotation file or an image hung tools/test.py and tools/quantize_onnx.py); a device,
a socket or a folder fails deep inside the reader."""
import os
import os.path as osp
import stat
from typing import Optional

from .errors import InputError

KINDS = ((stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISCHR, 'a character device'),
         (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'), (stat.S_ISDIR, 'a folder'))


def special_file_kind(path: str) -> Optional[str]:
    """What ``path`` is ('a FIFO (named pipe)', ...) when it exists and is not a regular file
    (links followed), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in KINDS if test(mode)), None)


def check_input_file(path: str, what: str):
    """FileNotFoundError ('``what`` not found: ``path``') when it does not exist, InputError when
    it is not a regular file."""
    if not osp.exists(path):
        raise FileNotFoundError(f'{what} not found: {path}')
    kind = special_file_kind(path)
    if kind:
        raise InputError(f'{what} {path} is {kind}, not a regular file; give a file')
