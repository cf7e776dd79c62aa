"""A run's work_dir: writable before anything starts, never overwriting an earlier run's
checkpoints unless asked, and the checkpoint --resume continues from, wherever the config's
checkpoint hook writes them."""
import glob
import os
import os.path as osp
import re
import stat
import tempfile

from mmengine.logging import print_log

from .errors import InputError, TruncatedCheckpointError
from .run_files import (
    RECORD_NAME,
    WORK_DIR,
    foreign_file_error,
    last_checkpoint,
    refuse_link,
    written_by_runs,
)
from .serialization import safe_load

RESUMABLE = re.compile(r'(epoch|iter)_(\d+)\.pth')


def require_writable(work_dir: str):
    """Create work_dir and write a file into it, so that an unwritable folder (or a full
    disk) is named before a run starts rather than at its first log line or checkpoint."""
    blocker = _file_in_the_way(work_dir)
    if blocker is not None:  # makedirs said only "(File exists)" or "(Not a directory)"
        what = 'is a file' if blocker == osp.abspath(work_dir) else f'is in {blocker}, a file'
        raise InputError(f'the work dir {work_dir} {what}, not a folder; choose another with '
                         f'--work-dir')
    try:
        os.makedirs(work_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir) as f:
            f.write(b'\0' * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise InputError(f'cannot write into the work dir {work_dir} ({err.strerror}); choose '
                         f'another with --work-dir') from None


def _file_in_the_way(folder: str):
    """The file (anything but a folder) at ``folder``'s path or at the first of its parents
    that exists, if any."""
    path = osp.abspath(folder)
    while not osp.lexists(path) and osp.dirname(path) != path:
        path = osp.dirname(path)
    return None if osp.isdir(path) else path


def checkpoint_dirs(cfg) -> list:
    """Where the run's checkpoints are: work_dir, and the checkpoint hook's out_dir joined
    with work_dir's last folder, as MMEngine's CheckpointHook places them."""
    dirs = [cfg.work_dir]
    out_dir = ((cfg.get('default_hooks') or {}).get('checkpoint') or {}).get('out_dir')
    if out_dir and '://' not in str(out_dir):
        dirs.append(osp.join(out_dir, osp.basename(cfg.work_dir.rstrip(osp.sep))))
    return dirs


# What a run writes under names of its own: MMEngine's checkpoint hook (epoch_N, iter_N,
# best_*) and its last_checkpoint file.
RUN_NAMES = re.compile(r'(epoch|iter)_\d+\.pth|best_.*\.pth|last_checkpoint')
# MMEngine writes each run's logs into a new WORK_DIR/TIMESTAMP folder, following a link there.
LOG_FOLDER = re.compile(r'\d{8}_\d{6}')


def existing_checkpoints(cfg) -> list:
    """What an earlier run left that a new one would replace or a later --resume could pick
    up: the files runs recorded writing (``run_files``), and any file at a name runs write."""
    found = set()
    for folder in checkpoint_dirs(cfg):
        ours = written_by_runs(folder)
        for name in (os.listdir(folder) if osp.isdir(folder) else []):
            path = osp.abspath(osp.join(folder, name))
            if path in ours or (RUN_NAMES.fullmatch(name) and not osp.isdir(path)):
                found.add(path)
    return sorted(found)


def files_read(cfg) -> set:
    """The real paths of the files the config names (load_from, a backbone's init_cfg
    checkpoint, ...): a command reads them, so --overwrite never removes one."""
    found, stack = set(), [cfg.to_dict()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str) and osp.isfile(node):
            found.add(osp.realpath(node))
    return found


def _some_paths(paths) -> str:
    """The first four ``paths``, joined, and '...' for the rest."""
    return ', '.join(paths[:4]) + (', ...' if len(paths) > 4 else '')


def guard_work_dir(cfg, resume, overwrite: bool):
    """A fresh run must not replace an earlier run's checkpoints unless asked to; asked to
    (--overwrite), it removes the files runs of this project wrote (their record, see
    ``run_files``), so that a later --resume cannot pick one of them up, and nothing else: no
    file the command reads, none another tool or user put there. Where such a file has a name
    the new run writes (it would replace it), it stops before removing anything."""
    found = existing_checkpoints(cfg)
    if not found or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f'an earlier run left checkpoints ({_some_paths(found)}). Pass --resume to continue '
            f'that run, --work-dir to train elsewhere, or --overwrite to replace them.')
    ours = set().union(*map(written_by_runs, checkpoint_dirs(cfg)))
    read = files_read(cfg)
    removed = [p for p in found if p in ours and osp.realpath(p) not in read]
    kept = [p for p in found if p not in removed]
    replaced = [p for p in kept if RUN_NAMES.fullmatch(osp.basename(p))]
    if replaced:
        why = [f'{p} (' + ('this command reads it' if osp.realpath(p) in read else
                           'no run recorded writing it') + ')' for p in replaced]
        raise FileExistsError(
            f'--overwrite removes only the files runs recorded writing in {RECORD_NAME}, and '
            f'none the command reads; the new run would replace {_some_paths(why)}: move them out '
            f'of the work dir, or choose another --work-dir')
    for path in removed:
        os.remove(path)
    done = [f'removed the earlier run\'s files ({_some_paths(removed)})'] if removed else []
    if kept:  # files of the earlier run, at names the new run does not write
        done.append(f'kept {_some_paths(kept)}, which this command reads')
    print_log(f'--overwrite: {"; ".join(done)}', logger='current', level=30)


def refuse_links(cfg, training: bool):
    """Before a Runner is built: in a work dir shared with others, a symbolic link (or other
    non-file) where the run writes (a training run's ``last_checkpoint``; each run's log folder,
    named by the second it starts; the copy of the config) would lead its writes elsewhere.
    And the config the command reads must not be that copy: MMEngine's Runner writes the run's
    config (flattened, --cfg-options applied) to ``WORK_DIR/<config's file name>`` with a
    plain open, which would replace the user's file (its comments and ``_base_``) or rewrite
    a training run's record of its config with a test's options."""
    work_dir = cfg.work_dir
    if training:
        last_checkpoint(work_dir)
    if cfg.filename:
        copy = osp.join(work_dir, osp.basename(cfg.filename))
        refuse_link(copy, "the copy of the run's config MMEngine writes")
        if osp.exists(copy) and osp.samefile(copy, cfg.filename):
            raise InputError(
                f"{cfg.filename} is where MMEngine writes its copy of the run's config (the work "
                f"dir {work_dir}, the config's file name), which would replace the config this "
                f"command reads with a flattened one, options included: choose another ",
                WORK_DIR, ', or copy the config out of it')
    for name in os.listdir(work_dir):
        path = osp.join(work_dir, name)
        if LOG_FOLDER.fullmatch(name) and osp.islink(path):
            raise foreign_file_error(path, stat.S_IFLNK, 'a log folder MMEngine writes')


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


def configure_resume(cfg, resume):
    """--resume: 'auto' continues from the run's newest readable checkpoint (a new run, from
    load_from if any, when there is none yet); a path, from that file, read first so that a
    truncated or unsafe one is named here."""
    if resume == 'auto':
        found = resume_checkpoint(cfg)
        cfg.resume = found is not None
        cfg.load_from = found or cfg.get('load_from')
    elif resume is not None:
        safe_load(resume, mmap=True)
        cfg.resume = True
        cfg.load_from = resume
