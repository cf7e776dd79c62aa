"""mmdeploy 1.3.1 under torch >= 2.9: it predates torch 2.9 and relies on two things torch no
longer has. ``restore_torch_for_mmdeploy`` gives them back in the calling process only, so that
mmdeploy's files stay as installed:

- ``torch.onnx.export`` uses the dynamo exporter unless told ``dynamo=False`` (torch >= 2.9);
  mmdeploy's rewriters and symbolics drive the TorchScript one, so its calls get dynamo=False;
- ``torch.onnx.symbolic_opset9._cast_Long`` is gone; mmdeploy's RoIAlign symbolic for
  onnxruntime (two-stage detectors) imports it: it is defined again, a Cast to int64.
"""
import functools
import inspect

import torch
import torch.onnx.symbolic_opset9 as opset9


def legacy_exporter_by_default():
    """torch >= 2.9: a torch.onnx.export call without ``dynamo`` gets the TorchScript exporter,
    the one mmdeploy's rewriters were written for (as before torch 2.9)."""
    export = torch.onnx.export
    dynamo = inspect.signature(export).parameters.get('dynamo')
    if dynamo is None or dynamo.default is not True or hasattr(export, 'legacy_by_default'):
        return  # torch < 2.9 exports with TorchScript already, or this ran before

    @functools.wraps(export)
    def legacy_export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return export(*args, **kwargs)

    legacy_export.legacy_by_default = True
    torch.onnx.export = legacy_export


def cast_long_symbolic():
    """What ``symbolic_opset9._cast_Long(g, x, non_blocking)`` was, for mmdeploy's RoIAlign."""
    if not hasattr(opset9, '_cast_Long'):
        opset9._cast_Long = lambda g, x, non_blocking: g.op(
            'Cast', x, to_i=torch.onnx.TensorProtoDataType.INT64)


def restore_torch_for_mmdeploy():
    """Both of the above, in this process."""
    legacy_exporter_by_default()
    cast_long_symbolic()
