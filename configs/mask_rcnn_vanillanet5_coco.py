# Mask R-CNN, VanillaNet-5 (act_num 3, the released ImageNet weights), the VanillaNet-13 recipe.
# No published COCO numbers for this arch.
#
#   bash tools/dist_train.sh configs/mask_rcnn_vanillanet5_coco.py 8
#   python tools/test.py configs/mask_rcnn_vanillanet5_coco.py CKPT --deploy
_base_ = './_base_/mask_rcnn_vanillanet_coco.py'

model = dict(
    backbone=dict(
        arch='5',
        act_num=3,
        init_cfg=dict(checkpoint='https://github.com/huawei-noah/VanillaNet/releases/'
                      'download/ckpt/vanillanet_5.pth')))
