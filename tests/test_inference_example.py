"""The PyTorch image-inference example of docs/deployment.md runs as written (MMDetection's
init_detector, inference_detector and DetInferencer, with fuse_detector), on a toy checkpoint and
image in place of its paths; and a converted checkpoint tests with a deploy=True config."""
import os.path as osp
import re

import pytest

from helpers import REPO_ROOT, evaluate, save_toy_checkpoint
from mmdet_vanillanet.apis import convert_checkpoint

pytestmark = pytest.mark.slow  # MMDetection's inferencer and tools, end to end


def example():
    with open(osp.join(REPO_ROOT, 'docs', 'deployment.md')) as f:
        section = f.read().split('## Image inference in PyTorch')[1]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """An (untrained) toy detector saved as a run saves it."""
    return save_toy_checkpoint(tmp_path_factory.mktemp('example') / 'epoch_1.pth')


def test_the_image_inference_example_runs(checkpoint, data_root, tmp_path, monkeypatch):
    code = example()
    for placeholder, value in (('work_dirs/mask_rcnn_vanillanet_toy/epoch_40.pth', checkpoint),
                               ('data/toy_coco/', data_root),
                               ('configs/', f'{REPO_ROOT}/configs/')):
        assert placeholder in code
        code = code.replace(placeholder, str(value))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, 'docs/deployment.md', 'exec'), scope)
    assert scope['model'].backbone.deploy and scope['inferencer'].model.backbone.deploy
    assert len(scope['result'].pred_instances) > 0
    assert len(scope['predictions']['predictions']) == 1
    assert (tmp_path / 'outputs' / 'vis' / '000000.png').exists()


def test_a_converted_checkpoint_tests_with_a_deploy_config(checkpoint, data_root, tmp_path):
    """MMDetection's own test.py takes it; ours asked for --deploy on top."""
    convert_checkpoint(str(checkpoint), str(tmp_path / 'deploy.pth'))
    output = evaluate(tmp_path / 'deploy.pth', data_root, tmp_path / 'w', '--cfg-options',
                      'model.backbone.deploy=True')
    assert 'coco/bbox_mAP' in output
