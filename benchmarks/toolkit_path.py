"""Puts tools/ on the import path, so that a benchmark run as ``python benchmarks/NAME.py``
imports the code our tools share (``vanillanet_toolkit``, beside the tools, not installed)."""
import os.path as osp
import sys

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)
