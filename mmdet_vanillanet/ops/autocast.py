"""The autocast state of a forward pass, and the same state again for a recomputation in the
backward pass, whatever autocast state the backward pass is called in, so that the
recomputation runs in the dtypes of the forward pass."""
import contextlib

import torch


def autocast_state(x: torch.Tensor) -> tuple:
    """(device type, enabled, dtype) for x's device; devices without autocast (meta) have
    none."""
    device = x.device.type
    try:
        return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    except RuntimeError:  # no autocast for this device type
        return device, False, None


def autocast_as(state: tuple):
    """A context that runs under ``state`` (from ``autocast_state``)."""
    device, enabled, dtype = state
    if dtype is None:  # a device without autocast
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype, enabled=enabled)
