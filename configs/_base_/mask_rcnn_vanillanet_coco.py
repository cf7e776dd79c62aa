# Mask R-CNN with a VanillaNet backbone on COCO, the authors' setting (MMDetection 2.x code of
# huawei-noah/VanillaNet, object_detection/): multi-scale training 480..1024 x 1333, AdamW with
# layer-wise lr decay 0.6 over 6 groups, 12 epochs, 8 GPUs x 4 images, SyncBN.
# The arch configs set the backbone arch, its checkpoint and the FPN input widths.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='VanillaNet',
        arch='13',
        act_num=4,
        # SyncBN for multi-GPU training; tools/train.py reverts it to BN on one device or CPU.
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

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='VanillaNetLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.6, num_layers=6),
    optimizer=dict(type='AdamW', lr=1.3e-4, betas=(0.9, 0.999), weight_decay=0.05))

# The authors wrote steps [10, 12]; in a 12-epoch run only the first one ever acts.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[10], gamma=0.1),
]

# 8 GPUs x 4 images; `tools/train.py --auto-scale-lr` rescales lr for other batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=32)
