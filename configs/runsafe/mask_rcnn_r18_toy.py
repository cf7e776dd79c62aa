# Mask R-CNN with a narrow ResNet-18 on the toy COCO set (tools/make_toy_coco.py), and no
# VanillaNet: the run-safety package (mmdet_runsafe) as any MMDetection user adds it, by the
# runtime base configs/_base_/runsafe_runtime.py (its custom_imports and hooks). The toy set's
# data, heads and schedule are those of configs/mask_rcnn_vanillanet_toy.py
# (configs/_base_/mask_rcnn_toy.py):
#
#   python tools/make_toy_coco.py --out data/toy_coco
#   python tools/train.py configs/runsafe/mask_rcnn_r18_toy.py
_base_ = [
    '../_base_/mask_rcnn_toy.py',
    '../_base_/runsafe_runtime.py',
]
max_epochs = _base_.max_epochs

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=18,
        base_channels=16,  # 1/4 of ResNet-18's widths
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),  # from scratch, as the toy VanillaNet
    neck=dict(in_channels=[16, 32, 64, 128]))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(interval=max_epochs // 4, max_keep_ckpts=2))
