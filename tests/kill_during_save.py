"""Run a tool and SIGKILL it at the worst moments of a checkpoint save, for the tests:
``python tests/kill_during_save.py write N tools/train.py ARGS...`` dies when epoch N's file is
fully written under its temporary name but not yet renamed into place; ``remove N`` dies when
the outdated checkpoint is about to be deleted, just after epoch N's file is in place."""
import os
import runpy
import signal
import sys

moment, epoch, tool, *args = sys.argv[1:]
target = f'epoch_{epoch}.pth'
replace, remove = os.replace, os.remove


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _replace(src, dst, *a, **kw):
    if moment == 'write' and str(dst).endswith(target):
        _die()
    return replace(src, dst, *a, **kw)


def _remove(path, *a, **kw):
    if moment == 'remove' and str(path).endswith('.pth'):
        _die()
    return remove(path, *a, **kw)


os.replace, os.remove = _replace, _remove
sys.argv = [tool, *args]
sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))  # as `python TOOL` has it
runpy.run_path(tool, run_name='__main__')
