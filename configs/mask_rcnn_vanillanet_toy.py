# Mask R-CNN with a narrow VanillaNet, trained from scratch with deep training on the bundled
# toy COCO set (tools/make_toy_coco.py), sized for 2 CPU cores. `make demo` runs it end to end:
#
#   python tools/make_toy_coco.py --out data/toy_coco
#   python tools/train.py configs/mask_rcnn_vanillanet_toy.py
#   python tools/test.py configs/mask_rcnn_vanillanet_toy.py \
#       work_dirs/mask_rcnn_vanillanet_toy/epoch_40.pth --deploy
_base_ = [
    './_base_/mask_rcnn_toy.py',
    './_base_/vanillanet_runtime.py',
]
max_epochs = _base_.max_epochs

model = dict(
    backbone=dict(
        _delete_=True,
        type='VanillaNet',
        # The depth and strides of VanillaNet-7, at 1/16 of its widths.
        arch=dict(dims=[32, 32, 64, 128, 256, 256], strides=[1, 2, 2, 2, 1]),
        act_num=3,
        norm_cfg=dict(type='BN', eps=1e-6, requires_grad=True)),
    neck=dict(in_channels=[32, 64, 128, 256]))

# Deep training: act_learn rises linearly from 0 to 1 over the first half, then stays 1.
custom_hooks = [dict(type='VanillaNetDeepTrainingHook', start=0.0, duration=max_epochs // 2)]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(interval=max_epochs // 4, max_keep_ckpts=2))
