"""The benchmark's fusion check: the fused backbone against the unfused one, before any timing."""
import torch

from ..deploy.equivalence import max_rel_diff
from ..errors import InputError


def check_fusion(unfused, fused, tensor, tolerance: float = 1e-4) -> float:
    """Relative difference of the fused backbone's outputs; an error when it is off."""
    with torch.no_grad():
        diff = max_rel_diff(unfused.backbone(tensor), fused.backbone(tensor))
    if not diff <= tolerance:
        raise InputError(f'--check: the fused backbone differs from the unfused one by {diff:.3g} '
                         f'of the output magnitude (tolerance {tolerance}); the fusion is '
                         f'broken, so its timings would mean nothing')
    return diff
