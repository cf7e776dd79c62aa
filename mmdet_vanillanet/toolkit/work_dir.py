"""A run's work_dir: never overwrite an earlier run's checkpoints unless asked, and choose the
checkpoint --resume continues from."""
import glob
import os
import os.path as osp
import re

from mmengine.logging import print_log

from ..serialization import TruncatedCheckpointError, safe_load


def existing_checkpoints(work_dir: str):
    """Checkpoints an earlier run left in work_dir, which a new run would overwrite."""
    found = sorted(glob.glob(osp.join(work_dir, '*.pth')))
    if osp.exists(osp.join(work_dir, 'last_checkpoint')):
        found.append(osp.join(work_dir, 'last_checkpoint'))
    return found


def guard_work_dir(work_dir: str, resume, overwrite: bool):
    """A fresh run must not replace an earlier run's checkpoints unless asked to; asked to
    (--overwrite), it removes them, so that a later --resume cannot pick one of them up."""
    found = existing_checkpoints(work_dir) if osp.isdir(work_dir) else []
    if not found or resume:
        return
    names = ', '.join(os.path.basename(f) for f in found[:4])
    if not overwrite:
        raise FileExistsError(
            f'{work_dir} already holds checkpoints of an earlier run ({names}). Pass --resume '
            f'to continue that run, --work-dir to train elsewhere, or --overwrite to replace '
            f'them.')
    for path in found:
        os.remove(path)
    print_log(f'--overwrite: removed the earlier run\'s checkpoints in {work_dir} ({names})',
              logger='current', level=30)


def _step(path: str) -> int:
    return int(re.search(r'_(\d+)\.pth$', path).group(1))


def resume_checkpoint(work_dir: str):
    """The checkpoint to resume from: the one MMEngine's ``last_checkpoint`` names, else the
    newest ``epoch_N``/``iter_N`` file (``best_*`` files lack the optimizer state), passing over a
    truncated or corrupt one (a write cut short by a kill or a full disk) with a warning for the
    one before it. None when there is none. A file that cannot be loaded safely is an error, not
    passed over: resuming from an earlier file, or from none, would silently redo or replace
    the run's work."""
    candidates = sorted((p for p in glob.glob(osp.join(work_dir, '*.pth'))
                         if re.fullmatch(r'(epoch|iter)_\d+\.pth', osp.basename(p))),
                        key=_step, reverse=True)
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.exists(last):
        with open(last) as f:
            named = osp.basename(f.read().strip())
        candidates.sort(key=lambda p: osp.basename(p) != named)  # stable: the named one first
    for path in candidates:
        try:
            safe_load(path, mmap=True)
        except TruncatedCheckpointError as err:
            print_log(f'not resuming from {path}: {err}', logger='current', level=30)
            continue
        return path
    return None
