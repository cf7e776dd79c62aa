"""Portable (issue 23 item 5): where ``fcntl`` does not exist (Windows), the plugin imports, and
its models, fusion, ONNX export and inference work; the work-dir lock is filelock's, which
takes the platform's own lock, and trains on with a warning where there is none."""
import json
import subprocess
import sys

from helpers import REPO_ROOT

# Run in a fresh interpreter that cannot import fcntl, as on Windows (torch, MMEngine and
# MMDetection import without it).
PROBE = '''
import sys


class NoFcntl:
    def find_spec(self, name, path=None, target=None):
        if name == 'fcntl':
            raise ModuleNotFoundError("No module named 'fcntl'", name=name)


sys.meta_path.insert(0, NoFcntl())
assert 'fcntl' not in sys.modules
sys.path.insert(0, 'tests')
import json

import numpy as np
import torch

import mmdet_vanillanet  # noqa: F401  (as a config's custom_imports)
from helpers import build_backbone, fused_copy, max_rel_diff, narrow, narrow_retinanet_config
from helpers import randomize
from mmdet_vanillanet.apis import OnnxDetector, export_onnx
from mmdet_runsafe.run_lock import lock_work_dir, unlock_work_dir

folder = sys.argv[1]
model = randomize(build_backbone(arch=narrow('13'), act_num=4)).eval()
x = torch.randn(1, 3, 64, 72)
with torch.no_grad():
    fusion = max_rel_diff(model(x), fused_copy(model)(x))
cfg = narrow_retinanet_config()
export = export_onnx(cfg, None, f'{folder}/retina.onnx', part='raw', shape=(160, 160))
image = np.random.default_rng(0).integers(0, 255, (120, 150, 3), dtype=np.uint8)
boxes = OnnxDetector(cfg, f'{folder}/retina.onnx').predict(image)[0].pred_instances.bboxes
lock_work_dir(f'{folder}/work')
unlock_work_dir(f'{folder}/work')
print(json.dumps(dict(fusion=fusion, export=export.max_rel_diff, boxes=list(boxes.shape),
                      fcntl='fcntl' in sys.modules)))
'''


def test_without_fcntl_the_plugin_fuses_exports_and_infers(tmp_path):
    done = subprocess.run([sys.executable, '-c', PROBE, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['fusion'] <= 1e-4 and result['export'] <= 1e-4
    assert result['boxes'][0] > 0 and result['boxes'][1] == 4 and not result['fcntl']
    # The lock: filelock finds no OS lock here, and the run goes on without one, saying so.
    output = done.stdout + done.stderr
    assert f'{tmp_path}/work/run.lock: no file locks here' in output
    assert 'nothing stops a second run' in output
    assert (tmp_path / 'work' / 'run.lock').read_text() == ''
