"""Labels mean the config's classes, whatever order a COCO file lists its categories in.

MMDetection's CocoDataset numbers its labels by the file's categories whose names are in the
config's ``classes``, in the file's order, and CocoMetric maps labels back the same way; a file
that lists them in another order than ``classes`` trains and evaluates every label under
another class's name (AP 0.81 became 0.30 with two categories swapped), with no error. The
config is the one source of truth: such a file is refused, never remapped (remapping would
need a dataset and a metric of our own, and our configs would then differ from MMDetection's).
"""
import json
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

from mmdet.registry import DATASETS

from .errors import InputError
from .input_paths import check_input_file
from .serialization import safe_load

# (path, size, mtime) -> the file's category names in order: a run's check and its hook read
# a file once, and COCO's train file takes seconds.
_CATEGORIES: Dict[Tuple[str, int, int], Tuple[str, ...]] = {}


def file_category_names(path: str, coco: Optional[dict] = None) -> Tuple[str, ...]:
    """The names of the categories a COCO file declares, in its order (``coco``: the file
    already loaded)."""
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CATEGORIES:
        if coco is None:
            with open(path, encoding='utf-8') as f:
                coco = json.load(f)
        _CATEGORIES[key] = tuple(c.get('name') for c in coco.get('categories') or ()
                                 if isinstance(c, dict))
    return _CATEGORIES[key]


def check_class_order(path: str, classes: Sequence[str], coco: Optional[dict] = None,
                      what: str = 'annotation file'):
    """Raise InputError when the categories of the COCO file ``path`` that the config's
    ``classes`` name appear in another order than ``classes``: labels would be numbered by
    the file."""
    if not classes:
        return
    wanted = set(classes)
    in_file = [name for name in file_category_names(path, coco) if name in wanted]
    in_config = [name for name in classes if name in set(in_file)]
    if in_file != in_config:
        raise InputError(
            f'{what} {path} lists the categories {_names(in_file)} in another order than the '
            f'config\'s classes {_names(in_config)}: MMDetection numbers labels by the file\'s '
            f'order, so every label would train and evaluate under another class\'s name; '
            f'reorder "categories" in the file as the config\'s classes, or set the config\'s '
            f'metainfo classes to the file\'s order (and retrain)')


def check_evaluator_class_order(evaluators, classes: Sequence[str], evaluator_key: str):
    """The local COCO ``ann_file`` of each evaluator in ``evaluators`` (a config's
    ``val_evaluator`` or ``test_evaluator``: one or a list) declares every one of ``classes``
    (CocoMetric looks their ids up by name: a missing one failed with an IndexError after the
    whole test) and lists them in their order: CocoMetric maps labels back to names by the
    file's order, as CocoDataset numbers them."""
    for metric in evaluators if isinstance(evaluators, list) else [evaluators]:
        ann_file = (metric or {}).get('ann_file')
        what = f'{evaluator_key}.ann_file'
        if isinstance(ann_file, str) and '://' not in ann_file and osp.lexists(ann_file):
            check_input_file(ann_file, what)
        if is_local_json(ann_file):
            declared = file_category_names(ann_file)
            missing = [name for name in classes or () if name not in declared]
            if missing:
                raise missing_classes_error(f'{what} {ann_file}', missing, declared)
            check_class_order(ann_file, classes, what=what)


def missing_classes_error(source: str, missing: Sequence[str],
                          declared: Sequence[str]) -> InputError:
    """The one message for config classes a COCO file does not declare, naming a category that
    differs only in case or spaces (a class 'circle' where the file has 'Circle ')."""
    near = [f'{name!r} differs from its {other!r} only in case or spaces' for name in missing
            for other in declared if isinstance(other, str)
            and ''.join(other.split()).casefold() == ''.join(name.split()).casefold()]
    shown = _names(sorted(n for n in declared if isinstance(n, str)))
    return InputError(
        f'{source} declares no category named {", ".join(map(repr, missing))} (it declares '
        f'{shown}{"; " + "; ".join(near) if near else ""}), but the config\'s classes include '
        f'it; make the config\'s metainfo classes the file\'s category names')


def is_local_json(path) -> bool:
    """A COCO file on this machine (not a URL, not a file of another format)."""
    return isinstance(path, str) and path.endswith('.json') and osp.isfile(path)


def dataset_class(ds: dict):
    """The class a dataset config builds (a registered name or the class), or None."""
    kind = ds.get('type')
    if isinstance(kind, str):
        return DATASETS.get(kind)
    return kind if isinstance(kind, type) else None


def dataset_classes(ds: dict) -> Tuple[str, ...]:
    """The classes a dataset config labels by: its metainfo's, else its dataset class's."""
    classes = (ds.get('metainfo') or {}).get('classes')
    cls = dataset_class(ds)
    return tuple(classes or (cls.METAINFO.get('classes') if cls is not None else None) or ())


def config_classes(cfg) -> Tuple[str, ...]:
    """The classes a config's detector is tested with (its test dataset's, else its val or
    train dataset's; the first inside a wrapper): what its labels mean."""
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        ds = (cfg.get(key) or {}).get('dataset')
        while ds and ('dataset' in ds or 'datasets' in ds):
            ds = ds.get('dataset') or ds['datasets'][0]
        if ds:
            return dataset_classes(ds)
    return ()


def check_checkpoint_classes(source: str, checkpoint: dict, classes: Sequence[str]):
    """Raise InputError when a checkpoint's ``meta.dataset_meta.classes`` (what its labels
    mean) differ in names or order from the run's ``classes``. A checkpoint without them
    (an MMDetection 2.x or a converted file) is not checked."""
    meta = checkpoint.get('meta') or {}
    saved = (meta.get('dataset_meta') or {}).get('classes') if isinstance(meta, dict) else None
    check_saved_classes(f'{source} was trained with', saved, classes,
                        ' (to fine-tune to other classes, use load_from with default_hooks.'
                        'checkpoint_fit.replaced=[...] naming the class layers)')


def load_checkpoint_of_classes(filename: str, classes: Sequence[str],
                               map_location='cpu') -> dict:
    """The checkpoint ``filename`` read as data (``serialization.safe_load``), refused in one
    line unless the classes it was trained with are ``classes`` (``check_checkpoint_classes``):
    what a run of these classes may load its weights from."""
    loaded = safe_load(filename, map_location=map_location)
    check_checkpoint_classes(filename, loaded, classes)
    return loaded


def check_saved_classes(made_with: str, saved: Optional[Sequence[str]], classes: Sequence[str],
                        hint: str = ''):
    """Raise InputError when the classes a file was ``made_with`` (``saved``; None: not
    recorded) differ in names or order from the run's ``classes``."""
    if saved is None or not classes or tuple(saved) == tuple(classes):
        return
    raise InputError(
        f'{made_with} the classes {_names(saved)}, in another order or with other names than '
        f'the config\'s {_names(classes)}: its labels would be read as other classes; set the '
        f'config\'s metainfo classes to the file\'s{hint}')


def _names(names: Sequence[str]) -> str:
    shown = ', '.join(map(repr, list(names)[:8]))
    return f'[{shown}{", ..." if len(names) > 8 else ""}]'
