"""The packages' architecture: two import packages with one job each, dependencies one way
(mmdet_runsafe, run safety for any MMDetection run, knows nothing of VanillaNet; VanillaNet's
network imports neither it nor the tools' code); the plugin that configs import is separable from
the tools' code and the deploy API, has no import cycle, changes no global state beyond what it
documents, and a config trains the same under MMDetection's own tools and ours; the tools are
thin."""
import argparse
import ast
import doctest
import glob
import importlib
import json
import os.path as osp
import runpy
import subprocess
import sys

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import (
    CONFIG,
    REPO_ROOT,
    RunsCode,
    config_without_runtime_hooks,
    run,
    run_config,
    save_toy_checkpoint,
    toy_config,
    toy_options,
)
from mmdet_runsafe import cli
from mmdet_runsafe.cli import RUNSAFE
from mmdet_runsafe.errors import CheckpointError
from mmdet_runsafe.work_dir import resume_checkpoint
from vanillanet_toolkit.runs import VANILLANET_RUNTIME, build_train_runner

SAFETY = 'mmdet_runsafe'
TOOLKIT, DEPLOY = 'vanillanet_toolkit', 'mmdet_vanillanet.deploy'
# The distribution's two packages, and our tools' shared code beside the tools in tools/.
PACKAGES = ('mmdet_vanillanet', SAFETY, TOOLKIT)
TOOLS_DIR = osp.join(REPO_ROOT, 'tools')
# The run-safety modules only tools import (a config's custom_imports loads the hooks).
SAFETY_TOOLS = tuple(f'{SAFETY}.{m}' for m in (
    'cli', 'config', 'coco_annotations', 'datasets', 'launch', 'preflight', 'start', 'toy_data',
    'units', 'work_dir'))
# What the plugins (what configs' custom_imports load) never import: our tools' code, and what a
# user calls to deploy.
OUTSIDE_PLUGIN = (TOOLKIT, DEPLOY, 'mmdet_vanillanet.apis', *SAFETY_TOOLS)
# VanillaNet's network: the paper's modules and how they compute, which import neither the run
# safety package nor the tools' code (loading weights, models/checkpoint/, may).
NETWORK = ('mmdet_vanillanet.config_error', 'mmdet_vanillanet.models.vanillanet',
           'mmdet_vanillanet.models.series_activation', 'mmdet_vanillanet.models.fusion',
           'mmdet_vanillanet.models.arch_settings', 'mmdet_vanillanet.ops')
# Imports inside functions, each with the reason it cannot be at the top of its module.
LATE_IMPORTS = {
    # Triton is optional: CPU users and the training path never import it.
    ('mmdet_vanillanet.ops.activation_kernel', 'mmdet_vanillanet.ops.triton_activation'),
}
TOOLS = sorted(glob.glob(osp.join(REPO_ROOT, 'tools', '*.py')))
MAX_TOOL_FUNCTION_LINES = 45


def module_name(path):
    rel = osp.relpath(path, TOOLS_DIR if path.startswith(TOOLS_DIR + osp.sep) else REPO_ROOT)
    rel = rel[:-3].replace(osp.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def imports_of(path, modules):
    """(module-level imports, function-level imports) of the package's own modules."""
    name = module_name(path)
    package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
    tree = ast.parse(open(path).read())
    top, late = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [f'{target}.{a.name}' if f'{target}.{a.name}' in modules else target
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        targets = {t for t in targets if t.startswith(PACKAGES)}
        (top if node.col_offset == 0 else late).update(targets)
    return top, late


def package_files():
    """The two packages' files and our tools' shared code (beside the tools, not installed)."""
    return [p for package in PACKAGES
            for p in glob.glob(osp.join(TOOLS_DIR if package == TOOLKIT else REPO_ROOT,
                                        package, '**', '*.py'), recursive=True)]


def package_graph():
    modules = {module_name(p): p for p in package_files()}
    graph, late = {}, {}
    for name, path in modules.items():
        top, inner = imports_of(path, modules)
        edges = {t for t in top if t in modules and t != name}
        # Importing a.b.c runs the __init__ of a.b first.
        for target in list(edges):
            parts = target.split('.')
            edges.update('.'.join(parts[:i]) for i in range(1, len(parts))
                         if '.'.join(parts[:i]) in modules and '.'.join(parts[:i]) != name
                         and not name.startswith('.'.join(parts[:i]) + '.'))
        graph[name] = edges
        late[name] = {t for t in inner if t in modules}
    return graph, late


def test_no_import_cycle_and_no_late_import_without_a_reason():
    graph, late = package_graph()
    state = {}

    def visit(node, path):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 'open', f'import cycle: {" -> ".join(path + [nxt])}'
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    found = {(m, t) for m, targets in late.items() for t in targets}
    assert found == LATE_IMPORTS


def test_no_module_name_twice():
    """A module's name says what it holds, once in the packages (there were two detector.py),
    packages' names included (models/checkpoint/ beside a checkpoint.py would be two)."""
    names = [osp.basename(p)[:-3] for p in package_files() if osp.basename(p) != '__init__.py']
    names += [osp.basename(osp.dirname(p)) for p in package_files()
              if osp.basename(p) == '__init__.py']
    assert len(names) > 30
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


# Top-level functions of one name in two modules of the packages, each with the reason both
# names say what they do: none.
SHARED_FUNCTION_NAMES = {}


def test_no_two_functions_of_one_name():
    """A name says what a function does, once in the two packages: input_paths' and run_files'
    not_a_regular_file (what kind of file is at a path; the error for a file a run did not
    write) were two things under one name."""
    where = {}
    for path in package_files():
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where.setdefault(node.name, []).append(module_name(path))
    assert len(where) > 300
    shared = {name: sorted(modules) for name, modules in where.items() if len(modules) > 1}
    assert shared == SHARED_FUNCTION_NAMES


def test_dependencies_go_one_way_between_the_two_packages():
    """Run safety knows nothing of VanillaNet; VanillaNet's network knows nothing of run safety
    nor of the tools (its own errors say they are the user's: config_error.ConfigError)."""
    graph, late = package_graph()
    safety = [m for m in graph if m.startswith(SAFETY)]
    assert len(safety) > 15
    for module in safety:
        assert not any(t.startswith('mmdet_vanillanet') for t in graph[module] | late[module]), \
            module
    network = [m for m in graph if m.startswith(NETWORK)]
    assert len(network) > 8
    for module in network:
        assert not any(t.startswith((SAFETY, TOOLKIT)) for t in graph[module] | late[module]), \
            module


def test_the_plugin_never_imports_the_tools_code_nor_the_deploy_api():
    """The deploy API is a user's: it needs nothing of our tools' code (which may use it)."""
    graph, late = package_graph()
    plugin = [m for m in graph if not m.startswith(OUTSIDE_PLUGIN)]
    assert len(plugin) > 10
    for module in plugin:
        assert not any(t.startswith(OUTSIDE_PLUGIN) for t in graph[module] | late[module]), module
    deploy = [m for m in graph if m.startswith(DEPLOY)]
    assert len(deploy) > 5
    for module in deploy:
        assert not any(t.startswith(TOOLKIT) for t in graph[module] | late[module]), module


def test_importing_the_plugin_registers_and_changes_nothing_else():
    """In a fresh interpreter: the registries gain our modules; MMEngine's classes, its
    checkpoint loaders and the environment stay as they were."""
    probe = f'''
import json, os, sys
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import CheckpointLoader
before = (HistoryBuffer.__getstate__, dict(CheckpointLoader._schemes), dict(os.environ))
import mmdet_vanillanet
alone = sorted(m for m in sys.modules if m.startswith('mmdet_runsafe.hooks'))
import mmdet_runsafe.hooks
from mmdet.registry import HOOKS, MODELS
after = (HistoryBuffer.__getstate__, dict(CheckpointLoader._schemes), dict(os.environ))
print(json.dumps(dict(
    same=[a == b for a, b in zip(before, after)], alone=alone,
    outside_plugin=[m for m in sys.modules if m.startswith({OUTSIDE_PLUGIN!r})],
    registered=[MODELS.get('VanillaNet') is not None,
                all(HOOKS.get(h) is not None for h in {list(RUNSAFE.hooks)!r})])))
'''
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == dict(same=[True, True, True], alone=[], outside_plugin=[],
                          registered=[True, True])


def test_mmdetections_own_train_tool_and_ours_register_the_same_hooks(data_root, tmp_path):
    """MMDetection's tools/train.py builds its Runner from the config alone."""
    options = toy_options(data_root)
    theirs = toy_config(data_root, tmp_path / 'theirs')
    their_hooks = [type(h).__name__ for h in Runner.from_cfg(theirs).hooks]

    train = runpy.run_path(osp.join(REPO_ROOT, 'tools', 'train.py'), run_name='tools.train')
    args = train['build_parser']().parse_args([CONFIG, '--work-dir', str(tmp_path / 'ours'),
                                               '--cfg-options', *options])
    ours = build_train_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options)
    our_hooks = [type(h).__name__ for h in ours.hooks]
    assert our_hooks == their_hooks
    for hook in (*RUNSAFE.hooks, 'CheckpointFitHook', 'VanillaNetDeepTrainingHook'):
        assert hook in our_hooks


@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '*.py'))))
def test_every_config_declares_the_runtime_it_needs(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmdet_runsafe.hooks', 'mmdet_vanillanet'],
                                      allow_failed_imports=False)
    assert {h['type'] for h in cfg.default_hooks.values()} >= {*RUNSAFE.hooks,
                                                                 'CheckpointFitHook'}


def test_only_runner_state_reads_what_mmengines_runner_keeps_private():
    """The list in docs/getting_started.md (MMEngine versions) stays whole: every read of a
    Runner's private member is in mmdet_runsafe/runner_state.py."""
    found = []
    for path in package_files():
        if path.endswith(osp.join('mmdet_runsafe', 'runner_state.py')):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and node.attr.startswith('_') and \
                    not node.attr.startswith('__') and isinstance(node.value, ast.Name) and \
                    node.value.id == 'runner':
                found.append(f'{module_name(path)}: runner.{node.attr}')
    assert not found


def test_make_install_names_a_missing_python_before_doing_anything():
    done = subprocess.run(['make', '-s', 'check-python', 'PYTHON=/nowhere/python3.11'],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "error: '/nowhere/python3.11' is not a Python >= 3.9" in done.stderr
    assert subprocess.run(['make', '-s', 'check-python'], cwd=REPO_ROOT).returncode == 0


def test_the_model_index_names_configs_that_exist():
    index = yaml.safe_load(open(osp.join(REPO_ROOT, 'metafile.yml')))
    configs = [model['Config'] for model in index['Models']]
    assert configs and all(osp.isfile(osp.join(REPO_ROOT, c)) for c in configs)
    collections = {c['Name'] for c in index['Collections']}
    assert {m['In Collection'] for m in index['Models']} == collections


@pytest.mark.parametrize('module', ['mmdet_vanillanet.models.vanillanet',
                                    'mmdet_vanillanet.engine.deep_training_hook'])
def test_the_docstring_examples_run(module):
    """The examples that compute something (the hooks' others are config snippets, which
    test_every_config_declares_the_runtime_it_needs and the pipeline tests build)."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def _runtime_warnings(output):
    return [line for line in output.splitlines() if 'the config does not declare' in line]


def test_a_config_without_a_runtime_hook_is_warned_of_naming_its_cost(monkeypatch):
    logged = []
    monkeypatch.setattr(cli, 'print_log', lambda message, **kw: logged.append(message))
    cfg = Config.fromfile(CONFIG)
    cli.warn_missing_runtime_hooks(cfg, training=True, runtime=VANILLANET_RUNTIME)
    assert logged == []
    cfg.default_hooks.weights_only = None  # as --cfg-options default_hooks.weights_only=None
    # a test run loses nothing by it
    cli.warn_missing_runtime_hooks(cfg, training=False, runtime=VANILLANET_RUNTIME)
    cli.warn_missing_runtime_hooks(cfg, training=True, runtime=VANILLANET_RUNTIME)
    assert logged == [
        'the config does not declare WeightsOnlyCheckpointHook, which '
        'configs/_base_/vanillanet_runtime.py declares; running without them '
        '(WeightsOnlyCheckpointHook: its checkpoints hold MMEngine\'s HistoryBuffer, which '
        'MMDetection\'s own tools cannot load under torch >= 2.6 (ours read it safely)). Add '
        'that file to the config\'s _base_ files to have them']


@pytest.mark.slow
def test_our_tools_run_a_config_without_the_runtime_hooks_with_one_warning(data_root, tmp_path):
    """As MMDetection's own tools do (ours refused it): the config decides how it runs."""
    config = config_without_runtime_hooks(tmp_path)
    output = run('tools/train.py', config, '--work-dir', str(tmp_path / 'w'),
                 '--cfg-options', *toy_options(data_root, epochs=1))
    warned = _runtime_warnings(output)
    assert len(warned) == 1 and all(hook in warned[0] for hook in RUNSAFE.hooks)
    assert (tmp_path / 'w' / 'epoch_1.pth').exists()
    checkpoint = save_toy_checkpoint(tmp_path / 'toy.pth')
    output = run('tools/test.py', config, str(checkpoint), '--work-dir',
                 str(tmp_path / 't'), '--cfg-options', *toy_options(data_root))
    warned = _runtime_warnings(output)
    assert len(warned) == 1 and 'CheckpointFitHook: a checkpoint that does not fit' in warned[0]
    assert 'coco/bbox_mAP: ' in output


def test_resume_never_passes_over_a_file_it_refuses_to_load(tmp_path):
    """Passing over it would restart the run from an older file, or from nothing."""
    torch.save({'state_dict': {}, 'meta': RunsCode(tmp_path / 'pwned')}, tmp_path / 'epoch_2.pth')
    with pytest.raises(CheckpointError, match='could run code'):
        resume_checkpoint(run_config(tmp_path))
    assert not (tmp_path / 'pwned').exists()


def _functions(path):
    return [node for node in ast.walk(ast.parse(open(path).read()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize('tool', TOOLS, ids=osp.basename)
def test_the_tools_parse_arguments_and_call_the_package(tool):
    """As MMDetection's tools: every function short, the work in the package where tests reach
    it, and the parser (build_parser) importable, for the docs' flags to be checked against."""
    too_long = [f'{f.name}: {f.end_lineno - f.lineno + 1} lines' for f in _functions(tool)
                if f.end_lineno - f.lineno + 1 > MAX_TOOL_FUNCTION_LINES]
    assert not too_long, too_long
    module = runpy.run_path(tool, run_name=f'tools.{osp.basename(tool)[:-3]}')
    assert callable(module.get('main'))
    assert isinstance(module['build_parser'](), argparse.ArgumentParser)
