"""Run safety for any MMDetection 3.x run, whatever its backbone: a config adds it with
``custom_imports = dict(imports=['mmdet_runsafe.hooks'])`` and the hooks of
configs/_base_/runsafe_runtime.py (atomic checkpoints, exact resume, the NaN and blow-up stop,
class order, one run per work dir, weights_only checkpoints).

Importing the package itself does nothing (a tool's first line, ``start``, must not wait for
MMDetection's imports); importing ``hooks`` registers the hooks and what they need, which read
the Runner through ``runner_state``. What the command-line tools set up and check before a run
(``start``, ``preflight``, ``config``, ``cli``, ``datasets``, ``coco_annotations``,
``work_dir``, ``launch``, ``toy_data``, ``units``) is imported by the tools, not by a config;
the files a run or a tool reads and writes (``input_paths``, ``output_paths``, ``run_files``,
``run_lock``, ``serialization``, ``checkpoint_sources``, ``class_order``) and whether an input
size fits in memory (``memory``) serve both.
"""
