"""What the command-line tools share: MMDetection's common flags, the warning for a config
without our runtime hooks, weights_only loading for the whole tool process, and printing the
user's errors on one line instead of a traceback, with the library's arguments named by the
flags that set them."""
import argparse
import contextlib
import errno
import os
import os.path as osp
import signal
import sys
from typing import Mapping, NamedTuple, Optional, Tuple

from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader

from .checkpoint_sources import HTTP, ZOO_PREFIXES
from .errors import Argument, InputError, NamesArguments, is_user_error
from .launch import die_with_launcher
from .serialization import safe_load
from .start import on_signals, report

USER_ERRORS = (FileNotFoundError, FileExistsError)
# Files that cannot be written (or read) for lack of room or rights: a full disk or quota, a
# file-size limit, a read-only or forbidden folder.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                errno.EPERM, errno.ENOTDIR}


class CfgOptions(DictAction):
    """MMEngine's DictAction for --cfg-options, with a KEY that has no =VALUE named in
    argparse's error line, where DictAction raised a ValueError traceback."""

    def __call__(self, parser, namespace, values, option_string=None):
        for pair in values:
            if '=' not in pair:
                raise argparse.ArgumentError(self, f'{pair} has no value: write {pair}=VALUE '
                                                   f'(KEY=VALUE pairs, separated by spaces)')
        super().__call__(parser, namespace, values, option_string)


def add_runner_args(parser: argparse.ArgumentParser):
    """--cfg-options, --launcher and --local-rank, as in MMDetection's train and test tools."""
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                        help='override some settings in the used config, the key-value pair '
                        'in xxx=yyy format will be merged into config file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse(parser: argparse.ArgumentParser):
    args = parser.parse_args()
    if args.launcher == 'pytorch':
        die_with_launcher()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


class Runtime(NamedTuple):
    """The runtime hooks a family of configs declares (name -> what a run under our tools loses
    without it), those of them that act in a test run, and the base file that declares them."""
    hooks: Mapping[str, str]
    test_hooks: Tuple[str, ...]
    base_file: str


# configs/_base_/runsafe_runtime.py's hooks (a config of MMDetection's own runs without them, as
# under its tools, with one warning).
RUNSAFE = Runtime(
    hooks={
        'AtomicCheckpointHook': 'a kill or a full disk during a save can leave no checkpoint '
                                'to resume from',
        'ClassOrderHook': 'MMDetection\'s own tools would not check the COCO files\' class '
                          'order (ours do)',
        'RandomStateHook': '--resume continues with another data order and random state',
        'ResumeLrFromConfigHook': '--resume keeps the checkpoint\'s lr over the config\'s',
        'StopOnNonFiniteHook': 'a NaN or a blow-up trains on and is checkpointed',
        'WeightsOnlyCheckpointHook': 'its checkpoints hold MMEngine\'s HistoryBuffer, which '
                                     'MMDetection\'s own tools cannot load under torch >= 2.6 '
                                     '(ours read it safely)',
        'WorkDirLockHook': 'MMDetection\'s own tools would not lock the work_dir (ours do)',
    },
    test_hooks=('ClassOrderHook', ),
    base_file='configs/_base_/runsafe_runtime.py')


def warn_missing_runtime_hooks(cfg: Config, training: bool, runtime: Runtime = RUNSAFE):
    """One warning naming the runtime hooks a config does not declare, and what each one's
    absence costs: the config decides how it runs, as under MMDetection's own tools."""
    declared = {h.get('type') for h in (cfg.get('default_hooks') or {}).values()
                if isinstance(h, dict)}
    declared |= {h.get('type') for h in cfg.get('custom_hooks') or [] if isinstance(h, dict)}
    expected = runtime.hooks if training else runtime.test_hooks
    missing = [h for h in expected if h not in declared]
    if missing:
        costs = '; '.join(f'{h}: {runtime.hooks[h]}' for h in missing)
        print_log(f'the config does not declare {", ".join(missing)}, which '
                  f'{runtime.base_file} declares; running without them '
                  f'({costs}). Add that file to the config\'s _base_ files to have them',
                  logger='current', level=30)


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str):
    """work_dir from --work-dir, else the config's, else work_dirs/CONFIG_NAME, as
    MMDetection's tools set it."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def apply_train_flags(cfg: Config, amp: bool, auto_scale_lr: bool):
    """--amp and --auto-scale-lr, as MMDetection's tools/train.py applies them."""
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if auto_scale_lr:
        if 'enable' not in cfg.get('auto_scale_lr', {}) or \
                'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')
        cfg.auto_scale_lr.enable = True


# Where MMEngine's AmpOptimWrapper trains (it asserts one of them).
AMP_DEVICES = ('cuda', 'npu', 'mlu', 'musa')


def require_amp_device(cfg: Config, amp: bool):
    """Mixed precision (--amp, or a config's AmpOptimWrapper) needs a GPU, which MMEngine
    asserts only once the Runner builds the optimizer, with a traceback."""
    if cfg.get('optim_wrapper', {}).get('type') != 'AmpOptimWrapper' or \
            get_device() in AMP_DEVICES:
        return
    what = '--amp' if amp else 'the config\'s optim_wrapper (type=\'AmpOptimWrapper\')'
    raise InputError(f'{what}: automatic mixed precision trains on a GPU only (MMEngine\'s '
                     f'AmpOptimWrapper: CUDA, NPU, MLU or MUSA), and this machine has '
                     f'{get_device()} only; train without it')


def force_weights_only_loading():
    """For the tool's whole process: make every torch.load weights_only, MMEngine's own
    loaders included (mmcls://, s3://, ... call torch.load without the argument), and route
    MMEngine's local, URL and model-zoo loading through ``safe_load`` for its messages. A
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD in the environment is overruled, with a warning."""
    if os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None) is not None:
        print_log('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is ignored: checkpoints are always loaded '
                  'with weights_only=True (tools/convert_checkpoint.py --unsafe-load rewrites a '
                  'trusted file as plain tensors)', logger='current', level=30)
    os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'

    def load(filename, map_location=None):
        return safe_load(filename, map_location=map_location or 'cpu')

    CheckpointLoader.register_scheme(prefixes=['', *HTTP, *ZOO_PREFIXES], loader=load,
                                     force=True)


def flag_of(argument: Argument, flags: Mapping[str, str]) -> str:
    """The command-line words for an argument of a library function: the flag that sets it (a
    tool's flag is the argument's name, dashed, unless ``flags`` says otherwise) and its value
    as typed (``--part raw``, ``--force``, ``--shape 16 64``)."""
    flag = flags.get(argument.name, '--' + argument.name.replace('_', '-'))
    value = argument.value
    if value is ... or value is True:
        return flag
    return ' '.join([flag, *map(str, value if isinstance(value, (list, tuple)) else [value])])


@contextlib.contextmanager
def interruptible(outcome: str = 'no file was left half-written'):
    """For a tool that writes files: SIGTERM (a kill, a job scheduler) and SIGINT (Ctrl-C) end
    it through the exception path, so that what it was writing is removed (``new_file_for``)
    as on an error, then one line (``outcome`` says what is left) and the exit status of the
    signal, without a traceback. Python's default for SIGTERM ends the process without any
    clean-up. Only the tool's own process stops so; its DataLoader workers, which Ctrl-C
    reaches too, are ended by its clean-up (``start.on_signals``)."""
    def stop(signum):
        raise Interrupted(signum)

    previous = on_signals(stop)
    try:
        yield
    except (Interrupted, KeyboardInterrupt) as err:
        # The signals stay ignored (``on_signals``): the exit, which ends the DataLoader
        # workers, must not be cut short either.
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        report(signum, outcome)
        sys.exit(128 + signum)
    except BaseException:
        _restore(previous)
        raise
    _restore(previous)


def _restore(handlers):
    for s, handler in handlers.items():
        signal.signal(s, handler)


class Interrupted(BaseException):
    """SIGTERM or SIGINT, raised where the tool was (a BaseException: no ``except Exception``
    takes it for an error of the work)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def one_line_errors(*more, flags: Optional[Mapping[str, str]] = None,
                    remedy: str = 'free some space or fix its permissions, or choose another '
                                  'place to write'):
    """Exit with 'error: <message>' for the user's errors (``errors.is_user_error``, files not
    found or in the way, and ``more`` exception types), and for writes that fail for lack of
    room or rights (naming the file, then ``remedy``: a training tool's is TRAINING_REMEDY).
    The arguments a library error names are worded as the tool's flags (``flags``: argument
    name -> flag, where the flag is not the argument's name)."""
    try:
        yield
    except Exception as err:
        if is_user_error(err) or isinstance(err, (*USER_ERRORS, *more)):
            worded = err.worded(lambda a: flag_of(a, flags or {})) \
                if isinstance(err, NamesArguments) else str(err)
            sys.exit(f'error: {worded}')
        if isinstance(err, OSError) and err.errno in WRITE_ERRORS:
            what = 'access' if err.errno in (errno.EACCES, errno.EPERM) else 'write'
            sys.exit(f'error: cannot {what} {err.filename or "a file"} ({err.strerror}); '
                     f'{remedy}')
        raise


# What a training or test run stopped by SIGTERM or Ctrl-C leaves (interruptible's outcome).
TRAINING_INTERRUPTED = ('complete checkpoints are kept (each is written under a name of its own '
                        'and renamed into place): --resume continues from the last one')
TEST_INTERRUPTED = 'the test was not finished and printed no metrics'

TRAINING_REMEDY = ('free some space, fix its permissions or choose a writable --work-dir '
                   '(complete checkpoints are kept: --resume continues from the last one)')
