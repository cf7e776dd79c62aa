"""tools/backbone_check.py's check: a real-width VanillaNet with generated weights, saved in the
released layout and loaded back through ``init_cfg=dict(type='Pretrained')`` into a
training-mode and a deploy backbone (fused on load), and how far their outputs are apart."""
import os
import time

import torch
from mmdet.registry import MODELS

from mmdet_vanillanet.deploy.equivalence import max_rel_diff, randomize
from mmdet_vanillanet.models.checkpoint.forms import count_params


def timed(model, x):
    start = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    return out, time.perf_counter() - start


def check_backbone(arch, act_num, size, workdir):
    """(relative difference of the fused outputs, (training, deploy) parameters in millions,
    unfused seconds, fused seconds) on one generated image of ``size`` x ``size``."""
    source = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num)).eval()
    randomize(source)
    path = os.path.join(workdir, f'vanillanet_{arch}.pth')
    torch.save({'model_ema': source.state_dict()}, path)
    del source
    pretrained = dict(type='Pretrained', checkpoint=path)
    unfused = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num,
                                init_cfg=pretrained))
    unfused.init_weights()
    unfused.eval()
    deployed = MODELS.build(dict(type='VanillaNet', arch=arch, act_num=act_num, deploy=True,
                                 init_cfg=pretrained))
    deployed.init_weights()
    deployed.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    timed(deployed, x)  # warm-up
    ref, t_unfused = timed(unfused, x)
    out, t_fused = timed(deployed, x)
    rel = max_rel_diff(ref, out)
    params = [count_params(m.state_dict()) / 1e6 for m in (unfused, deployed)]
    return rel, params, t_unfused, t_fused
