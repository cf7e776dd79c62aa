"""tools/train.py under torchrun, after which each rank saves the weights it holds, so that the
test can check that the ranks agree."""
import os.path as osp
import runpy
import sys

import torch

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')

if __name__ == '__main__':
    sys.path.insert(0, TOOLS)  # as for python tools/train.py: the tools' shared code beside it
    train = runpy.run_path(osp.join(TOOLS, 'train.py'), run_name='tools.train')
    sys.argv = ['tools/train.py', *sys.argv[1:]]
    runner = train['main']()
    state = runner.model.module.state_dict()
    torch.save(state, osp.join(runner.work_dir, f"rank{runner.rank}.pth"))
