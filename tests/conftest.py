"""Fixtures; the helpers the tests share are in helpers.py."""
import os

# The Triton kernel's tests run in Triton's interpreter (CI has no GPU). Triton reads this when
# it is first imported, and torch may import it early, so it is set here, before any test
# module is collected. Subprocesses (helpers.run) do not inherit it.
os.environ['TRITON_INTERPRET'] = '1'

import pytest  # noqa: E402
import torch  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from helpers import (  # noqa: E402
    build_backbone,
    narrow,
    randomize,
    scale_options,
    toy_data_config,
    train,
)
from mmdet_runsafe.toy_data import make_toy_coco  # noqa: E402
from mmdet_vanillanet.deploy.onnx_export import export_onnx  # noqa: E402


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A tiny toy COCO set: 16 training and 6 validation images of 96x96."""
    root = tmp_path_factory.mktemp('toy') / 'data'
    make_toy_coco(str(root), num_train=16, num_val=6, image_size=(96, 96))
    return f'{root}/'


@pytest.fixture(scope='module')
def exported(tmp_path_factory, data_root):
    """(config on the toy set, checkpoint, raw fp32 file) of the toy Mask R-CNN with generated
    weights."""
    folder = tmp_path_factory.mktemp('exported')
    cfg = toy_data_config(data_root)
    init_default_scope('mmdet')
    model = randomize(MODELS.build(cfg.model)).eval()
    checkpoint = str(folder / 'model.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    raw = str(folder / 'raw.onnx')
    export_onnx(cfg, checkpoint, raw, part='raw', shape=(96, 96))
    return cfg, checkpoint, raw


@pytest.fixture
def image():
    return torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='session')
def random_narrow13():
    """A narrow arch-13 (act_num 4) network with random weights and BN statistics."""
    return randomize(build_backbone(arch=narrow('13'), act_num=4)).eval()


# A toy Mask R-CNN trained once per session to a useful AP (box about 0.14), for the tests that
# need a trained model (the AP kept after INT8 quantization): 32 training images of 96 px at
# scale 96, 16 epochs, smaller RoI samples. The smallest run measured to keep its AP through
# quantization; fewer epochs (12) left box AP 0.078 and a noisier int8 delta.
TRAINED_EPOCHS = 16
TRAINED_SCALE = 96


@pytest.fixture(scope='session')
def trained_toy(tmp_path_factory):
    """(data root, checkpoint, image scale) of the toy Mask R-CNN trained on 32 images, with 48
    to validate."""
    folder = tmp_path_factory.mktemp('trained_toy')
    root = f'{folder}/data/'
    make_toy_coco(root, num_train=32, num_val=48, image_size=(96, 96))
    epochs = TRAINED_EPOCHS
    train(folder / 'run', root, epochs=epochs, options=[
        f'default_hooks.checkpoint.interval={epochs}', f'param_scheduler.1.end={epochs}',
        f'train_cfg.val_interval={epochs + 1}',  # no validation: the test scores the model
        'param_scheduler.0.end=10', 'model.train_cfg.rcnn.sampler.num=64',
        'model.train_cfg.rpn_proposal.max_per_img=150',
        *(f'{k}={v}' for k, v in scale_options(TRAINED_SCALE).items())],
        timeout=1800)  # 206 s here beside another job; over 600 s on a busier machine
    return root, str(folder / 'run' / f'epoch_{epochs}.pth'), TRAINED_SCALE
