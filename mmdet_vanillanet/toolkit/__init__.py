"""What only our command-line tools, benchmarks and tests use: flags and config loading,
checks before a run, CPU launching, timing, complexity, generated weights and the toy dataset.
The plugin (``mmdet_vanillanet``) never imports it: nothing here runs inside a user's
training job."""
