"""One run per work_dir (issue 17 item 2): a training run holds WORK_DIR/run.lock for its
lifetime; a second run or a --resume while it lives is a one-line error naming it, under our
tools and MMDetection's own; a lock left by a dead run is taken over with a warning; the workers
of a CPU distributed run die with their launcher."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

from helpers import CONFIG, REPO_ROOT, first_logged_iter_of_last_run, toy_options, train
from mmdet_runsafe import run_lock
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.run_lock import lock_work_dir, unlock_work_dir

MMDET_TRAIN = osp.join(osp.dirname(__import__('mmdet').__file__), '.mim', 'tools', 'train.py')
HOLD = ('import sys; from mmdet_runsafe.run_lock import lock_work_dir; '
        'lock_work_dir(sys.argv[1]); print("held", flush=True); sys.stdin.read()')


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/w's lock, as a live run does."""
    process = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path / 'w')], cwd=REPO_ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == 'held'
    yield process
    process.kill()
    process.wait()


def test_a_live_holder_is_named(tmp_path, holder):
    with pytest.raises(InputError) as err:
        lock_work_dir(str(tmp_path / 'w'))
    message = str(err.value)
    assert '\n' not in message and f'another run is training in {tmp_path}/w' in message
    assert f'pid {holder.pid} on ' in message
    assert message.endswith('(then resume=True continues it), stop it, or choose another '
                            'work_dir=...')  # our tools: --resume, --work-dir


def test_the_lock_of_a_dead_run_is_taken_over_with_a_warning(tmp_path, holder, monkeypatch):
    logged = []
    monkeypatch.setattr(run_lock, 'print_log', lambda message, **kw: logged.append(message))
    holder.kill()  # SIGKILL: the kernel drops its lock, its details stay in the file
    holder.wait()
    lock_work_dir(str(tmp_path / 'w'))
    try:
        assert len(logged) == 1
        assert f'(pid {holder.pid} on ' in logged[0] and 'is no longer alive' in logged[0]
    finally:
        unlock_work_dir(str(tmp_path / 'w'))
    assert (tmp_path / 'w' / 'run.lock').read_text().strip() == ''  # a run that ends empties it
    lock_work_dir(str(tmp_path / 'w'))  # and leaves nothing to warn about
    unlock_work_dir(str(tmp_path / 'w'))


KINDS = dict(folder='a folder', fifo='a FIFO', link='a symbolic link', dangling='a symbolic link')


@pytest.mark.parametrize('kind', list(KINDS))
def test_a_lock_file_that_is_no_regular_file_is_named_and_never_written_through(tmp_path, kind):
    """Issue 24: a folder gave "cannot write into the work dir (Is a directory)", a FIFO
    "(None)"; a link (in a work dir shared with others) was written through, a dangling one
    created its target."""
    work, theirs = tmp_path / 'w', tmp_path / 'theirs.txt'
    work.mkdir()
    lock = work / 'run.lock'
    if kind == 'folder':
        lock.mkdir()
    elif kind == 'fifo':
        os.mkfifo(lock)
    else:
        if kind == 'link':
            theirs.write_text('theirs')
        lock.symlink_to(theirs)
    with pytest.raises(InputError) as err:
        lock_work_dir(str(work))
    assert str(err.value) == (
        f'{lock} is {KINDS[kind]}, not the run lock file a training run writes; a run never '
        f'writes into or through one it did not create (in a shared work dir it could lead to '
        f'someone else\'s file): remove it, or choose another work_dir=...')
    assert (theirs.read_text() == 'theirs') if kind == 'link' else not theirs.exists()


@pytest.mark.slow
def test_a_second_train_run_started_while_one_trains(data_root, tmp_path):
    """The probe started two at once: both exited 0 and overwrote each other's checkpoints.
    Here the second starts once the first holds the lock (no race on who takes it)."""
    def start(epochs):
        return subprocess.Popen([sys.executable, 'tools/train.py', CONFIG, '--work-dir',
                                 str(tmp_path), '--cfg-options',
                                 *toy_options(data_root, epochs=epochs)],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    first = start(epochs=2)
    lock = tmp_path / 'run.lock'
    wait_for(lambda: lock.exists() and lock.read_text(), 120, 'the first run to take the lock')
    second = start(epochs=1)
    refused = second.communicate(timeout=600)[0]
    trained = first.communicate(timeout=600)[0]
    assert second.returncode == 1 and first.returncode == 0, trained[-2000:]
    assert f'error: another run is training in {tmp_path} (pid {first.pid} on ' in refused
    assert '(then --resume continues it), stop it, or choose another --work-dir' in refused
    assert 'Traceback' not in refused and (tmp_path / 'epoch_2.pth').exists()


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['resume', 'mmdetection'])
def test_a_second_run_while_one_lives_is_refused(data_root, tmp_path, holder, tool):
    if tool == 'resume':
        output = train(tmp_path / 'w', data_root, '--resume', epochs=1, expect_ok=False)
        assert 'Traceback' not in output
    else:  # MMDetection's own tool: the configs' WorkDirLockHook
        done = subprocess.run([sys.executable, MMDET_TRAIN, CONFIG, '--work-dir',
                               str(tmp_path / 'w'), '--cfg-options',
                               *toy_options(data_root, epochs=1)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode != 0
        output = done.stdout + done.stderr
    assert f'another run is training in {tmp_path}/w (pid {holder.pid} on ' in output
    assert not list((tmp_path / 'w').glob('*.pth'))


def children(pid):
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux')
def test_the_workers_of_a_killed_cpu_launcher_stop_and_resume_works(data_root, tmp_path):
    launcher = subprocess.Popen(
        ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(tmp_path),
         '--cfg-options', *toy_options(data_root, epochs=2), 'train_dataloader.batch_size=2'],
        cwd=REPO_ROOT, env={**os.environ, 'PYTHON': sys.executable, 'PORT': '29531'},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / 'epoch_1.pth').exists(), 600, 'the first checkpoint')
    workers = children(launcher.pid)  # the script exec'd the launcher: same pid
    assert len(workers) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    wait_for(lambda: not any(map(alive, workers)), 10, 'the workers to stop')
    output = train(tmp_path, data_root, '--resume', epochs=2)
    assert 'is no longer alive; taking the work dir over' in output
    assert first_logged_iter_of_last_run(tmp_path) > 1
