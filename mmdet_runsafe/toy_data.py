"""A small synthetic COCO instance-segmentation set ("toy COCO") for demos and smoke tests.

The released VanillaNet results need COCO itself; this set lets a small Mask R-CNN be trained
and evaluated end to end on a laptop CPU in minutes, through the unmodified mmdet CocoDataset and
COCO metric. It is meant to be learnable but not trivial: textured, noisy backgrounds, shapes of
random colour (so only shape tells the class), size and rotation, and several per image.

Every mask in the annotations is exactly what is painted in the image: shapes are painted from
the pycocotools rasterisation of their own (rounded) polygons, and shapes never touch, so no
shape hides part of another. Pure numpy + Pillow + pycocotools, so it runs before torch is set up.
"""
import collections
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .errors import Argument, InputError, OutputExistsError
from .output_paths import new_file_for, write_text

CLASSES = ('circle', 'square', 'triangle')

MIN_SIZE, MAX_SIZE = 20, 70  # extent of a shape's box, in pixels
MAX_SHAPES = 4
MAX_BOX_IOU = 0.1
GAP = 2  # pixels kept free around every shape, so same-coloured neighbours never merge
MARGIN = 1  # pixels kept free at the image border, so no mask is cut by it
CIRCLE_VERTICES = 32
PLACEMENT_TRIES = 50
MIN_CONTRAST = 120.0  # RGB distance between a shape and the background it sits on
NOISE_STD = 6.0
SPLITS = ('train', 'val')
MIN_IMAGE_SIDE = MIN_SIZE + 2 * (MARGIN + GAP)
MAX_IMAGE_SIDE = 2048


def make_toy_coco(out_dir: str, num_train: int = 200, num_val: int = 50,
                  image_size: Sequence[int] = (160, 160), seed: int = 0,
                  overwrite: bool = False) -> Dict[str, str]:
    """Write the toy set under ``out_dir`` and return where its parts are.

    ``image_size`` is (height, width), as every size our tools take (--shape, --size). Image
    ``i`` of a split depends only on (seed, split, i), so a larger set extends a smaller one
    with the same seed. The same arguments give byte-identical files. An existing non-empty
    ``out_dir`` is refused unless ``overwrite`` is true; then only the files this function
    writes are replaced. Each file is written as a new file renamed into place: a symbolic
    link at a file's name is replaced, never written through; one at a folder's is refused.
    """
    height, width = (int(v) for v in image_size)
    size = Argument('image_size', (height, width))
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(size, f': too small for {MIN_SIZE} px shapes (each side at least '
                               f'{MIN_IMAGE_SIDE})')
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputError(size, f': each side at most {MAX_IMAGE_SIDE} (the shapes are at most '
                               f'{MAX_SIZE} px; an image is drawn in memory at 24 bytes a pixel)')
    for name, count in (('num_train', num_train), ('num_val', num_val)):
        if count < 0:
            raise InputError(Argument(name, count), ': must not be negative')
    _check_out_dir(out_dir, overwrite)
    paths = {
        'train_img': os.path.join(out_dir, 'train'),
        'val_img': os.path.join(out_dir, 'val'),
        'train_ann': os.path.join(out_dir, 'annotations', 'instances_train.json'),
        'val_ann': os.path.join(out_dir, 'annotations', 'instances_val.json'),
    }
    for folder in (paths['train_img'], paths['val_img'], os.path.dirname(paths['train_ann'])):
        if os.path.islink(folder):
            raise InputError(f'{folder} is a symbolic link (to {os.readlink(folder)}); the toy '
                             f'set is not written through links: remove it or choose another '
                             f'output dir')
    os.makedirs(os.path.dirname(paths['train_ann']), exist_ok=True)
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        coco = _write_split(paths[f'{split}_img'], count, width, height, seed, split_index,
                            overwrite)
        _write_json(paths[f'{split}_ann'], coco, overwrite)
    return paths


def describe_split(split: str, img_dir: str, ann_file: str) -> str:
    """What a split holds, per class, and where its files are: a wrong count is visible
    before a long training run."""
    with open(ann_file, encoding='utf-8') as f:
        coco = json.load(f)
    names = {c['id']: c['name'] for c in coco['categories']}
    counts = collections.Counter(names[a['category_id']] for a in coco['annotations'])
    per_class = ', '.join(f'{name} {counts[name]}' for name in CLASSES)
    return (f'  {split}: {len(coco["images"])} images, {len(coco["annotations"])} instances '
            f'({per_class})\n    images in {img_dir}\n    annotations in {ann_file}')


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse to mix the toy set into someone's files unless explicitly asked to."""
    if os.path.isfile(out_dir):
        raise FileExistsError(f'{out_dir} is a file, not a directory; choose another output dir')
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputExistsError(f'{out_dir} exists and is not empty; choose another output dir, '
                                f'or pass ', Argument('overwrite', True), ' to replace the toy '
                                'files in it')


def _write_split(img_dir: str, count: int, width: int, height: int, seed: int,
                 split_index: int, overwrite: bool) -> dict:
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, index)))
        image, shapes = _make_image(rng, width, height, first_label=index % len(CLASSES))
        file_name = f'{index:06d}.png'
        # noisy images barely compress, so a high zlib level only costs time
        with new_file_for(os.path.join(img_dir, file_name), replace=overwrite) as partial:
            Image.fromarray(image).save(partial, format='PNG', compress_level=1)
        image_id = index + 1  # COCOeval treats id 0 as "unmatched", so ids start at 1
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        for label, polygon, mask in shapes:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, polygon, mask))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    info = dict(description='toy COCO (synthetic shapes)', version='1.0')
    return dict(info=info, licenses=[], images=images, annotations=annotations,
                categories=categories)


def _annotation(ann_id: int, image_id: int, label: int, polygon: List[float],
                mask: np.ndarray) -> dict:
    """The box is the extent of the painted pixels, not of the polygon: a sharp triangle tip
    can reach past the last pixel centre it covers, and a detector can only see pixels."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    return dict(id=ann_id, image_id=image_id, category_id=label + 1, segmentation=[polygon],
                bbox=bbox, area=int(mask.sum()), iscrowd=0)


def _write_json(path: str, data: dict, overwrite: bool) -> None:
    """Fixed key order and separators, so equal data gives equal bytes."""
    write_text(path, json.dumps(data, sort_keys=True, separators=(',', ':')) + '\n', overwrite)


def _make_image(rng: np.random.Generator, width: int, height: int,
                first_label: int) -> Tuple[np.ndarray, list]:
    """One image and its (label, polygon, mask) list.

    The first shape's class cycles with the image index so that every class is in any split of
    three images or more; the rest are random.
    """
    canvas = _background(rng, width, height)
    forbidden = np.zeros((height, width), dtype=bool)
    boxes, shapes = [], []
    for k in range(int(rng.integers(1, MAX_SHAPES + 1))):
        label = first_label if k == 0 else int(rng.integers(len(CLASSES)))
        placed = _place(rng, label, width, height, boxes, forbidden)
        if placed is None:
            continue
        polygon, mask, box = placed
        _paint(rng, canvas, mask)
        boxes.append(box)
        forbidden |= _dilate(mask, GAP)
        shapes.append((label, polygon, mask))
    canvas += rng.normal(0.0, NOISE_STD, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), shapes


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour gradient plus faint stripes, so "not flat" is no cue for "object"."""
    corners = rng.uniform(30, 225, size=(2, 2, 3))
    u = np.linspace(0.0, 1.0, width)[None, :, None]
    v = np.linspace(0.0, 1.0, height)[:, None, None]
    top = corners[0, 0] * (1 - u) + corners[0, 1] * u
    bottom = corners[1, 0] * (1 - u) + corners[1, 1] * u
    canvas = top * (1 - v) + bottom * v
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(12, 40)
        phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(4, 12)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
        canvas = canvas + amplitude * wave[:, :, None] * rng.uniform(0.5, 1.0, size=3)
    return canvas


def _place(rng: np.random.Generator, label: int, width: int, height: int, boxes: list,
           forbidden: np.ndarray) -> Optional[Tuple[List[float], np.ndarray, tuple]]:
    """Try random sizes and positions until the shape fits without touching the others."""
    max_size = min(MAX_SIZE, width - 2 * MARGIN - 1, height - 2 * MARGIN - 1)
    for _ in range(PLACEMENT_TRIES):
        outline = _outline(rng, label, rng.uniform(MIN_SIZE, max_size))
        extent = outline.max(axis=0)
        x0 = rng.uniform(MARGIN, width - MARGIN - extent[0])
        y0 = rng.uniform(MARGIN, height - MARGIN - extent[1])
        box = (x0, y0, x0 + extent[0], y0 + extent[1])
        if any(_box_iou(box, other) >= MAX_BOX_IOU for other in boxes):
            continue
        polygon = [round(float(v), 2) for v in (outline + (x0, y0)).ravel()]
        mask = _rasterise(polygon, width, height)
        if mask.any() and not (mask & forbidden).any():
            return polygon, mask, box
    return None


def _outline(rng: np.random.Generator, label: int, size: float) -> np.ndarray:
    """Vertices (N, 2) of a shape whose box is ``size`` on its longer side, starting at 0, 0."""
    if CLASSES[label] == 'circle':
        theta = rng.uniform(0, 2 * np.pi) + np.arange(CIRCLE_VERTICES) * 2 * np.pi / CIRCLE_VERTICES
        radius = np.ones(CIRCLE_VERTICES)
    elif CLASSES[label] == 'square':
        tilt = rng.uniform(0, np.pi / 2) if rng.random() < 0.5 else 0.0
        theta = tilt + np.pi / 4 + np.arange(4) * np.pi / 2
        radius = np.ones(4)
    else:  # a triangle, somewhat irregular so that it is not one template
        theta = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
        theta = theta + rng.uniform(-0.25, 0.25, size=3)
        radius = rng.uniform(0.8, 1.0, size=3)
    points = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    points -= points.min(axis=0)
    return points * (size / points.max())


def _rasterise(polygon: List[float], width: int, height: int) -> np.ndarray:
    """The mask exactly as pycocotools (and hence mmdet and COCOeval) will see the polygon.

    Its pixel sum is ``mask_utils.area`` of the same RLE, so annotated areas agree with COCOeval.
    """
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    return mask_utils.decode(rle).astype(bool)


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Fill the mask with a random colour far from the background, with a mild shading."""
    under = canvas[mask].mean(axis=0)
    colour = None
    for _ in range(20):
        candidate = rng.uniform(0, 255, size=3)
        if np.linalg.norm(candidate - under) >= MIN_CONTRAST:
            colour = candidate
            break
    if colour is None:  # the farthest corner of the RGB cube is always far enough
        colour = np.where(under > 127.5, 20.0, 235.0)
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0) - 0.5
    shade = 1.0 + rng.uniform(0.1, 0.25) * ramp
    canvas[ys, xs] = colour[None, :] * shade[:, None]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by OR-ing shifted copies; the masks are small, so this is cheap."""
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def _box_iou(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
