# Mask R-CNN, VanillaNet-13 x1.5 (act_num 3, the released ImageNet weights), the VanillaNet-13
# recipe with 1.5x wider FPN inputs. No published COCO numbers for this arch.
#
#   bash tools/dist_train.sh configs/mask_rcnn_vanillanet13_x1_5_coco.py 8
#   python tools/test.py configs/mask_rcnn_vanillanet13_x1_5_coco.py CKPT --deploy
_base_ = './_base_/mask_rcnn_vanillanet_coco.py'

model = dict(
    backbone=dict(
        arch='13_x1_5',
        act_num=3,
        init_cfg=dict(checkpoint='https://github.com/huawei-noah/VanillaNet/releases/'
                      'download/ckpt/vanillanet_13_x1_5.pth')),
    neck=dict(in_channels=[768, 1536, 3072, 6144]))
