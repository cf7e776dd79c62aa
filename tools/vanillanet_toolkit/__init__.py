"""The code our command-line tools share, beside them in tools/ (not installed: the tools, the
benchmarks and the tests run from the repository): the train and test Runners (``runs``: each
tool's checks in order, run safety's preflight and then VanillaNet's), the benchmark with its
timing, machine facts and complexity, ONNX files scored by CocoMetric, the demo's steps, the
backbone check, saved-for-backward counting, and where the repository's parts are. It builds on
``mmdet_vanillanet`` (the detector a benchmark times, ONNX export) and ``mmdet_runsafe``; neither
imports it: nothing here runs inside a user's training job."""
