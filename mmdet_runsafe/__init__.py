"""Run safety for any MMDetection 3.x run, whatever its backbone: a config adds it with
``custom_imports = dict(imports=['mmdet_runsafe'])`` and the hooks of
configs/_base_/runsafe_runtime.py (atomic checkpoints, exact resume, the NaN and blow-up stop,
class order, one run per work dir, weights_only checkpoints).

Importing it registers those hooks (``hooks``) and MMEngine's file backend for atomic
checkpoint writes in MMDetection's registries, and allow-lists what reads back the data
MMEngine writes into checkpoints for weights_only loading (``serialization``), so that any
tool, ours or MMDetection's, can resume and test the runs under torch >= 2.6. It changes
nothing else. What the command-line tools check before a run (``cli``, ``datasets``,
``coco_annotations``, ``work_dir``, ``launch``) and the files they read and write
(``input_paths``, ``output_paths``, ``run_files``, ``run_lock``) are imported by the tools,
not by a config.
"""
from . import hooks  # noqa: F401  (registers the hooks)
from .serialization import allow_runner_checkpoint_types

allow_runner_checkpoint_types()
