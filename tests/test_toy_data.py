"""The toy COCO set: reproducible to the byte, loadable by pycocotools, and with annotations that
match the pixels exactly, so that a demo's AP measures the model and not the labels."""
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from helpers import run
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.toy_data import CLASSES, make_toy_coco

# pycocotools' decode warns under numpy 2 on every mask, which buries real warnings
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

SMALL = dict(num_train=20, num_val=8)
SPLITS = ('train', 'val')


def _quiet(fn, *args):
    """pycocotools prints progress for every call; keep the test output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _tree(root):
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def _dilate(mask, radius):
    """Square dilation, computed independently of the generator's own helper."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3)), iterations=radius)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp('toy') / 'toy_coco'
    paths = make_toy_coco(str(out), seed=0, **SMALL)
    cocos = {split: _quiet(COCO, paths[f'{split}_ann']) for split in SPLITS}
    return out, paths, cocos


def _each_ann(cocos):
    for split, coco in cocos.items():
        for ann in coco.dataset['annotations']:
            yield split, coco, ann


def test_layout_and_counts(toy):
    out, paths, cocos = toy
    assert paths == {
        'train_img': str(out / 'train'), 'val_img': str(out / 'val'),
        'train_ann': str(out / 'annotations' / 'instances_train.json'),
        'val_ann': str(out / 'annotations' / 'instances_val.json')}
    for split, count in zip(SPLITS, (SMALL['num_train'], SMALL['num_val'])):
        images = cocos[split].dataset['images']
        assert len(images) == count
        assert len({img['id'] for img in images}) == count
        assert sorted(p.name for p in Path(paths[f'{split}_img']).iterdir()) == \
            [f'{i:06d}.png' for i in range(count)]
        for img in images:
            with Image.open(Path(paths[f'{split}_img']) / img['file_name']) as im:
                assert im.mode == 'RGB' and im.size == (img['width'], img['height']) == (160, 160)
        per_image = [len(cocos[split].getAnnIds(imgIds=img['id'])) for img in images]
        assert 1 <= min(per_image) and max(per_image) <= 4
        assert max(per_image) > 1
    assert [c['name'] for c in cocos['train'].dataset['categories']] == list(CLASSES)
    assert [c['id'] for c in cocos['train'].dataset['categories']] == [1, 2, 3]


def test_every_class_in_both_splits(toy):
    _, _, cocos = toy
    for coco in cocos.values():
        assert {a['category_id'] for a in coco.dataset['annotations']} == {1, 2, 3}


def test_boxes_and_areas_match_masks(toy):
    _, _, cocos = toy
    for _, coco, ann in _each_ann(cocos):
        img = coco.imgs[ann['image_id']]
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0
        x, y, w, h = ann['bbox']
        assert abs(x - xs.min()) <= 1 and abs(x + w - (xs.max() + 1)) <= 1, ann['id']
        assert abs(y - ys.min()) <= 1 and abs(y + h - (ys.max() + 1)) <= 1, ann['id']
        assert abs(ann['area'] - mask.sum()) <= 1, ann['id']
        assert 50 <= ann['area'] <= 70 * 70
        polygon = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
        assert polygon.min() >= 0
        assert polygon[:, 0].max() <= img['width'] and polygon[:, 1].max() <= img['height']
        assert ann['iscrowd'] == 0


def test_masks_do_not_touch(toy):
    _, _, cocos = toy
    for coco in cocos.values():
        for img_id in coco.getImgIds():
            masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
            for i, a in enumerate(masks):
                for b in masks[i + 1:]:
                    assert not (_dilate(a.astype(bool), 1) & b.astype(bool)).any(), img_id


def test_pixels_show_the_annotated_shapes(toy):
    """Inside each mask the colour is clearly unlike the ring of background just outside it."""
    _, paths, cocos = toy
    for split, coco, ann in _each_ann(cocos):
        file_name = coco.imgs[ann['image_id']]['file_name']
        image = np.asarray(Image.open(Path(paths[f'{split}_img']) / file_name), dtype=float)
        mask = coco.annToMask(ann).astype(bool)
        ring = _dilate(mask, 2) & ~mask
        inside, outside = image[mask].mean(axis=0), image[ring].mean(axis=0)
        assert np.linalg.norm(inside - outside) > 60, ann['id']


@pytest.mark.parametrize('iou_type', ['bbox', 'segm'])
def test_ground_truth_as_detections_scores_ap_one(toy, iou_type):
    _, _, cocos = toy
    for coco in cocos.values():
        dets = []
        for ann in coco.dataset['annotations']:
            det = dict(image_id=ann['image_id'], category_id=ann['category_id'], score=1.0)
            if iou_type == 'bbox':
                det['bbox'] = ann['bbox']
            else:
                det['segmentation'] = coco.annToRLE(ann)
            dets.append(det)
        evaluator = COCOeval(coco, _quiet(coco.loadRes, dets), iou_type)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            _quiet(step)
        assert evaluator.stats[0] == pytest.approx(1.0)  # AP @ IoU 0.50:0.95
        assert evaluator.stats[8] == pytest.approx(1.0)  # AR @ 100 detections


def test_same_seed_gives_identical_bytes(tmp_path, toy):
    out, _, _ = toy
    make_toy_coco(str(tmp_path / 'again'), seed=0, **SMALL)
    first, second = _tree(out), _tree(tmp_path / 'again')
    assert len(first) == SMALL['num_train'] + SMALL['num_val'] + 2
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)


def test_different_seed_differs(tmp_path, toy):
    out, _, _ = toy
    make_toy_coco(str(tmp_path / 'other'), seed=1, **SMALL)
    first, other = _tree(out), _tree(tmp_path / 'other')
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_image_size_is_height_width(tmp_path):
    paths = make_toy_coco(str(tmp_path / 'wide'), num_train=3, num_val=3, image_size=(80, 120))
    coco = _quiet(COCO, paths['val_ann'])
    for img in coco.dataset['images']:
        assert (img['width'], img['height']) == (120, 80)
        with Image.open(Path(paths['val_img']) / img['file_name']) as im:
            assert im.size == (120, 80)
    for ann in coco.dataset['annotations']:
        assert coco.annToMask(ann).shape == (80, 120)


def test_refuses_non_empty_dir_unless_overwrite(tmp_path):
    out = tmp_path / 'mine'
    out.mkdir()
    keep = out / 'notes.txt'
    keep.write_text('precious')
    with pytest.raises(FileExistsError, match='overwrite=True') as info:
        make_toy_coco(str(out), num_train=2, num_val=2)
    assert str(out) in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']
    make_toy_coco(str(out), num_train=2, num_val=2, overwrite=True)
    assert keep.read_text() == 'precious'
    assert (out / 'annotations' / 'instances_val.json').is_file()


def test_accepts_existing_empty_dir(tmp_path):
    make_toy_coco(str(tmp_path), num_train=1, num_val=1)
    assert (tmp_path / 'train' / '000000.png').is_file()


def test_force_never_writes_through_a_link(tmp_path):
    """Fails before issue 24 round two: --force wrote the PNGs (and the annotations) through a
    symbolic link in the output dir, into the link's target. A link at a file's name is now
    replaced by the file; one at a folder's name is refused."""
    out = tmp_path / 'toy'
    make_toy_coco(str(out), num_train=2, num_val=1, image_size=(48, 48))
    expected = (out / 'train' / '000000.png').read_bytes()
    theirs = tmp_path / 'theirs'
    theirs.write_bytes(b'theirs')
    for name in ('train/000000.png', 'annotations/instances_val.json'):
        (out / name).unlink()
        (out / name).symlink_to(theirs)
    make_toy_coco(str(out), num_train=2, num_val=1, image_size=(48, 48), overwrite=True)
    assert theirs.read_bytes() == b'theirs'
    assert not (out / 'train' / '000000.png').is_symlink()
    assert (out / 'train' / '000000.png').read_bytes() == expected
    assert not (out / 'annotations' / 'instances_val.json').is_symlink()
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    for path in (out / 'val').iterdir():
        path.unlink()
    (out / 'val').rmdir()
    (out / 'val').symlink_to(elsewhere)
    with pytest.raises(InputError, match='val is a symbolic link'):
        make_toy_coco(str(out), num_train=2, num_val=1, image_size=(48, 48), overwrite=True)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['000000.png', '000001.png']


@pytest.mark.parametrize('argv, message', [
    (['--size', '100000', '100000'], 'error: --size 100000 100000: each side at most 2048 (the '
                                     'shapes are at most 70 px; an image is drawn in memory at '
                                     '24 bytes a pixel)'),
    (['--size', '16', '96'], 'error: --size 16 96: too small for 20 px shapes (each side at '
                             'least 26)'),
    (['--num-train', '-1'], 'error: --num-train -1: must not be negative'),
])
def test_the_tool_refuses_in_one_line_naming_its_flags_before_writing(tmp_path, argv, message):
    """Fails on 675fa6e: --size 100000 100000 ended in numpy's MemoryError with empty folders
    left, and the errors named make_toy_coco's arguments (num_train), not the tool's flags."""
    output = run('tools/make_toy_coco.py', '--out', str(tmp_path / 'toy'), *argv,
                 expect_ok=False)
    assert output.strip().splitlines() == [message]
    assert not (tmp_path / 'toy').exists()
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('precious')
    output = run('tools/make_toy_coco.py', '--out', str(tmp_path / 'mine'), expect_ok=False)
    assert output.strip().splitlines() == [
        f'error: {tmp_path / "mine"} exists and is not empty; choose another output dir, or pass '
        f'--force to replace the toy files in it']
