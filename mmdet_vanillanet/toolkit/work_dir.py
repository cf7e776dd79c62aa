"""A run's work_dir: writable before anything starts, never overwriting an earlier run's
checkpoints unless asked, and the checkpoint --resume continues from, wherever the config's
checkpoint hook writes them."""
import glob
import os
import os.path as osp
import re
import tempfile

from mmengine.logging import print_log

from ..errors import InputError, TruncatedCheckpointError
from ..serialization import safe_load

RESUMABLE = re.compile(r'(epoch|iter)_(\d+)\.pth')


def require_writable(work_dir: str):
    """Create work_dir and write a file into it, so that an unwritable folder (or a full
    disk) is named before a run starts rather than at its first log line or checkpoint."""
    try:
        os.makedirs(work_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir) as f:
            f.write(b'\0' * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise InputError(f'cannot write into the work dir {work_dir} ({err.strerror}); choose '
                         f'another with --work-dir') from None


def checkpoint_dirs(cfg) -> list:
    """Where the run's checkpoints are: work_dir, and the checkpoint hook's out_dir joined
    with work_dir's last folder, as MMEngine's CheckpointHook places them."""
    dirs = [cfg.work_dir]
    out_dir = ((cfg.get('default_hooks') or {}).get('checkpoint') or {}).get('out_dir')
    if out_dir and '://' not in str(out_dir):
        dirs.append(osp.join(out_dir, osp.basename(cfg.work_dir.rstrip(osp.sep))))
    return dirs


def existing_checkpoints(cfg):
    """Checkpoints an earlier run left, which a new run would overwrite."""
    found = []
    for folder in checkpoint_dirs(cfg):
        found += sorted(glob.glob(osp.join(folder, '*.pth')))
    if osp.exists(osp.join(cfg.work_dir, 'last_checkpoint')):
        found.append(osp.join(cfg.work_dir, 'last_checkpoint'))
    return found


def guard_work_dir(cfg, resume, overwrite: bool):
    """A fresh run must not replace an earlier run's checkpoints unless asked to; asked to
    (--overwrite), it removes them, so that a later --resume cannot pick one of them up."""
    found = existing_checkpoints(cfg)
    if not found or resume:
        return
    names = ', '.join(found[:4]) + (', ...' if len(found) > 4 else '')
    if not overwrite:
        raise FileExistsError(
            f'an earlier run left checkpoints ({names}). Pass --resume to continue that run, '
            f'--work-dir to train elsewhere, or --overwrite to replace them.')
    for path in found:
        os.remove(path)
    print_log(f'--overwrite: removed the earlier run\'s checkpoints ({names})',
              logger='current', level=30)


def resume_checkpoint(cfg):
    """The checkpoint to resume from: the one MMEngine's ``last_checkpoint`` names, else the
    newest ``epoch_N``/``iter_N`` file (``best_*`` files lack the optimizer state) in any of
    ``checkpoint_dirs``, passing over a truncated one (a write cut short by a kill or a full
    disk) with a warning for the one before it. None when the run has no checkpoint at all (a
    new run starts, as MMEngine's auto-resume does). An error when it has some but none is
    readable, or when one cannot be loaded safely: resuming from an earlier file, or from
    none, would silently redo or replace the run's work."""
    steps = {p: int(m.group(2)) for folder in checkpoint_dirs(cfg)
             for p in glob.glob(osp.join(folder, '*.pth'))
             if (m := RESUMABLE.fullmatch(osp.basename(p)))}
    candidates = sorted(steps, key=steps.get, reverse=True)
    last = osp.join(cfg.work_dir, 'last_checkpoint')
    if osp.exists(last):
        with open(last) as f:
            named = osp.abspath(f.read().strip())
        if osp.isfile(named) and named not in map(osp.abspath, candidates):
            candidates.append(named)  # written where the config no longer says
        candidates.sort(key=lambda p: osp.abspath(p) != named)  # stable: the named one first
    for path in candidates:
        try:
            safe_load(path, mmap=True)
        except TruncatedCheckpointError as err:
            print_log(f'not resuming from {path}: {err}', logger='current', level=30)
            continue
        return path
    if candidates:
        raise InputError(f'--resume: none of the run\'s checkpoints is readable '
                         f'({", ".join(candidates[:4])}); pass --overwrite to start the run '
                         f'again')
    return None
