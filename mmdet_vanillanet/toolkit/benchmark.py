"""tools/benchmark.py's work: the detector it times."""
import copy
from typing import Optional

from ..deploy.detector import build_detector


def build_timed_detector(cfg, checkpoint: Optional[str] = None):
    """The config's detector in eval mode as deployment builds it (``build_detector``), with
    every detector doing the same work without a checkpoint. ``cfg`` is left as it was."""
    if not checkpoint:
        # Random weights give an arbitrary number of detections, and post-processing (mask
        # pasting above all) grows with it. Without a score threshold every detector returns
        # its full max_per_img, as on a busy image, so that detectors compare on equal work.
        cfg = copy.deepcopy(cfg)
        test_cfg = cfg.model.test_cfg
        (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.0
    return build_detector(cfg, checkpoint)
