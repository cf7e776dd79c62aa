"""The mmengine range the package declares is the range tested (issue 23 item 7): the hooks read
a few members MMEngine keeps private (mmdet_runsafe/runner_state.py; the list:
docs/getting_started.md), so their tests run against the lowest mmengine that
requirements/runtime.txt declares, as well as the pinned one the rest of the suite runs on.
`make install` puts that mmengine (pure Python) into .venv/lowest; it goes first on PYTHONPATH."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

LOWEST = osp.join(REPO_ROOT, '.venv', 'lowest')
# The tests of the hooks and of what they read and write (their end-to-end runs of the tools,
# marked slow, run on the pinned mmengine only).
HOOK_TESTS = ['tests/test_engine.py', 'tests/test_safe_loading.py', 'tests/test_run_lock.py',
              'tests/test_strict_loading.py', 'tests/test_class_order.py', 'tests/test_resume.py',
              'tests/test_work_dir_files.py', 'tests/test_runsafe.py']


def declared_lowest() -> str:
    with open(osp.join(REPO_ROOT, 'requirements', 'runtime.txt')) as f:
        return re.search(r'^mmengine>=([\d.]+)', f.read(), re.M).group(1)


def test_the_hooks_tests_pass_on_the_lowest_declared_mmengine():
    lowest = declared_lowest()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        [LOWEST, REPO_ROOT, *filter(None, [os.environ.get('PYTHONPATH')])])}
    found = subprocess.run([sys.executable, '-c', 'import mmengine; print(mmengine.__version__)'],
                           env=env, cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    if found != lowest:
        pytest.fail(f'{LOWEST} holds mmengine {found or "nothing"}, not {lowest} (the lowest '
                    f'requirements/runtime.txt declares): run make install')
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'not slow', '-p',
                           'no:cacheprovider', *HOOK_TESTS], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:]
