"""The detector a benchmark or check times: the config's model in eval mode, with a checkpoint's
weights or generated ones."""
import copy
from typing import Optional

from mmdet.registry import MODELS

from ..models.detector import load_detector_weights
from .weights import randomize


def build_detector(cfg, checkpoint: Optional[str] = None):
    """The config's detector in eval mode, with the checkpoint's weights or random ones (BN
    statistics far from identity, so that a fusion check means something). ``cfg`` is left as
    it was."""
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.backbone.get('init_cfg'):
        model_cfg.backbone.init_cfg = None  # no download: the weights come from below
    if not checkpoint:
        # Random weights give an arbitrary number of detections, and post-processing (mask
        # pasting above all) grows with it. Without a score threshold every detector returns
        # its full max_per_img, as on a busy image, so that detectors compare on equal work.
        test_cfg = model_cfg.test_cfg
        (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.0
    model = MODELS.build(model_cfg)
    if checkpoint:
        load_detector_weights(model, checkpoint)
    else:
        randomize(model.backbone)
    return model.eval()
