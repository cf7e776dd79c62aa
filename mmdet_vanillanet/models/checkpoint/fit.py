"""Whether a checkpoint's tensors fit a model: every key in its shape and nothing else, or an
error that says what differs (the act_num first, the common case; then the first mismatched
keys and shapes, with the arch the file holds), never a silent partial load. One helper lists
the differences (``key_differences``), for a backbone's tensors and for a detector's.

What a model expects is its own state dict; a training-mode file fused on load into a deploy
backbone is checked against the training network built on the meta device (backbone_weights.py):
no second description of the network to keep in line with it.
"""
import re
from typing import List

from mmdet_runsafe.errors import CheckpointError

from .forms import ACT_LEARN, StateDict, activation_keys, describe_backbone

# Tensors a fitting file may lack: BN's counters are absent from files of old torch versions.
OPTIONAL_KEYS = re.compile(r'.*num_batches_tracked$')


def key_differences(expected: StateDict, state: StateDict) -> List[str]:
    """What keeps ``state`` from fitting ``expected``, one phrase per kind ('shape mismatches
    (2): a: file (..) vs model (..), ...', 'missing keys (7): c, d, e, f, ...', 'unexpected keys
    ...'); empty when every tensor is there in its shape and nothing else. The optional BN
    counters may be missing, and act_learn is no tensor to fit (one number, or one per place):
    the load sets it from the file, 1 where the file has none."""
    missing = [k for k in expected if k not in state and not OPTIONAL_KEYS.match(k)
               and k != ACT_LEARN]
    unexpected = [k for k in state if k not in expected and k != ACT_LEARN]
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
             for k, v in expected.items()
             if k in state and k != ACT_LEARN and state[k].shape != v.shape]
    return [f'{label} ({len(keys)}): {", ".join(keys[:4])}' + (', ...' if len(keys) > 4 else '')
            for label, keys in (('shape mismatches', wrong), ('missing keys', missing),
                                ('unexpected keys', unexpected)) if keys]


def check_fits(model_state: StateDict, state: StateDict, filename: str):
    """Raise a CheckpointError naming what differs, the act_num first (the common case)."""
    kernels = [state[k].shape[-1] for k in activation_keys(model_state) if k in state]
    model_kernel = model_state[activation_keys(model_state)[0]].shape[-1]
    if kernels and model_kernel not in kernels:
        kernel = kernels[0]
        file_act_num = (kernel - 1) // 2
        raise CheckpointError(
            f'{filename} was trained with act_num={file_act_num} ({kernel}x{kernel} activation '
            f'kernels) but the model has act_num={(model_kernel - 1) // 2}: set '
            f'act_num={file_act_num} in the backbone config')
    problems = key_differences(model_state, state)
    if problems:
        raise CheckpointError(
            f'{filename} does not fit this VanillaNet ({describe_backbone(model_state)}); the '
            f'file holds {describe_backbone(state)}. ' + '; '.join(problems))
