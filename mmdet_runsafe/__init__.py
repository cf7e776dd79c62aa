"""Run safety for any MMDetection 3.x run, whatever its backbone: a config adds it with
``custom_imports = dict(imports=['mmdet_runsafe.hooks'])`` and the hooks of
configs/_base_/runsafe_runtime.py (atomic checkpoints, exact resume, the NaN and blow-up stop,
class order, one run per work dir, weights_only checkpoints).

Importing the package itself does nothing (a tool's first line, ``start``, must not wait for
MMDetection's imports); importing ``hooks`` registers the hooks and what they need. What the
command-line tools check before a run (``preflight``, ``cli``, ``datasets``,
``coco_annotations``, ``work_dir``, ``launch``) and the files they read and write
(``input_paths``, ``output_paths``, ``run_files``, ``run_lock``, ``serialization``) are imported
by the tools, not by a config.
"""
