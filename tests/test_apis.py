"""The user API (mmdet_vanillanet.apis): the documented names and signatures, each with an
example, importable without the deploy extra, and convert_checkpoint called as a user would."""
import inspect
import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT, build_backbone, max_rel_diff, narrow, randomize
from mmdet_vanillanet import apis

SIGNATURES = {
    'fuse_detector': '(model, inplace=True)',
    'convert_checkpoint': '(src, dst, force=False, unsafe_load=False, config=None)',
    'export_onnx': "(config, checkpoint, out, part='backbone', shape=(320, 480), static=False, "
                   'opset=17, dynamo=False, force=False, cfg_options=None)',
    'OnnxDetector': "(config, onnx_file, checkpoint=None, device='cpu', threads=None)",
    'quantize_onnx': "(config, onnx_file, out, split='val', num_images=64, seed=0, "
                     "target='onnxruntime', method='minmax', keep_float=None, force=False, "
                     'cfg_options=None)',
}


def _plain(signature: inspect.Signature) -> str:
    return str(signature.replace(parameters=[p.replace(annotation=p.empty) for p in
                                             signature.parameters.values()],
                                 return_annotation=inspect.Signature.empty))


def test_the_documented_names_signatures_and_examples():
    assert sorted(apis.__all__) == sorted(SIGNATURES)
    for name, signature in SIGNATURES.items():
        obj = getattr(apis, name)
        assert _plain(inspect.signature(obj)) == signature, name
        assert 'Example::' in obj.__doc__ and f'from mmdet_vanillanet.apis import {name}' in \
            obj.__doc__, name


def test_importing_the_api_needs_no_deploy_extra():
    """In a fresh interpreter: onnx, onnxruntime (and mmdeploy) are imported only when an ONNX
    function runs; the plugin is registered, as a config's custom_imports would."""
    probe = '''
import json, sys
import mmdet_vanillanet.apis
from mmdet.registry import MODELS
print(json.dumps(dict(
    extras=[m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'mmdeploy')],
    registered=MODELS.get('VanillaNet') is not None)))
'''
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == dict(extras=[], registered=True)


def test_convert_checkpoint_writes_the_deploy_layout_and_returns_the_counts(tmp_path):
    model = randomize(build_backbone(arch=narrow('5'), act_num=3)).eval()
    src, dst = tmp_path / 'train.pth', tmp_path / 'deploy.pth'
    torch.save({'model_ema': model.state_dict()}, src)
    before, after = apis.convert_checkpoint(str(src), str(dst))
    assert before > after > 0
    fused = build_backbone(arch=narrow('5'), act_num=3, deploy=True).eval()
    fused.load_state_dict(torch.load(dst, weights_only=True)['model'])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(model(x), fused(x)) <= 1e-4
    with pytest.raises(FileExistsError, match='pass force=True'):
        apis.convert_checkpoint(str(src), str(dst))
    assert apis.convert_checkpoint(str(src), str(dst), force=True) == (before, after)
