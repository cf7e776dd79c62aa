# Mask R-CNN with a narrow ResNet-18 on the toy COCO set (tools/make_toy_coco.py), and no
# VanillaNet: the run-safety package (mmdet_runsafe) as any MMDetection user adds it, by its
# custom_imports and the hooks of configs/_base_/runsafe_runtime.py. The toy config gives the
# data, schedule and hooks; this one takes out what is VanillaNet's (the plugin, the backbone,
# deep training, the backbone's checkpoint check).
_base_ = ['../mask_rcnn_vanillanet_toy.py']

custom_imports = dict(imports=['mmdet_runsafe'], allow_failed_imports=False)
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
        init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128]))
custom_hooks = []
default_hooks = dict(checkpoint_fit=None)
