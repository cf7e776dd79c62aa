"""What a training step keeps for its backward pass, counted exactly.

Every tensor autograd keeps for backward passes through ``saved_tensors_hooks`` as the forward
pass records the graph (PyTorch's ops and custom autograd Functions alike), so the count is the
same bytes on any device; on the meta device it needs no memory and no compute, at any input
size. Tensors that share memory (a view and its base, an op's output kept by two ops) are counted
once: the count is over distinct storages. Parameters and buffers are counted apart, as
``held``: the model holds them whether or not a step runs.
"""
from typing import Callable, Iterable

import torch


def saved_for_backward(forward: Callable[[], object], held: Iterable[torch.Tensor] = ()) -> dict:
    """Run ``forward()`` (a training forward pass) and count what autograd keeps:
    ``activations`` (bytes of the distinct storages saved, other than those of ``held``),
    ``held`` (bytes of the saved storages of ``held``, e.g. the model's parameters), and
    ``tensors`` (how many saved tensors reached the hook)."""
    held_storages = {id(t.untyped_storage()) for t in held}
    storages, count = {}, 0

    def pack(tensor):
        nonlocal count
        count += 1
        storage = tensor.untyped_storage()
        storages[id(storage)] = storage  # kept alive here, so that no id is reused
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    activations = sum(s.nbytes() for key, s in storages.items() if key not in held_storages)
    held_bytes = sum(s.nbytes() for key, s in storages.items() if key in held_storages)
    del result
    return dict(activations=activations, held=held_bytes, tensors=count)


def model_tensors(model: torch.nn.Module) -> list:
    """The parameters and buffers of ``model``: what ``held`` takes."""
    return [*model.parameters(), *model.buffers()]
