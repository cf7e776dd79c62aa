# The authors' COCO 1x recipe for VanillaNet detectors: AdamW with layer-wise lr decay 0.6 over
# 6 layer groups, linear warm-up 500 iterations from 0.001, 12 epochs with the lr divided by 10
# at epoch 10, 8 GPUs x 4 images. (The authors wrote steps [10, 12]; in a 12-epoch run only the
# first one ever acts.)
_base_ = ['mmdet::_base_/schedules/schedule_1x.py']

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='VanillaNetLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.6, num_layers=6),
    optimizer=dict(type='AdamW', lr=1.3e-4, betas=(0.9, 0.999), weight_decay=0.05))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[10], gamma=0.1),
]

# 8 GPUs x 4 images (train_dataloader.batch_size=4 in the detector configs);
# `tools/train.py --auto-scale-lr` rescales the lr for other total batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=32)
