"""The content of a COCO annotation file, checked against what MMDetection does with each record.

CocoDataset (load_data_list, parse_data_info) and LoadAnnotations stop with a traceback on some
bad records (a bbox that is not 4 numbers, a missing "area", an empty segmentation when masks
are loaded, duplicate annotation ids, a training file without annotations) and silently drop
others (an annotation of an undeclared category or an unknown image, a malformed polygon, a box
under 1 pixel or outside its image), so that a run can train on less than the file holds, or on
nothing. Each such problem is reported here, before the run, as one line naming the file, the
record and the fix, with how many more records share it: a user fixing a 100k-annotation file
learns the scale at once.
"""
import collections
import logging
import math

from mmengine.logging import print_log

from .class_order import check_class_order, missing_classes_error
from .errors import InputError

INVALID_BOX_CHOICES = ('refuse', 'drop')


class Problems:
    """The first problem of each kind, in the order met, and how many there are of each kind."""

    def __init__(self, source: str):
        self.source = source
        self.first = {}  # kind -> (message, fix) of its first occurrence
        self.counts = collections.Counter()

    def add(self, kind: str, message: str, fix: str):
        self.counts[kind] += 1
        self.first.setdefault(kind, (message, fix))

    def line(self, kind: str) -> str:
        message, fix = self.first[kind]
        more = self.counts[kind] - 1
        return (f'{self.source}: {message}' + (f' ({more} more like it)' if more else '')
                + f'; {fix}')

    def raise_first(self):
        """Raise for the kind met first: later kinds are often its consequences."""
        if self.first:
            raise InputError(self.line(next(iter(self.first))))


def check_invalid_boxes_choice(invalid_boxes: str):
    if invalid_boxes not in INVALID_BOX_CHOICES:
        raise InputError(f'invalid_boxes={invalid_boxes!r}: choose one of {INVALID_BOX_CHOICES}')


def check_coco_annotations(path: str, coco, *, classes=None, with_mask: bool = False,
                           training: bool = True, invalid_boxes: str = 'refuse') -> list:
    """Raise InputError for the first kind of problem in a loaded COCO file; return its image
    records. ``classes``: the dataset's class names (None: every declared category);
    ``with_mask``: the pipeline loads masks; ``training``: not a test_mode dataset.

    Boxes MMDetection drops (a side under 1 pixel, area <= 0, or no overlap with the image)
    matter only for training: ``invalid_boxes='refuse'`` raises, ``'drop'`` logs one warning
    with their count and lets MMDetection drop them (check_dataset_paths validates the
    choice)."""
    source = f'annotation file {path}'
    _check_top_level(source, coco, training)
    problems = Problems(source)
    sizes = _check_images(coco['images'], problems)
    names = _check_categories(coco['categories'], problems)
    problems.raise_first()
    _check_classes(source, classes, names)
    check_class_order(path, classes, coco)
    kept = set(classes) if classes else set(names.values())
    invalid = Problems(source)
    seen = set()
    for index, ann in enumerate(coco.get('annotations', ())):
        _check_annotation(index, ann, seen, sizes, names, kept, with_mask, problems, invalid)
    problems.raise_first()
    if training and invalid.counts:
        if invalid_boxes == 'refuse':
            invalid.raise_first()
        first, _ = invalid.first['invalid box']
        print_log(f'{source}: training without the {invalid.counts["invalid box"]} annotations '
                  f'whose boxes MMDetection drops (--invalid-boxes drop); the first: {first}',
                  logger='current', level=logging.WARNING)
    return coco['images']


def _check_top_level(source: str, coco, training: bool):
    if not isinstance(coco, dict) or not coco.get('images') or not coco.get('categories'):
        found = sorted(coco) if isinstance(coco, dict) else type(coco).__name__
        raise InputError(f'{source} has no images or no categories (found {found}); a COCO '
                         f'file needs non-empty "images", "annotations" and "categories"')
    for key in ('images', 'categories', 'annotations'):
        if not isinstance(coco.get(key, []), list):
            raise InputError(f'{source}: "{key}" is a {type(coco[key]).__name__}, not a list of '
                             f'records')
    # A test_mode dataset may be inference-only: COCO's own image_info_test-dev2017.json lists
    # images and categories and no annotations, and CocoDataset loads it. Training on it would
    # stop deep in the dataloader (no annotations key) or train on nothing (an empty list).
    if training and not coco.get('annotations'):
        state = 'an empty "annotations" list' if 'annotations' in coco else 'no "annotations"'
        raise InputError(f'{source} has {state}, so a training run would have nothing to learn '
                         f'from; train on a file with annotations (files without them are for '
                         f'test_mode datasets only)')


# What JSON numbers and ids load as; exact types, as bool is an int and isinstance is slow on
# COCO's train file (860k annotations).
NUMBER_TYPES, KEY_TYPES = (int, float), (int, str)


def _key(value):
    """The value if it can be a record id (what pycocotools uses as a dict key), else None."""
    return value if type(value) in KEY_TYPES else None


def _finite(value) -> bool:
    return type(value) in NUMBER_TYPES and math.isfinite(value)


def _check_images(images: list, problems: Problems) -> dict:
    """image id -> (width, height), for the images whose record is complete."""
    fix = ('every image needs a unique "id", a "file_name" and its "width" and "height" in '
           'pixels (positive numbers)')
    sizes = {}
    for index, image in enumerate(images):
        record = image if isinstance(image, dict) else {}
        image_id = _key(record.get('id'))
        width, height = record.get('width'), record.get('height')
        if image_id is None:
            problems.add('image record', f'image record #{index} has no valid "id" '
                         f'({_short(image)})', fix)
        elif image_id in sizes:
            problems.add('duplicate image', f'image id {image_id!r} is listed twice', fix
                         + ' (pycocotools keeps only the last record of an id)')
        elif not isinstance(record.get('file_name'), str) or not record['file_name']:
            problems.add('image record', f'image {image_id!r} has no "file_name"', fix)
        elif not (_finite(width) and _finite(height) and width > 0 and height > 0):
            problems.add('image record', f'image {image_id!r} has width {width!r} and height '
                         f'{height!r}', fix)
        else:
            sizes[image_id] = (width, height)
    return sizes


def _check_categories(categories: list, problems: Problems) -> dict:
    """category id -> name."""
    fix = 'every category needs a unique "id" and a "name"'
    names = {}
    for index, category in enumerate(categories):
        record = category if isinstance(category, dict) else {}
        category_id = _key(record.get('id'))
        if category_id is None or not isinstance(record.get('name'), str):
            problems.add('category record', f'category record #{index} has no valid "id" or '
                         f'"name" ({_short(category)})', fix)
        elif category_id in names:
            problems.add('duplicate category', f'category id {category_id!r} is declared twice',
                         fix)
        else:
            names[category_id] = record['name']
    return names


def _check_classes(source: str, classes, names: dict):
    """CocoDataset numbers its labels by the file's categories that match the config's class
    names: a class missing from the file shifts every later label off its name."""
    declared = set(names.values())
    missing = [name for name in classes or () if name not in declared]
    if missing:
        raise missing_classes_error(source, missing, declared)


def _check_annotation(index, ann, seen, sizes, names, kept, with_mask, problems, invalid):
    """One annotation, in the order CocoDataset.parse_data_info reads it."""
    record = ann if isinstance(ann, dict) else {}
    ann_id = _key(record.get('id'))
    if ann_id is None:
        problems.add('annotation record', f'annotation record #{index} has no valid "id" '
                     f'({_short(ann)})', 'every annotation needs a unique "id"')
        return
    if ann_id in seen:
        problems.add('duplicate annotation', f'annotation id {ann_id!r} is used twice',
                     'annotation ids must be unique (CocoDataset stops on duplicates)')
        return
    seen.add(ann_id)
    image_id, category_id = _key(record.get('image_id')), _key(record.get('category_id'))
    where = f'annotation {ann_id!r} (image {record.get("image_id")!r})'
    if image_id not in sizes:
        problems.add('unknown image', f'{where}: its image_id is not among the file\'s images',
                     'add the image to "images" or remove the annotation (MMDetection ignores '
                     'it silently)')
        return
    if category_id not in names:
        problems.add('undeclared category', f'{where}: category_id '
                     f'{record.get("category_id")!r} is not declared in "categories"',
                     'declare the category or correct the id (MMDetection drops such '
                     'annotations silently)')
        return
    bbox, area = record.get('bbox'), record.get('area')
    if not (type(bbox) is list and len(bbox) == 4 and all(map(_finite, bbox))):
        problems.add('malformed bbox', f'{where}: bbox {_short(bbox)} is not 4 finite '
                     f'numbers [x, y, width, height]', 'correct or remove it')
        return
    if not _finite(area):
        problems.add('malformed area', f'{where}: "area" is {_short(area)}, not a finite '
                     f'number', 'add the area in pixels (MMDetection reads it)')
        return
    if record.get('ignore'):  # CocoDataset skips these before looking at the box
        return
    width, height = sizes[image_id]
    box_problem = _invalid_box(bbox, area, width, height)
    if box_problem:
        invalid.add('invalid box', f'{where}: box {bbox} {box_problem}', 'MMDetection drops '
                    'such boxes silently (an image can then train on nothing): fix them, or '
                    'train without them with --invalid-boxes drop')
        return
    if with_mask and names[category_id] in kept:
        problem = _segmentation_problem(record.get('segmentation'), width, height)
        if problem:
            kind, message, fix = problem
            problems.add(kind, f'{where}: {message}', fix)


def _invalid_box(bbox, area, width, height):
    """Why CocoDataset.parse_data_info drops this box (its test, the reasons in the order
    that explains best), or None."""
    x, y, w, h = bbox
    overlap_w = max(0, min(x + w, width) - max(x, 0))
    overlap_h = max(0, min(y + h, height) - max(y, 0))
    if w < 1 or h < 1:
        return 'is under 1 pixel wide or high'
    if overlap_w * overlap_h == 0:
        return f'lies outside its {width}x{height} image'
    if area <= 0:
        return f'has "area" {area}'
    return None


MASK_FIX = ('a polygon is a list of x, y coordinates, an even number of at least 6; an RLE '
            'has "counts" (a list or a string) and "size" [height, width] of its image; '
            'MMDetection ignores instances whose masks are malformed')


def _segmentation_problem(segmentation, width, height):
    """(kind, message, fix) for a segmentation LoadAnnotations(with_mask=True) cannot use."""
    if not segmentation:
        return ('empty segmentation', 'its segmentation is missing or empty',
                'the config loads masks (LoadAnnotations with_mask=True), and MMDetection stops '
                'on such an instance: add its polygon or RLE, or remove the annotation')
    if isinstance(segmentation, list):
        for number, polygon in enumerate(segmentation):
            if not isinstance(polygon, list):
                return ('malformed polygon', f'polygon {number} of its segmentation is '
                        f'{_short(polygon)}, not a list', MASK_FIX)
            if len(polygon) < 6 or len(polygon) % 2:
                return ('malformed polygon', f'polygon {number} of its segmentation has '
                        f'{len(polygon)} coordinates', MASK_FIX)
            if not _finite_sum(polygon):
                return ('malformed polygon', f'polygon {number} of its segmentation has '
                        f'coordinates that are not finite numbers', MASK_FIX)
        return None
    if isinstance(segmentation, dict):
        counts, size = segmentation.get('counts'), segmentation.get('size')
        if not isinstance(counts, (list, str)) or size != [height, width]:
            return ('malformed RLE', f'its RLE segmentation has counts of type '
                    f'{type(counts).__name__} and size {_short(size)} (its image is '
                    f'{height}x{width}, height x width)', MASK_FIX)
        if isinstance(counts, list) and not (_finite_sum(counts)
                                             and sum(counts) == height * width):
            return ('malformed RLE', f'its RLE counts do not add up to the {height * width} '
                    f'pixels of its {height}x{width} image', MASK_FIX)
        return None
    return ('malformed segmentation', f'its segmentation is a {type(segmentation).__name__}',
            MASK_FIX)


def _finite_sum(values: list) -> bool:
    """All numbers, and finite: one C-level sum instead of a Python test per number, as
    COCO's train file holds some 20 million polygon coordinates (a non-number makes sum raise,
    a NaN or infinity makes it non-finite)."""
    try:
        return math.isfinite(sum(values))
    except TypeError:
        return False


def _short(value, limit: int = 60) -> str:
    """A record or value as text, cut to keep the error on one line."""
    text = repr(value).replace('\n', ' ')
    return text if len(text) <= limit else text[:limit - 3] + '...'
