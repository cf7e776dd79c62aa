"""What only our command-line tools, benchmarks and tests use: flags, the train and test Runners
and the checks before a run (runs.py, datasets.py, coco_annotations.py, work_dir.py), CPU
launching, the benchmark with its timing, machine facts and complexity, the demo's steps, the
toy dataset and where the repository's parts are. It builds on ``mmdet_vanillanet.deploy`` (the
detector a benchmark times, ONNX timing); the plugin (``mmdet_vanillanet``) never imports it:
nothing here runs inside a user's training job."""
