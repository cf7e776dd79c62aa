"""Dataset checks before a run (mmdet_runsafe.datasets, coco_annotations): every bad record is
one line naming the file, the record and the problem, with how many more share it; boxes
MMDetection would drop are refused or dropped as the user chooses; an unreadable image names its
path; an image too thin for the pipeline's resize is refused exactly when the run would fail.
Each case is a small COCO file written here, checked with the toy config."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
from mmdet.registry import DATASETS
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from PIL import Image

from helpers import CONFIG
from mmdet_runsafe.datasets import check_dataset_paths
from mmdet_runsafe.errors import InputError

KEYS = ('train_dataloader', 'val_dataloader')
SQUARE = [4, 4, 20, 4, 20, 20, 4, 20]  # polygon of the box [4, 4, 16, 16]


@pytest.fixture(scope='module')
def toy_cfg():
    return Config.fromfile(CONFIG)


def ann(ann_id, image_id=1, category_id=1, bbox=(4, 4, 16, 16), **changes):
    return {**dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=list(bbox),
                   area=256, iscrowd=0, segmentation=[SQUARE]), **changes}


def coco(images=((40, 32), (40, 32)), annotations=None):
    """A valid file: images of (width, height), two annotations on the first image."""
    return dict(
        images=[dict(id=i + 1, file_name=f'{i + 1}.jpg', width=w, height=h)
                for i, (w, h) in enumerate(images)],
        annotations=[ann(1), ann(2, category_id=2)] if annotations is None else annotations,
        categories=[dict(id=i + 1, name=n) for i, n in enumerate(('circle', 'square',
                                                                  'triangle'))])


def write(tmp_path, content, split='train'):
    """Write the file and its images (as JPEGs of the listed sizes) under tmp_path/split."""
    (tmp_path / split).mkdir(exist_ok=True)
    for image in content.get('images', []):
        pixels = np.full((image.get('height', 8), image.get('width', 8), 3), 128, np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / image['file_name'])
    path = tmp_path / f'{split}.json'
    path.write_text(json.dumps(content))
    return str(path)


def cfg_for(toy_cfg, tmp_path, train, val=None, **model):
    """The toy config reading the train (and val) files written under tmp_path."""
    cfg = copy.deepcopy(toy_cfg)
    val = val or coco()
    for key, content, split in (('train_dataloader', train, 'train'),
                                ('val_dataloader', val, 'val')):
        cfg[key].dataset.update(data_root=str(tmp_path), ann_file=write(tmp_path, content, split),
                                data_prefix=dict(img=f'{split}/'))
    cfg.model.data_preprocessor.update(model)
    return cfg


def build_dataset(cfg):
    """The training dataset, as the Runner builds it."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(cfg.train_dataloader.dataset)


def error(cfg, **kw):
    with pytest.raises(InputError) as info:
        check_dataset_paths(cfg, KEYS, **kw)
    message = str(info.value)
    assert '\n' not in message
    return message


def test_the_toy_set_passes(toy_cfg, data_root):
    cfg = copy.deepcopy(toy_cfg)
    for key in KEYS:
        cfg[key].dataset.data_root = data_root
    check_dataset_paths(cfg, KEYS)


def set_bbox(bbox):
    def change(content):
        content['annotations'][0]['bbox'] = content['annotations'][1]['bbox'] = bbox
    return change


def set_first(key, value):
    def change(content):
        if value is None:
            del content['annotations'][0][key]
        else:
            content['annotations'][0][key] = value
    return change


@pytest.mark.parametrize('change, expected', [
    # CocoDataset would stop with a traceback on these:
    (set_bbox([1, 2, 3]), "annotation 1 (image 1): bbox [1, 2, 3] is not 4 finite numbers "
                          "[x, y, width, height] (1 more like it)"),
    (set_bbox([1, 2, 'a', 4]), "annotation 1 (image 1): bbox [1, 2, 'a', 4] is not 4 finite"),
    (set_bbox([1, 2, float('nan'), 4]), 'annotation 1 (image 1): bbox [1, 2, nan, 4] is not 4'),
    (set_first('area', None), 'annotation 1 (image 1): "area" is None, not a finite number'),
    (set_first('segmentation', []), 'annotation 1 (image 1): its segmentation is missing or '
                                    'empty; the config loads masks'),
    (set_first('segmentation', None), 'annotation 1 (image 1): its segmentation is missing'),
    (lambda c: c['annotations'][1].update(id=1), 'annotation id 1 is used twice'),
    (lambda c: c.pop('annotations'), 'has no "annotations", so a training run would have '
                                     'nothing to learn from'),
    (lambda c: c.update(annotations=[]), 'has an empty "annotations" list'),
    (lambda c: c['images'][1].pop('width'), 'image 2 has width None and height 32'),
    (lambda c: c['images'][1].update(id=1), 'image id 1 is listed twice'),
    (lambda c: c['categories'][2].update(id=1), 'category id 1 is declared twice'),
    # ... and would drop these silently:
    (set_first('category_id', 7), 'annotation 1 (image 1): category_id 7 is not declared in '
                                  '"categories"; declare the category'),
    (set_first('image_id', 9), 'annotation 1 (image 9): its image_id is not among the file\'s '
                               'images'),
    (set_first('segmentation', [[4, 4, 20, 4]]), 'annotation 1 (image 1): polygon 0 of its '
                                                 'segmentation has 4 coordinates'),
    (set_first('segmentation', [SQUARE[:-1]]), 'polygon 0 of its segmentation has 7 coordinates'),
    (set_first('segmentation', {'size': [32, 40]}), 'annotation 1 (image 1): its RLE '
                                                    'segmentation has counts of type NoneType'),
    (set_first('segmentation', {'size': [40, 32], 'counts': 'abc'}), 'size [40, 32] (its image '
                                                                     'is 32x40, height x width)'),
    (set_first('segmentation', {'size': [32, 40], 'counts': [3, 4]}), 'its RLE counts do not '
                                                                      'add up to the 1280 pixels'),
    # A class of the config's that the file does not declare shifts every later label:
    (lambda c: c['categories'][0].update(name='disc'), "declares no category named 'circle'"),
])
def test_each_bad_record_is_one_line_naming_it(toy_cfg, tmp_path, change, expected):
    content = coco()
    change(content)
    message = error(cfg_for(toy_cfg, tmp_path, content))
    assert message.startswith(f'annotation file {tmp_path}/train.json')
    assert expected in message


def test_masks_are_checked_only_when_the_pipeline_loads_them(toy_cfg, tmp_path):
    content = coco()
    content['annotations'][0]['segmentation'] = []
    cfg = cfg_for(toy_cfg, tmp_path, content)
    for key in KEYS:  # a detector without masks (RetinaNet): segmentations are never read
        for transform in cfg[key].dataset.pipeline:
            if transform['type'] == 'LoadAnnotations':
                transform['with_mask'] = False
    check_dataset_paths(cfg, KEYS)


def test_an_inference_only_file_may_lack_annotations(toy_cfg, tmp_path):
    """COCO's image_info_test-dev2017.json has no "annotations"; test_mode datasets load it."""
    val = coco()
    del val['annotations']
    check_dataset_paths(cfg_for(toy_cfg, tmp_path, coco(), val), KEYS)


def invalid_boxes():
    """One annotation MMDetection keeps and five its parse_data_info drops (40x32 image)."""
    return [ann(1), ann(2, bbox=(4, 4, 0, 10)), ann(3, bbox=(4, 4, -5, 10)),
            ann(4, bbox=(50, 40, 10, 10)), ann(5, bbox=(4, 4, 10, 0.5)),
            ann(6, area=0)]


def test_boxes_mmdetection_drops_are_refused_with_the_choice(toy_cfg, tmp_path):
    message = error(cfg_for(toy_cfg, tmp_path, coco(annotations=invalid_boxes())))
    assert ('annotation 2 (image 1): box [4, 4, 0, 10] is under 1 pixel wide or high '
            '(4 more like it); MMDetection drops such boxes silently') in message
    assert message.endswith('train without them with --invalid-boxes drop')
    assert 'box [50, 40, 10, 10] lies outside its 40x32 image' in error(
        cfg_for(toy_cfg, tmp_path, coco(annotations=[ann(1), ann(4, bbox=(50, 40, 10, 10))])))
    assert 'box [4, 4, 16, 16] has "area" 0' in error(
        cfg_for(toy_cfg, tmp_path, coco(annotations=[ann(1), ann(2, area=0)])))


def test_drop_warns_once_with_the_count(toy_cfg, tmp_path, caplog):
    logger = MMLogger.get_current_instance()  # outside logging's tree: caplog must attach
    logger.addHandler(caplog.handler)
    try:
        cfg = cfg_for(toy_cfg, tmp_path, coco(annotations=invalid_boxes()))
        check_dataset_paths(cfg, KEYS, invalid_boxes='drop')
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and '\n' not in warnings[0]
    assert ('train.json: training without the 5 annotations whose boxes MMDetection drops '
            '(--invalid-boxes drop); the first: annotation 2 (image 1): box [4, 4, 0, 10]'
            ) in warnings[0]
    dataset = build_dataset(cfg)  # the count is MMDetection's
    assert [len(dataset.get_data_info(i)['instances']) for i in range(len(dataset))] == [1]


def test_drop_still_refuses_what_would_crash(toy_cfg, tmp_path):
    content = coco(annotations=invalid_boxes() + [ann(7, segmentation=[])])
    assert 'annotation 7 (image 1): its segmentation is missing' in error(
        cfg_for(toy_cfg, tmp_path, content), invalid_boxes='drop')


def test_a_dropped_box_needs_no_mask(toy_cfg, tmp_path):
    """MMDetection drops the box before it reads the mask, so that mask cannot fail."""
    content = coco(annotations=[ann(1), ann(2, bbox=(4, 4, 0, 10), segmentation=[])])
    cfg = cfg_for(toy_cfg, tmp_path, content)
    check_dataset_paths(cfg, KEYS, invalid_boxes='drop')
    sample = build_dataset(cfg)[0]  # through LoadAnnotations
    assert len(sample['data_samples'].gt_instances.masks) == 1


def test_invalid_boxes_in_a_test_set_are_left_to_the_evaluator(toy_cfg, tmp_path):
    """Nothing trains on a test_mode dataset: its boxes serve pycocotools, which keeps them."""
    check_dataset_paths(cfg_for(toy_cfg, tmp_path, coco(), coco(annotations=invalid_boxes())),
                        KEYS)


def test_an_unknown_invalid_boxes_choice_is_refused(toy_cfg, data_root):
    with pytest.raises(InputError, match="invalid_boxes='keep': choose one of"):
        check_dataset_paths(toy_cfg, KEYS, invalid_boxes='keep')


def test_missing_and_unreadable_images_name_their_path(toy_cfg, tmp_path):
    cfg = cfg_for(toy_cfg, tmp_path, coco())
    (tmp_path / 'train' / '2.jpg').unlink()
    assert (f'annotation file {tmp_path}/train.json: image 2 ({tmp_path}/train/2.jpg) does not '
            f'exist; restore the file') in error(cfg)
    (tmp_path / 'train' / '2.jpg').write_bytes(b'')
    (tmp_path / 'train' / '1.jpg').write_text('not an image')
    message = error(cfg)
    assert f'image 1 ({tmp_path}/train/1.jpg) cannot be decoded as an image' in message
    assert '(1 more like it)' in message


def test_an_image_pillow_cannot_read_but_opencv_can_passes(toy_cfg, tmp_path):
    """LoadImageFromFile decodes with OpenCV: Pillow's verdict alone is not enough."""
    cfg = cfg_for(toy_cfg, tmp_path, coco(images=[(40, 32), (20, 6401)]))
    image = str(tmp_path / 'train' / '2.jpg')
    assert cv2.imwrite(image + '.hdr', np.ones((32, 40, 3), np.float32))  # Radiance HDR
    os.replace(image + '.hdr', image)
    with pytest.raises(OSError):
        Image.open(image)
    check_dataset_paths(cfg, KEYS)  # and the size used is the decoded one, not the file's


@pytest.mark.parametrize('size, pad, expected', [
    # Resize to (160, 160) with keep_ratio: the short side of a 6401x20 image rounds to 0
    # pixels and OpenCV's resize fails (reproduced by training on it); 6400x20 trains.
    ((6401, 20), 32, 'image 1 ({}) is 6401x20 pixels: Resize to (160, 160) makes it 160x0, and '
                     'OpenCV cannot resize to 0 pixels; this pipeline takes long sides up to '
                     '320.0 times the short side; crop or remove such images'),
    ((20, 6401), 32, 'is 20x6401 pixels: Resize to (160, 160) makes it 0x160'),
    ((6400, 20), 32, None),
    # Without padding, the backbone's minimum input side (32) decides: a 300x20 image becomes
    # 160x11 and the VanillaNet refuses it during training (reproduced); 300x60 becomes 160x32.
    ((300, 20), 1, 'is 300x20 pixels: Resize to (160, 160) makes it 160x11, under the 32 pixels '
                   'a side that padding to a multiple of 1 lifts to the backbone\'s minimum '
                   'input side of 32; this pipeline takes long sides up to 5.1 times the short '
                   'side'),
    ((300, 60), 1, None),
])
def test_too_thin_images_are_refused_exactly_when_the_run_would_fail(toy_cfg, tmp_path, size,
                                                                     pad, expected):
    cfg = cfg_for(toy_cfg, tmp_path, coco(images=[size]), pad_size_divisor=pad)
    if expected is None:
        check_dataset_paths(cfg, KEYS)
    else:
        assert expected.format(f'{tmp_path}/train/1.jpg') in error(cfg)


def test_the_limit_follows_the_smallest_scale_a_multi_scale_resize_draws(toy_cfg, tmp_path):
    """The COCO configs draw one of several scales: any of them may be drawn for the image."""
    cfg = cfg_for(toy_cfg, tmp_path, coco(images=[(2000, 20)]))
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[2] = dict(type='RandomChoiceResize', scales=[(1333, 480)], keep_ratio=True)
    check_dataset_paths(cfg, KEYS)
    pipeline[2]['scales'].append((16, 12))
    assert ('RandomChoiceResize to (16, 12) makes it 16x0, and OpenCV cannot resize to 0 pixels; '
            'this pipeline takes long sides up to 32.0 times the short side') in error(cfg)
    pipeline[2] = dict(type='RandomResize', scale=(160, 120), ratio_range=(0.1, 2.0),
                       keep_ratio=True)
    assert 'RandomResize to (16, 12) makes it 16x0' in error(cfg)


def test_without_a_keep_ratio_resize_the_image_size_itself_decides(toy_cfg, tmp_path):
    cfg = cfg_for(toy_cfg, tmp_path, coco(images=[(300, 20)]), pad_size_divisor=1)
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[2]['keep_ratio'] = False  # every image becomes 160x160
    check_dataset_paths(cfg, KEYS)
    del pipeline[2]  # no resize: the 20-pixel side reaches the backbone as it is
    assert ('is 300x20 pixels: with no resize in the pipeline it stays 300x20, under the 32 '
            'pixels a side') in error(cfg)
