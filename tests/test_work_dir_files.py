"""A work dir holds the user's files too, and may be shared with others (issue 24): --overwrite
removes only what runs recorded writing there and nothing the command reads; a run writes no
checkpoint, log or last_checkpoint through a symbolic link it did not create. (run.lock:
test_run_lock.py; last_checkpoint during a run: test_engine.py.)"""
import os
import shutil

import pytest
from mmengine.config import Config

from helpers import CONFIG, run_config, train
from mmdet_runsafe.errors import InputError
from mmdet_runsafe.hooks.atomic_checkpoint_hook import AtomicLocalBackend
from mmdet_runsafe.run_files import record_written
from mmdet_runsafe.serialization import safe_load
from mmdet_runsafe.work_dir import guard_work_dir, refuse_links, resume_checkpoint


def _run_wrote(path, data=b'a checkpoint'):
    """A file as a run writes it: through the checkpoint hook's backend, recorded."""
    AtomicLocalBackend().put(data, path)
    return path


def _theirs(path, data=b'theirs'):
    path.write_bytes(data)
    return path


def _config(work_dir, **more):
    cfg = run_config(work_dir)
    cfg.update(more)
    return cfg


def test_overwrite_removes_what_runs_wrote_and_nothing_the_command_reads(tmp_path):
    """The probe's case, at the function: every *.pth went, the file load_from names too."""
    _run_wrote(tmp_path / 'epoch_1.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    record_written(str(tmp_path / 'last_checkpoint'))
    theirs = [_theirs(tmp_path / 'deploy_for_release.pth'), _theirs(tmp_path / 'pretrained.pth')]
    cfg = _config(tmp_path, load_from=str(tmp_path / 'pretrained.pth'))
    with pytest.raises(FileExistsError) as err:
        guard_work_dir(cfg, resume=None, overwrite=False)
    assert f'an earlier run left checkpoints ({tmp_path}/epoch_1.pth, {tmp_path}/last_checkpoint)' \
        in str(err.value)
    guard_work_dir(cfg, resume=None, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'deploy_for_release.pth', 'pretrained.pth', 'run_files.jsonl']
    assert all(path.read_bytes() == b'theirs' for path in theirs)
    assert resume_checkpoint(cfg) is None


def test_a_users_file_at_a_name_runs_write_stops_overwrite_before_anything_goes(tmp_path):
    """Runs of earlier versions recorded nothing; a file a user rewrote after the run wrote it
    is the user's; and the file the command loads must not be replaced by the run's own."""
    ours = _run_wrote(tmp_path / 'epoch_1.pth')
    rewritten = _run_wrote(tmp_path / 'epoch_2.pth')
    _theirs(rewritten, b'the user wrote over it')
    unrecorded = _theirs(tmp_path / 'epoch_3.pth')
    with pytest.raises(FileExistsError) as err:
        guard_work_dir(_config(tmp_path), resume=None, overwrite=True)
    assert str(err.value) == (
        f'--overwrite removes only the files runs recorded writing in run_files.jsonl, and none '
        f'the command reads; the new run would replace {rewritten} (no run recorded writing it), '
        f'{unrecorded} (no run recorded writing it): move them out of the work dir, or choose '
        f'another --work-dir')
    assert ours.exists()
    unrecorded.unlink()
    rewritten.unlink()
    with pytest.raises(FileExistsError, match=f'{ours} \\(this command reads it\\)'):
        guard_work_dir(_config(tmp_path, load_from=str(ours)), resume=None, overwrite=True)
    assert ours.read_bytes() == b'a checkpoint'


def test_a_record_names_only_files_in_its_own_folder(tmp_path):
    outside = _theirs(tmp_path / 'outside.pth')
    work = tmp_path / 'w'
    _run_wrote(work / 'epoch_1.pth')
    with open(work / 'run_files.jsonl', 'a') as f:  # crafted lines, and one cut short
        f.write('{"name": "../outside.pth", "identity": [6, 0]}\n{"name": "epo')
    guard_work_dir(_config(work), resume=None, overwrite=True)
    assert outside.exists() and not (work / 'epoch_1.pth').exists()


def test_a_checkpoint_is_never_written_through_a_link(tmp_path):
    """The checkpoint's name (renamed onto) a link to someone else's file, which stays as it
    was; a link at the old fixed partial name (NAME.partial) is not the hook's: left alone."""
    partial_target = _theirs(tmp_path / 'their_partial')
    target = _theirs(tmp_path / 'their_checkpoint')
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'epoch_1.pth.partial').symlink_to(partial_target)
    (work / 'epoch_1.pth').symlink_to(target)
    _run_wrote(work / 'epoch_1.pth', b'the run\'s')
    assert partial_target.read_bytes() == target.read_bytes() == b'theirs'
    assert not (work / 'epoch_1.pth').is_symlink()
    assert (work / 'epoch_1.pth').read_bytes() == b'the run\'s'
    assert (work / 'epoch_1.pth.partial').is_symlink()
    assert sorted(p.name for p in work.iterdir()) == ['epoch_1.pth', 'epoch_1.pth.partial',
                                                       'run_files.jsonl']


def test_a_users_file_at_a_partial_name_is_kept(tmp_path):
    """Fails before issue 24 round two: the hook wrote into NAME.partial, deleting a file of
    that name first (a user's W/epoch_1.pth.partial went)."""
    mine = _theirs(tmp_path / 'epoch_1.pth.partial', b'mine')
    _run_wrote(tmp_path / 'epoch_1.pth', b'the run\'s')
    assert mine.read_bytes() == b'mine'
    assert (tmp_path / 'epoch_1.pth').read_bytes() == b'the run\'s'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch_1.pth', 'epoch_1.pth.partial',
                                                           'run_files.jsonl']


@pytest.mark.parametrize('name, training', [('last_checkpoint', True),
                                            ('20990101_120000', False)])
def test_a_link_where_a_run_writes_is_refused_before_the_run(tmp_path, name, training):
    """last_checkpoint (MMEngine writes it with a plain open) and a log folder at a name of
    MMEngine's timestamps (it would write the run's log there)."""
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    work = tmp_path / 'w'
    work.mkdir()
    (work / name).symlink_to(elsewhere / 'x' if training else elsewhere)
    cfg = Config(dict(work_dir=str(work)))
    with pytest.raises(InputError, match=f'^{work}/{name} is a symbolic link, not '):
        refuse_links(cfg, training)
    if training:
        refuse_links(cfg, training=False)  # a test run writes no last_checkpoint


def _with_work_dir(config, work_dir):
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.mark.parametrize('training', [True, False])
def test_the_config_is_neither_written_through_a_link_nor_over_itself(tmp_path, training):
    """MMEngine's Runner writes the run's config to WORK_DIR/<the config's file name> with a
    plain open: through a link there (another file replaced), or over the config the command
    reads when it lies in the work dir (its comments and _base_ replaced by the flattened
    config, options included)."""
    work = tmp_path / 'w'
    work.mkdir()
    config = work / 'mine.py'
    text = "# my notes\n_base_ = ['%s']\n" % CONFIG
    config.write_text(text)
    with pytest.raises(InputError, match=f'^{config} is where MMEngine writes its copy of the '
                       r"run's config .*: choose another work_dir=\.\.\., or copy the config "
                       r'out of it$'):
        refuse_links(_with_work_dir(config, work), training)
    assert config.read_text() == text
    elsewhere = tmp_path / 'mine.py'
    elsewhere.write_text(text)
    config.unlink()
    config.symlink_to(tmp_path / 'theirs.py')
    cfg = _with_work_dir(elsewhere, work)
    with pytest.raises(InputError, match=f"^{config} is a symbolic link, not the copy of the "):
        refuse_links(cfg, training)
    config.unlink()
    refuse_links(cfg, training)  # a config elsewhere, nothing at its copy's name: fine


@pytest.mark.slow
def test_overwrite_keeps_the_file_load_from_names_and_the_users_others(data_root, tmp_path):
    """Issue 24 case 1 with the tool: it removed every *.pth (the probe's pretrained file and a
    converted file) and then could not find the file it was to load."""
    train(tmp_path, data_root, epochs=1)
    shutil.copy(tmp_path / 'epoch_1.pth', tmp_path / 'my_pretrained.pth')
    shutil.copy(tmp_path / 'epoch_1.pth', tmp_path / 'deploy_for_release.pth')
    before = {name: (tmp_path / name).read_bytes()
              for name in ('my_pretrained.pth', 'deploy_for_release.pth')}
    output = train(tmp_path, data_root, '--overwrite', epochs=1,
                   options=[f'load_from={tmp_path}/my_pretrained.pth'])
    assert f'--overwrite: removed the earlier run\'s files ({tmp_path}/epoch_1.pth, ' in output
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert safe_load(str(tmp_path / 'epoch_1.pth'))['meta']['epoch'] == 1
    assert os.path.isfile(tmp_path / 'last_checkpoint')
