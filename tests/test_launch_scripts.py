"""The launch scripts need no activated venv (issue 17): they run the repository's .venv python
when there is one, else the python on PATH, as `python -m torch.distributed.run` (torchrun is
on PATH only in an activated venv), and exec it, so that killing the script kills the launcher
(tests/test_run_lock.py kills one)."""
import glob
import os.path as osp
import shutil
import subprocess

import pytest

from helpers import REPO_ROOT

SCRIPTS = sorted(glob.glob(osp.join(REPO_ROOT, 'tools', '*_t*.sh')))


def resolved_python(root, env=None):
    done = subprocess.run(['bash', '-c', f'source {root}/tools/python_env.sh; echo "$PYTHON"'],
                          capture_output=True, text=True, env=env or {'PATH': '/usr/bin:/bin'})
    return done.stdout.strip()


def test_the_repositorys_venv_is_used_without_activation(tmp_path):
    (tmp_path / 'tools').mkdir()
    shutil.copy(osp.join(REPO_ROOT, 'tools', 'python_env.sh'), tmp_path / 'tools')
    assert resolved_python(tmp_path) == 'python'
    venv_python = tmp_path / '.venv' / 'bin' / 'python'
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text('#!/bin/sh\n')
    venv_python.chmod(0o755)
    assert resolved_python(tmp_path) == str(venv_python)
    assert resolved_python(tmp_path, {'PATH': '/usr/bin:/bin', 'PYTHON': '/x/python'}) == \
        '/x/python'


@pytest.mark.parametrize('script', SCRIPTS, ids=osp.basename)
def test_no_script_needs_torchrun_on_path(script):
    text = open(script).read()
    assert 'source "$(dirname "$0")/python_env.sh"' in text
    assert '\ntorchrun' not in text and '"$PYTHON"' in text
    if osp.basename(script).startswith('dist_'):
        assert 'exec "$PYTHON" -m torch.distributed.run' in text
