"""How far two networks' outputs are apart, and the fusion check built on it."""
from typing import Sequence

import torch

from ..errors import InputError


def max_rel_diff(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference over all maps, relative to the largest expected magnitude."""
    diff = max((a - b).abs().max().item() for a, b in zip(expected, got))
    return diff / max(a.abs().max().item() for a in expected)


def check_fusion(unfused, fused, tensor, tolerance: float = 1e-4) -> float:
    """Relative difference of the fused backbone's outputs; an error when it is off."""
    with torch.no_grad():
        diff = max_rel_diff(unfused.backbone(tensor), fused.backbone(tensor))
    if not diff <= tolerance:
        raise InputError(f'--check: the fused backbone differs from the unfused one by {diff:.3g} '
                         f'of the output magnitude (tolerance {tolerance}); the fusion is '
                         f'broken, so its timings would mean nothing')
    return diff
