# Mask R-CNN, VanillaNet-13 (act_num 4), COCO 1x, multi-scale training: the authors' setting.
#
# Published (MMDetection 2.x, 8 x A100, deploy-mode backbone): box AP 44.3, mask AP 40.1,
# 77.1M parameters, 420.7 GFLOPs, 32.6 FPS.
#
#   bash tools/dist_train.sh configs/mask_rcnn_vanillanet13_coco.py 8        # train, 8 GPUs
#   python tools/train.py configs/mask_rcnn_vanillanet13_coco.py              # one GPU / CPU
#   python tools/test.py configs/mask_rcnn_vanillanet13_coco.py CKPT --deploy  # fused, box+mask AP
#   python tools/test.py configs/mask_rcnn_vanillanet13_coco.py mask_rcnn_vanillanet_13.pth
#       (the authors' released MMDetection 2.x detector loads as it is: same key layout)
_base_ = './_base_/mask_rcnn_vanillanet_coco.py'

model = dict(
    backbone=dict(
        arch='13',
        act_num=4,
        out_indices=(0, 1, 8, 10),
        init_cfg=dict(checkpoint='https://github.com/huawei-noah/VanillaNet/releases/'
                      'download/ckpt/vanillanet_13_act_num_4_kd_pretrain.pth')))
