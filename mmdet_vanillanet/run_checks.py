"""Checks the tools run before building a Runner, so that bad input fails in one clear line
instead of deep inside a dataloader or after overwriting something."""
import glob
import json
import os
import os.path as osp
import re

from mmengine.logging import print_log

from .checkpoint import checkpoint_layout
from .errors import InputError
from .serialization import CheckpointError, safe_load

COCO_HINT = ('Get COCO 2017 from https://cocodataset.org into data/coco/ (annotations/, '
             'train2017/, val2017/), point the config at your copy with --cfg-options '
             '{key}.dataset.data_root=PATH/, or run `make demo` to try the bundled toy dataset.')


def _datasets(cfg, key):
    """The leaf dataset configs of a dataloader (through Repeat/Concat wrappers)."""
    stack = [cfg.get(key, {}).get('dataset')]
    while stack:
        ds = stack.pop()
        if not ds:
            continue
        if 'dataset' in ds:
            stack.append(ds['dataset'])
        elif 'datasets' in ds:
            stack.extend(ds['datasets'])
        else:
            yield ds


def check_dataset_paths(cfg, keys=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """Raise FileNotFoundError naming the first missing annotation file or image folder."""
    for key in keys:
        if not cfg.get(key):
            continue
        for ds in _datasets(cfg, key):
            root = ds.get('data_root') or ''
            ann = ds.get('ann_file')
            img = (ds.get('data_prefix') or {}).get('img')
            for kind, rel in (('annotation file', ann), ('image folder', img)):
                if not rel:
                    continue
                path = rel if osp.isabs(rel) or '://' in rel else osp.join(root, rel)
                if '://' not in path and not osp.exists(path):
                    raise FileNotFoundError(
                        f'{kind} not found: {path} ({key}.dataset: data_root={root!r}). '
                        + COCO_HINT.format(key=key))
                if kind == 'annotation file' and path.endswith('.json'):
                    check_annotation_file(path)


def check_annotation_file(path: str):
    """A COCO annotation file must parse and list images and categories. (The dataset would
    otherwise fail deep in its loader, or train on nothing.)"""
    try:
        with open(path) as f:
            coco = json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f'annotation file {path} is not valid JSON ({err}); regenerate or '
                         f'download it again') from None
    if not isinstance(coco, dict) or not coco.get('images') or not coco.get('categories'):
        found = sorted(coco) if isinstance(coco, dict) else type(coco).__name__
        raise InputError(f'annotation file {path} has no images or no categories (found '
                         f'{found}); a COCO file needs non-empty "images", "annotations" and '
                         f'"categories"')


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
    one before it. None when there is none."""
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
        except CheckpointError as err:
            print_log(f'not resuming from {path}: {err}', logger='current', level=30)
            continue
        return path
    return None


def check_not_deploy(checkpoint: str, what: str):
    """Training needs the BN statistics and separate convs that a fused checkpoint lost."""
    if checkpoint and checkpoint_layout(checkpoint) == 'deploy':
        raise InputError(f'{what} {checkpoint} holds a fused (deploy-layout) VanillaNet, which '
                         f'cannot be trained; use the training-mode checkpoint it was converted '
                         f'from')
