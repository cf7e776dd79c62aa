# RetinaNet, VanillaNet-13 (act_num 4), COCO 1x, multi-scale training: the authors' setting.
#
# Published (MMDetection 2.x, 8 x A100, deploy-mode backbone): box AP 43.0, 75.4M parameters,
# 396.9 GFLOPs, 29.8 FPS.
#
#   bash tools/dist_train.sh configs/retinanet_vanillanet13_coco.py 8
#   python tools/test.py configs/retinanet_vanillanet13_coco.py CKPT --deploy
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    './_base_/vanillanet_runtime.py',
    './_base_/vanillanet_schedule_1x.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='VanillaNet',
        arch='13',
        act_num=4,
        out_indices=(1, 8, 10),  # strides 8, 16, 32; FPN adds 64 and 128
        norm_cfg=dict(type='SyncBN', eps=1e-6, requires_grad=True),
        init_cfg=dict(type='Pretrained',
                      checkpoint='https://github.com/huawei-noah/VanillaNet/releases/'
                      'download/ckpt/vanillanet_13_act_num_4_kd_pretrain.pth')),
    neck=dict(in_channels=[1024, 2048, 4096], start_level=0, add_extra_convs='on_input',
              num_outs=5))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize', scales=[(1333, short) for short in range(480, 1025, 32)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=4, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(optimizer=dict(lr=8e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[10, 11], gamma=0.1),
]
