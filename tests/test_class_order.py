"""Labels mean the config's classes everywhere (issue 17 item 1): a COCO file that lists the
categories in another order than the config's classes (MMDetection would number labels by the
file: AP 0.81 read as 0.30, exit 0) and a checkpoint trained with other classes are refused in
one line, by our tools before any work and by MMDetection's own tools through the configs'
ClassOrderHook and CheckpointFitHook."""
import json
import os.path as osp

import pytest
from mmengine.config import Config

from helpers import CONFIG, run, save_toy_checkpoint, swapped, toy_options
from mmdet_runsafe.class_order import check_checkpoint_classes
from mmdet_runsafe.datasets import check_dataset_paths
from mmdet_runsafe.errors import InputError

MMDET_TEST = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'test.py')
ORDER = "in another order than the config's classes ['circle', 'square', 'triangle']"


def toy_cfg(data_root):
    cfg = Config.fromfile(CONFIG)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = data_root
    cfg.val_evaluator.ann_file = f'{data_root}annotations/instances_val.json'
    return cfg


@pytest.mark.parametrize('key', ['train_dataloader', 'val_dataloader', 'val_evaluator'])
def test_a_file_listing_the_classes_in_another_order_is_refused(data_root, tmp_path, key):
    cfg = toy_cfg(data_root)
    path = swapped(data_root, tmp_path, 'train' if key == 'train_dataloader' else 'val')
    (cfg[key].dataset if key.endswith('dataloader') else cfg[key]).ann_file = path
    with pytest.raises(InputError) as err:
        check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'))
    message = str(err.value)
    assert '\n' not in message and path in message
    assert f"lists the categories ['square', 'circle', 'triangle'] {ORDER}" in message
    assert 'reorder "categories" in the file' in message


def test_the_same_order_with_other_categories_between_passes(data_root, tmp_path):
    """Only the order of the config's classes matters: the file may declare more."""
    with open(f'{data_root}annotations/instances_val.json') as f:
        coco = json.load(f)
    coco['categories'].insert(1, dict(id=99, name='star'))
    path = tmp_path / 'val.json'
    path.write_text(json.dumps(coco))
    cfg = toy_cfg(data_root)
    cfg.val_dataloader.dataset.ann_file = cfg.val_evaluator.ann_file = str(path)
    check_dataset_paths(cfg, ('val_dataloader', ))


def test_a_checkpoint_of_other_classes_is_named():
    checkpoint = {'meta': {'dataset_meta': {'classes': ('square', 'circle', 'triangle')}}}
    with pytest.raises(InputError, match=r"x.pth was trained with the classes \['square', "
                       r"'circle', 'triangle'\], in another order .* config's \['circle', "
                       r"'square', 'triangle'\]"):
        check_checkpoint_classes('x.pth', checkpoint, ('circle', 'square', 'triangle'))
    check_checkpoint_classes('x.pth', checkpoint, ('square', 'circle', 'triangle'))
    check_checkpoint_classes('x.pth', {'meta': {}}, ('circle', ))  # MMDetection 2.x: no meta


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """An (untrained) toy detector saved as a run saves it, with its classes."""
    return save_toy_checkpoint(tmp_path_factory.mktemp('ckpt') / 'toy.pth')


def run_test_tool(tool, checkpoint, data_root, work_dir, *options):
    """tools/test.py (ours or MMDetection's own) on the toy set, with more --cfg-options."""
    script = 'tools/test.py' if tool == 'ours' else MMDET_TEST
    output = run(script, CONFIG, str(checkpoint), '--work-dir', str(work_dir), '--cfg-options',
                 *toy_options(data_root), *options, expect_ok=False)
    assert tool != 'ours' or 'Traceback' not in output
    return output


def swapped_options(path):
    return [f'test_dataloader.dataset.ann_file={path}', f'test_evaluator.ann_file={path}']


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['ours', 'mmdetection'])
def test_testing_on_a_file_of_another_order_stops(data_root, tmp_path, checkpoint, tool):
    path = swapped(data_root, tmp_path)
    # MMDetection's own tool: the configs' ClassOrderHook
    output = run_test_tool(tool, checkpoint, data_root, tmp_path / 'w', *swapped_options(path))
    assert f'{path} lists the categories [\'square\', \'circle\', \'triangle\'] {ORDER}' \
        in output
    assert 'coco/bbox_mAP' not in output


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['ours', 'mmdetection'])
def test_a_checkpoint_of_another_class_order_is_refused_at_load(data_root, tmp_path, checkpoint,
                                                                tool):
    """The file and the config agree on an order the checkpoint was not trained with."""
    path = swapped(data_root, tmp_path)
    options = [*swapped_options(path), "test_dataloader.dataset.metainfo.classes="
               "['square','circle','triangle']"]
    output = run_test_tool(tool, checkpoint, data_root, tmp_path / 'w', *options)
    assert (f"{checkpoint} was trained with the classes ['circle', 'square', 'triangle'], in "
            f"another order or with other names than the config's ['square', 'circle', "
            f"'triangle']") in output


@pytest.mark.parametrize('name', ['Circle', 'circle ', 'cir cle'])
def test_a_class_differing_only_in_case_or_spaces_is_named_before_the_test(data_root, tmp_path,
                                                                           name):
    """Fails on main: in test_evaluator.ann_file only, the whole test ran, then CocoMetric
    failed with an IndexError (it looks the classes' ids up by name)."""
    with open(f'{data_root}annotations/instances_val.json') as f:
        coco = json.load(f)
    coco['categories'][0]['name'] = name
    path = tmp_path / 'val.json'
    path.write_text(json.dumps(coco))
    cfg = toy_cfg(data_root)
    cfg.test_evaluator.ann_file = str(path)
    with pytest.raises(InputError) as err:
        check_dataset_paths(cfg, ('test_dataloader', ))
    assert f"test_evaluator.ann_file {path} declares no category named 'circle'" in str(err.value)
    assert f"'circle' differs from its {name!r} only in case or spaces" in str(err.value)
