"""Stand-ins for the released weights, for checks, tests and demos on machines without them."""
import torch


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics far from their initial values, in place.

    A fresh BN (mean 0, var 1, gamma 1, beta 0) would hide folding errors. Conv weights are
    scaled by 1/sqrt(fan_in) so that activations stay of order one through the depth.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name.endswith('running_var'):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) * 1.5 + 0.5)
        elif name.endswith(('running_mean', 'bias')):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
        elif tensor.dim() == 1:  # BN gamma
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5)
    return model
