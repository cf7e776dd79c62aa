# Mask R-CNN with a VanillaNet backbone on COCO, the authors' setting (MMDetection 2.x code of
# huawei-noah/VanillaNet, object_detection/): multi-scale training 480..1024 x 1333, SyncBN, and
# the schedule of vanillanet_schedule_1x.py.
# The arch configs set the backbone arch, its checkpoint and the FPN input widths.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    './vanillanet_runtime.py',
    './vanillanet_schedule_1x.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='VanillaNet',
        arch='13',
        act_num=4,
        # SyncBN for multi-GPU training; MMEngine reverts it to BN in a single process, and
        # tools/train.py uses BN for distributed runs on CPU.
        norm_cfg=dict(type='SyncBN', eps=1e-6, requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint=None)),
    neck=dict(in_channels=[512, 1024, 2048, 4096]))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[(1333, short) for short in range(480, 1025, 32)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=4, dataset=dict(pipeline=train_pipeline))
