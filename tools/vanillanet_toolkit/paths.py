"""Where the repository's parts are, for the tools, benchmarks and tests that run from it."""
import os.path as osp

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(REPO_ROOT, 'configs')
TOOLS = osp.join(REPO_ROOT, 'tools')
