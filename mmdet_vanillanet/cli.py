"""What the command-line tools share: MMDetection's common flags, loading the config the way
MMDetection's tools do, and printing the user's errors on one line instead of a traceback."""
import argparse
import contextlib
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

from .errors import InputError

USER_ERRORS = (InputError, FileNotFoundError, FileExistsError)


def add_runner_args(parser: argparse.ArgumentParser):
    """--cfg-options, --launcher and --local-rank, as in MMDetection's train and test tools."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override some settings in the used config, the key-value pair '
                        'in xxx=yyy format will be merged into config file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse(parser: argparse.ArgumentParser):
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args) -> Config:
    """The config with --cfg-options merged, and work_dir from --work-dir or the config's name."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


@contextlib.contextmanager
def one_line_errors(*more):
    """Exit with 'error: <message>' for the user's errors (and ``more`` exception types)."""
    try:
        yield
    except (*USER_ERRORS, *more) as err:
        sys.exit(f'error: {err}')
