"""Dataset checks the tools run before building a Runner, so that a missing or malformed dataset
fails in one clear line instead of deep inside a dataloader, or trains on less than it holds:
the annotation file and image folder exist, a COCO file's records are what CocoDataset can load
(coco_annotations), and every image it lists exists, decodes, and survives the pipeline's resize
and the backbone's minimum input side."""
import json
import math
import os.path as osp
from concurrent.futures import ThreadPoolExecutor

import cv2
import mmcv
import torch
from mmcv.image import rescale_size
from mmdet.datasets import CocoDataset
from mmdet.registry import MODELS
from PIL import Image

from .class_order import check_evaluator_class_order, dataset_class, dataset_classes
from .coco_annotations import Problems, check_coco_annotations, check_invalid_boxes_choice
from .errors import InputError
from .input_paths import check_input_file, special_file_kind

COCO_HINT = ('Get COCO 2017 from https://cocodataset.org into data/coco/ (annotations/, '
             'train2017/, val2017/), point the config at your copy with --cfg-options '
             '{key}.dataset.data_root=PATH/, or run `make demo` to try the bundled toy dataset.')
# Reading image headers is I/O-bound on a cold or network disk; threads overlap the waits.
IMAGE_READERS = 8
MISSING = 'does not exist'


def _datasets(cfg, key, with_keys=False):
    """The leaf dataset configs of a dataloader (through Repeat/Concat wrappers), with their
    config keys (``train_dataloader.dataset.datasets.0``) if ``with_keys``."""
    stack = [(f'{key}.dataset', cfg.get(key, {}).get('dataset'))]
    while stack:
        where, ds = stack.pop()
        if not ds:
            continue
        if 'dataset' in ds:
            stack.append((f'{where}.dataset', ds['dataset']))
        elif 'datasets' in ds:
            stack.extend((f'{where}.datasets.{i}', d) for i, d in enumerate(ds['datasets']))
        else:
            yield (where, ds) if with_keys else ds


def check_dataset_paths(cfg, keys=('train_dataloader', 'val_dataloader', 'test_dataloader'),
                        invalid_boxes: str = 'refuse'):
    """Raise FileNotFoundError naming the first missing annotation file or image folder, and
    InputError for the first kind of problem in a COCO file or its images (see the module).
    ``invalid_boxes``: 'refuse' or 'drop' the boxes MMDetection would drop from training."""
    check_invalid_boxes_choice(invalid_boxes)
    # The backbone is the same for every dataset: asked once.
    min_side = _backbone_min_side((cfg.get('model') or {}).get('backbone') or {})
    for key in keys:
        if not cfg.get(key):
            continue
        for where, ds in _datasets(cfg, key, with_keys=True):
            check_resize_scales(where, ds.get('pipeline') or [])
            root = ds.get('data_root') or ''
            ann = _under_data_root(root, ds.get('ann_file'))
            img_dir = _under_data_root(root, (ds.get('data_prefix') or {}).get('img', ''))
            for kind, path in (('annotation file', ann), ('image folder', img_dir)):
                if path and '://' not in path and not osp.exists(path):
                    raise FileNotFoundError(
                        f'{kind} not found: {path} ({key}.dataset: data_root={root!r}). '
                        + COCO_HINT.format(key=key))
            if ann and '://' not in ann:
                check_input_file(ann, 'annotation file')
            if ann and ann.endswith('.json') and '://' not in ann and _read_by_coco_dataset(ds):
                images = check_coco_annotations(
                    ann, _load_json(ann), classes=dataset_classes(ds), with_mask=_loads_masks(ds),
                    training=not ds.get('test_mode', False), invalid_boxes=invalid_boxes)
                if '://' not in img_dir:
                    check_image_files(ann, images, img_dir, _smallest_side(cfg, ds, min_side))
        _check_evaluator_class_order(cfg, key)


def _check_evaluator_class_order(cfg, key: str):
    """The COCO file an evaluator maps labels back to names with lists the dataset's classes
    in their order (CocoMetric numbers them by the file, as CocoDataset does)."""
    evaluator_key = key.replace('_dataloader', '_evaluator')
    evaluators = cfg.get(evaluator_key) if evaluator_key != key else None
    datasets = list(_datasets(cfg, key))
    if not evaluators or not datasets or dataset_class(datasets[0]) is None:
        return
    check_evaluator_class_order(evaluators, dataset_classes(datasets[0]), evaluator_key)


def _under_data_root(root: str, rel):
    """Where MMEngine's BaseDataset looks: ``rel`` under ``data_root`` unless absolute."""
    if rel is None:
        return None
    return rel if osp.isabs(rel) or '://' in rel else osp.join(root, rel)


def _load_json(path: str):
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f'annotation file {path} is not valid JSON ({err}); regenerate or '
                         f'download it again') from None


def _read_by_coco_dataset(ds) -> bool:
    """The file is read by CocoDataset's own loader and parser, which our checks mirror
    (not, for instance, by the panoptic or LVIS loaders, whose files differ)."""
    cls = dataset_class(ds)
    return (isinstance(cls, type) and issubclass(cls, CocoDataset)
            and cls.load_data_list is CocoDataset.load_data_list
            and cls.parse_data_info is CocoDataset.parse_data_info)


def _transforms(node):
    """Every transform config in a pipeline, also those nested in RandomChoice and the like."""
    if isinstance(node, dict):
        if 'type' in node:
            yield node
        for value in node.values():
            yield from _transforms(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _transforms(value)


def _type(transform) -> str:
    kind = transform['type']
    return (kind.__name__ if isinstance(kind, type) else str(kind)).split('.')[-1]


def _loads_masks(ds) -> bool:
    return any(_type(t) == 'LoadAnnotations' and t.get('with_mask', False)
               for t in _transforms(ds.get('pipeline') or []))


# --- image files ---------------------------------------------------------------------------

def check_image_files(ann_path: str, images: list, img_dir: str, smallest_side):
    """Every image the file lists exists, its header decodes, and ``smallest_side`` (its
    (width, height) -> None, or why the pipeline and network cannot take it) accepts it."""
    problems = Problems(f'annotation file {ann_path}')
    paths = [osp.join(img_dir, image['file_name']) for image in images]
    with ThreadPoolExecutor(IMAGE_READERS) as pool:
        sizes = pool.map(_image_size, paths, chunksize=256)
        for image, path, size in zip(images, paths, sizes):
            where = f'image {image["id"]!r} ({path})'
            if isinstance(size, str):
                problems.add('missing' if size == MISSING else 'unreadable', f'{where} {size}',
                             'restore the file from the dataset, or remove the image and its '
                             'annotations from the file')
            elif (too_thin := smallest_side(*size)):
                problems.add('too thin', f'{where} is {size[0]}x{size[1]} pixels: {too_thin}',
                             'crop or remove such images')
    problems.raise_first()


def _image_size(path: str):
    """(width, height) from the image's header, or why the file cannot be read."""
    kind = special_file_kind(path)
    if kind:  # a FIFO would block the read
        return f'is {kind}, not an image file'
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        return MISSING
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow may not know a format that OpenCV, which LoadImageFromFile decodes with,
        # reads: decode it whole before calling it unreadable.
        try:
            image = mmcv.imread(path)
        except (OSError, ValueError, cv2.error):
            image = None
        if image is None:
            return f'cannot be decoded as an image ({err})'
        return image.shape[1], image.shape[0]


def _smallest_side(cfg, ds, min_side: int):
    """A function of an image's (width, height): None if every resize the dataset's pipeline
    may draw and the backbone take it, else why not.

    A keep-ratio resize fits the long side to the scale's long edge, so a thin image's short
    side can round to 0 pixels (OpenCV's resize fails: toy config, 6401x20 pixels), or stay
    under the backbone's minimum input side after the data preprocessor's padding (``min_side``,
    which a backbone may declare; padding to a multiple of it always reaches it)."""
    names, corner, resizes = _smallest_scale(ds.get('pipeline') or [])
    model = cfg.get('model') or {}
    pad = (model.get('data_preprocessor') or {}).get('pad_size_divisor') or 1
    # The smallest resized side that padding lifts to the backbone's minimum (and at least 1).
    need = pad * (math.ceil(min_side / pad) - 1) + 1
    reason = ('and OpenCV cannot resize to 0 pixels' if need == 1 else
              f'under the {need} pixels a side that padding to a multiple of {pad} lifts to the '
              f'backbone\'s minimum input side of {min_side}')
    # The short side becomes int(short * long_edge / long + 0.5): the aspect ratio decides.
    limit = (f'; this pipeline takes long sides up to {max(corner) / (need - 0.5):.1f} times '
             f'the short side' if corner else '')

    def check(width, height):
        if corner:
            new, what = rescale_size((width, height), corner), f'{names} to {corner} makes it'
        elif not resizes:
            new, what = (width, height), 'with no resize in the pipeline it stays'
        else:  # only resizes to a fixed size: the image's own size does not matter
            return None
        if min(new) >= need:
            return None
        return f'{what} {new[0]}x{new[1]}, {reason}{limit}'

    return check


def _smallest_scale(pipeline):
    """(names, (long edge, short edge), any resize at all) for the keep-ratio resizes of a
    pipeline: the smallest long edge and the smallest short edge they may draw (None without
    one). The resized short side is min(short * long_edge / long, short_edge), rounded, so this
    pair gives exactly the smallest one any of the scales can give."""
    scales = list(_resize_scales(pipeline))
    keep = [(name, scale) for name, scale, keep_ratio in scales if keep_ratio]
    if not keep:
        return '', None, bool(scales)
    names = '/'.join(sorted({name for name, _ in keep}))
    return (names, (min(max(s) for _, s in keep), min(min(s) for _, s in keep)), True)


def _resize_scales(pipeline):
    """(name, scale, keep_ratio) for each scale a resize of the pipeline may draw; for a
    random range, its smallest corner (the resized sides grow with both edges of the scale)."""
    for t in _transforms(pipeline):
        name, keep_ratio = _type(t), t.get('keep_ratio', False)
        if name == 'Resize' and t.get('scale') is not None:
            yield name, _pair(t['scale']), keep_ratio
        elif name == 'RandomChoiceResize':
            yield from ((name, _pair(s), keep_ratio) for s in t['scales'])
        elif name == 'RandomResize' and t.get('ratio_range'):
            ratio = min(t['ratio_range'])
            yield name, (int(t['scale'][0] * ratio), int(t['scale'][1] * ratio)), keep_ratio
        elif name == 'RandomResize':
            yield name, tuple(min(edges) for edges in zip(*t['scale'])), keep_ratio


# The largest side a pipeline may resize an image to: beyond any detector's input (MMDetection's
# largest scales are 2048), and a 3-channel image of 8192 x 8192 is already 768 MiB as floats.
MAX_SCALE_SIDE = 8192


def check_resize_scales(where: str, pipeline):
    """Each side a resize of the pipeline may draw is 1 to MAX_SCALE_SIDE pixels: a scale of
    100000 failed in OpenCV (out of memory) or with a TypeError deep in the dataloader."""
    for index, step in enumerate(pipeline):
        for t in _transforms(step):
            if not _type(t).endswith('Resize'):
                continue
            ratio = max(t.get('ratio_range') or (1, ))
            for name in ('scale', 'scales'):
                sides = list(_numbers(t.get(name)))
                if sides and not all(0 < side * ratio <= MAX_SCALE_SIDE for side in sides):
                    raise InputError(
                        f'{where}.pipeline.{index} ({_type(t)}): {name}={t[name]!r}'
                        f'{f" with ratio_range up to {ratio}" if ratio != 1 else ""} resizes '
                        f'images to sides outside 1 to {MAX_SCALE_SIDE} pixels; set a scale in '
                        f'that range')


def _numbers(node):
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _numbers(value)


def _pair(scale):
    return (scale, scale) if isinstance(scale, int) else tuple(scale)


def _backbone_min_side(backbone: dict) -> int:
    """The smallest input side the backbone takes where its class declares one
    (``min_input_size``), read from the network built on the meta device (no memory, no
    weights); 1 for a backbone that declares none."""
    kind = backbone.get('type')
    if not hasattr(MODELS.get(kind) if isinstance(kind, str) else kind, 'min_input_size'):
        return 1
    with torch.device('meta'):
        return MODELS.build(backbone).min_input_size
