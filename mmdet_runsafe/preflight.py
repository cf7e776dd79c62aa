"""What a train or test tool checks before MMEngine's Runner is built, for any MMDetection
config: each function lists one tool's checks in the order it makes them, so that bad input is
one line before anything runs and nothing the user made is touched. MMDetection's tools' flags
are applied as its tools apply them; the config decides how the run trains (a config without
the runtime hooks runs, with one warning)."""
import argparse
from typing import Callable, Optional, Sequence, Union

from mmengine.config import Config

from .cli import (
    RUNSAFE,
    Runtime,
    apply_train_flags,
    require_amp_device,
    set_work_dir,
    warn_missing_runtime_hooks,
)
from .config import load_config
from .datasets import check_dataset_paths
from .errors import InputError
from .input_paths import check_input_file
from .launch import first_process, setup_launcher
from .output_paths import check_new_output_file, check_show_dir
from .run_lock import lock_work_dir
from .work_dir import configure_resume, guard_work_dir, refuse_links, require_writable

# The runtime hooks a tool's configs declare, or a function of the loaded config that says
# which (a tool for one family of configs also runs configs of MMDetection's own).
RuntimeOf = Union[Runtime, Callable[[Config], Runtime]]


def prepare_train_run(config: str, runtime: RuntimeOf = RUNSAFE, work_dir: Optional[str] = None,
                      cfg_options: Optional[dict] = None, amp: bool = False,
                      auto_scale_lr: bool = False, resume: Optional[str] = None,
                      overwrite: bool = False, invalid_boxes: str = 'refuse',
                      launcher: str = 'none') -> Config:
    """tools/train.py's config, checked: ``runtime`` the hooks it should declare, ``resume``
    a checkpoint path or 'auto' (the run's newest readable checkpoint), the rest as the tool's
    flags of the same names."""
    cfg = load_config(config, cfg_options)
    warn_missing_runtime_hooks(cfg, training=True, runtime=_resolved_runtime(cfg, runtime))
    set_work_dir(cfg, work_dir, config)
    apply_train_flags(cfg, amp, auto_scale_lr)
    require_amp_device(cfg, amp)
    require_writable(cfg.work_dir)
    if first_process(launcher):  # before --resume reads, or anything writes, the work_dir
        lock_work_dir(cfg.work_dir)
    refuse_links(cfg, training=True)
    configure_resume(cfg, resume)
    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'),
                        invalid_boxes=invalid_boxes)
    guard_work_dir(cfg, resume, overwrite)
    setup_launcher(cfg, launcher)
    return cfg


def prepare_test_run(config: Union[str, Config], checkpoint: str, runtime: RuntimeOf = RUNSAFE,
                     work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                     out: Optional[str] = None, show: bool = False,
                     show_dir: Optional[str] = None, wait_time: float = 2,
                     launcher: str = 'none', inputs: Sequence[Optional[str]] = ()) -> Config:
    """tools/test.py's config, checked, its arguments as the tool's flags of the same names;
    ``inputs``: other files the test reads, which ``out`` must not be."""
    cfg = load_config(config, cfg_options)
    warn_missing_runtime_hooks(cfg, training=False, runtime=_resolved_runtime(cfg, runtime))
    set_work_dir(cfg, work_dir, config if isinstance(config, str) else 'test')
    if out is not None:
        check_dump_file(out, inputs=(config if isinstance(config, str) else None, checkpoint,
                                     *inputs))
    if '://' not in checkpoint:
        check_input_file(checkpoint, 'checkpoint')
    check_dataset_paths(cfg, ('test_dataloader', ), invalid_boxes='drop')
    require_writable(cfg.work_dir)
    refuse_links(cfg, training=False)
    # MMDetection's engine package takes a second to import: only --show and --show-dir need
    # it here (the Runner imports it itself, once the checks above have passed).
    if show_dir:
        check_show_dir(cfg.work_dir, show_dir)
    if show or show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        shown = argparse.Namespace(show=show, show_dir=show_dir, wait_time=wait_time)
        cfg = trigger_visualization_hook(cfg, shown)
    setup_launcher(cfg, launcher)
    return cfg


def _resolved_runtime(cfg: Config, runtime: RuntimeOf) -> Runtime:
    """``runtime``, or what it gives for ``cfg`` where it is a function of the config."""
    return runtime(cfg) if callable(runtime) else runtime


def check_dump_file(out: str, inputs: Sequence[Optional[str]]):
    """--out: a new .pkl file for MMDetection's DumpDetResults, none of the files read."""
    if not out.endswith(('.pkl', '.pickle')):
        raise InputError(f'--out {out}: the dump file must be a .pkl file')
    check_new_output_file(out, '--out', inputs=inputs)
