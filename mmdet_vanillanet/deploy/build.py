"""The detector a deployment (and every tool) starts from: the config file read as MMDetection's
tools read it, and its detector built in eval mode with a checkpoint's weights, refused in one
line unless they fit exactly."""
import copy
from typing import Optional

from mmdet.registry import MODELS
from mmengine.config import Config

from mmdet_runsafe.class_order import config_classes

from ..models.checkpoint.detector_weights import load_detector_weights
from .equivalence import randomize


def build_detector(cfg: Config, checkpoint: Optional[str] = None):
    """The config's detector in eval mode, with the checkpoint's weights, or without one
    generated weights (random, BN statistics far from identity, so that a check of the fused
    network means something). The backbone's init_cfg is not applied (no download); ``cfg`` is
    left as it was."""
    model_cfg = copy.deepcopy(cfg.model)
    if model_cfg.backbone.get('init_cfg'):
        model_cfg.backbone.init_cfg = None  # no download: the weights come from below
    model = MODELS.build(model_cfg)
    if checkpoint:
        load_detector_weights(model, checkpoint, classes=config_classes(cfg))
    else:
        randomize(model.backbone)
    return model.eval()
