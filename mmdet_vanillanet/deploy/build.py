"""The detector a deployment (and every tool) starts from: the config file read as MMDetection's
tools read it, and its detector built in eval mode with a checkpoint's weights, refused in one
line unless they fit exactly."""
import copy
import os.path as osp
from typing import Optional, Union

from mmdet.registry import MODELS
from mmengine.config import Config

from ..models.checkpoint.detector_weights import load_detector_weights
from .equivalence import randomize


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """A config file, or a Config object, with ``cfg_options`` (``--cfg-options``) merged
    (into the object itself): how every tool, benchmark and deploy function reads one."""
    if not isinstance(config, Config):
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file not found: {config}')
        config = Config.fromfile(config)
    if cfg_options is not None:
        config.merge_from_dict(cfg_options)
    return config


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
        load_detector_weights(model, checkpoint)
    else:
        randomize(model.backbone)
    return model.eval()
