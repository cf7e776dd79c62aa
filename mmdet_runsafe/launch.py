"""Launching on CPU-only machines. MMEngine's launcher calls torch.cuda.set_device and wraps the
model in DDP with device_ids, and SyncBN needs CUDA; none of that works without a GPU. Here the
tool sets up a gloo process group itself before the Runner is built (the Runner then leaves it
alone), wraps without device_ids, and uses plain BN. With CUDA nothing changes.

Under torchrun, every worker dies with its launcher (``die_with_launcher``): torchrun starts
its workers in sessions of their own, so killing it (or its terminal) would otherwise leave
them training on, unseen, beside the next run."""
import ctypes
import os
import signal
import sys

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from .errors import InputError


# In MMEngine's root registry: the Runner looks wrappers up there.
@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for modules on the CPU, which DDP refuses device_ids for."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher():
    """Ask the kernel to kill this process when its parent (torchrun's agent) dies, then make
    sure the parent has not died already (the process would have been handed to init, or to a
    subreaper, before the request). Linux only; elsewhere nothing changes."""
    if not sys.platform.startswith('linux'):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # a kernel without it: the workers behave as torchrun's always did
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_launcher(cfg, launcher: str):
    cfg.launcher = launcher
    if torch.cuda.is_available():
        return
    _sync_bn_to_bn(cfg.model)
    if launcher == 'none':
        return
    if launcher != 'pytorch':
        raise InputError(f'--launcher {launcher} needs GPUs; on CPU-only machines use '
                         f'--launcher pytorch under torchrun (tools/dist_train.sh)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False)


# Where each launcher says which process of the run this is, before MMEngine sets it up.
RANK_VARIABLES = dict(pytorch='RANK', slurm='SLURM_PROCID', mpi='OMPI_COMM_WORLD_RANK')


def first_process(launcher: str) -> bool:
    """Whether this is the run's first process (rank 0), which holds its work_dir's lock."""
    return launcher not in RANK_VARIABLES or os.environ.get(RANK_VARIABLES[launcher], '0') == '0'
