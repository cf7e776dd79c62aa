"""Dataset checks the tools run before building a Runner, so that a missing or malformed
dataset fails in one clear line instead of deep inside a dataloader."""
import json
import os.path as osp

from ..errors import InputError

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
