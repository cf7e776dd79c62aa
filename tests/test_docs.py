"""The documentation stays true: every command it quotes runs a tool that exists with flags the
tool accepts, every repository path and Python name it gives exists, every local link resolves,
and README.md stays a page.

Read: README.md, CHANGELOG.md, CONTRIBUTING.md and docs/*.md (the rules in CONTRIBUTING.md,
Documentation). Commands come from shell blocks (bash, sh, shell, or unmarked blocks
whose lines start with `python `, `bash `, `make `) and from inline code that starts with a
tool (`python tools/test.py CONFIG CKPT --deploy`, `tools/train.py --resume`, `make demo`).
Each tool is imported once, under a name other than '__main__', and its flags read from its
build_parser().
"""
import ast
import glob
import importlib
import importlib.util
import itertools
import os.path as osp
import re
import shlex
import sys
import textwrap
from functools import lru_cache

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
README_MAX_LINES = 150
PACKAGE = 'mmdet_vanillanet'
# Files that name paths and modules as they were (their commands and links are still checked).
HISTORY = {'CHANGELOG.md'}
# A token starting with one of these is a path in this repository.
PATH_PREFIXES = ('configs/', 'tools/', 'benchmarks/', 'docs/', f'{PACKAGE}/', 'requirements/',
                 'tests/', '.ci/')
# Inline code that is exactly one of these names a file at the repository root.
ROOT_FILES = {'README.md', 'CHANGELOG.md', 'CONTRIBUTING.md', 'LICENSE', 'CITATION.cff',
              'metafile.yml', 'Makefile', 'setup.cfg', 'pyproject.toml',
              '.pre-commit-config.yaml'}
SHELL_LANGS = {'bash', 'sh', 'shell'}
PYTHON_LANGS = {'python', 'py'}
COMMAND_START = re.compile(r'(python3?|bash|make) ')
TOOL_START = re.compile(r'(tools|benchmarks)/[\w/]+\.(py|sh)(\s|$)')
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)')
# A path: word characters, . - / * < >, and {a,b} groups (expanded), not glued to a word,
# a / (another repository's tree: $MMDEPLOY/tools/..., a URL) or a $.
PATH_TOKEN = re.compile(r'(?<![\w./$~-])(?:\./)?((?:%s)(?:[\w.\-/*<>]|\{[^}\s]*\})*)'
                        % '|'.join(re.escape(p) for p in PATH_PREFIXES))
INLINE_CODE = re.compile(r'(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)', re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE_LINK = re.compile(r'^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)', re.M)
# An upper-case word (CONFIG, CKPT, PATH/TO, WORK_DIR, X), <...>, ... or * marks a placeholder;
# the upper-case names of real files do not.
PLACEHOLDER = re.compile(r'(?<![A-Za-z0-9])[A-Z][A-Z0-9_]*(?![A-Za-z0-9])|<[^>]*>|\.\.\.|\*')
NOT_PLACEHOLDERS = {'README', 'CHANGELOG', 'CONTRIBUTING', 'LICENSE', 'CITATION'}
INTERPRETER = re.compile(r'(?:\S*/)?python(?:3(?:\.\d+)?)?')
OPERATORS = {'&&', '||', ';', '|', '&', ';;'}


def is_placeholder(token):
    return any(m.group(0) not in NOT_PLACEHOLDERS for m in PLACEHOLDER.finditer(token))


def expand_braces(path):
    """configs/a{5,9}_b.py -> [configs/a5_b.py, configs/a9_b.py] (nested groups too)."""
    match = re.search(r'\{([^{}]*)\}', path)
    if not match:
        return [path]
    head, tail = path[:match.start()], path[match.end():]
    return [p for option in match.group(1).split(',') for p in expand_braces(head + option + tail)]


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


class Markdown:
    """A Markdown file split into fenced blocks and the text outside them, with line numbers."""

    def __init__(self, rel, text):
        self.rel = rel
        self.lines = text.splitlines()
        self.blocks = []  # (language, first line number, lines)
        self.prose = []  # (line number, line) outside fenced blocks
        fence = None
        for number, line in enumerate(self.lines, 1):
            match = FENCE.match(line)
            if fence is None and match:
                fence = (match.group(1), match.group(2).lower(), number + 1, [])
            elif fence is not None and line.strip().startswith(fence[0]) \
                    and not line.strip().strip(fence[0][0]):
                self.blocks.append(fence[1:])
                fence = None
            elif fence is not None:
                fence[3].append(line)
            else:
                self.prose.append((number, line))
        if fence is not None:
            self.blocks.append(fence[1:])

    def paragraphs(self):
        """Runs of consecutive non-blank prose lines: (first line number, text)."""
        run = []
        for number, line in self.prose + [(None, '')]:
            if line.strip() and (not run or number == run[-1][0] + 1):
                run.append((number, line))
                continue
            if run:
                yield run[0][0], '\n'.join(text for _, text in run)
            run = [(number, line)] if line.strip() else []

    def inline_code(self):
        """(line number, content) of every inline code span; a span may cross lines."""
        for first, text in self.paragraphs():
            for match in INLINE_CODE.finditer(text):
                content = match.group(2).replace('\n', ' ')
                if content.startswith(' ') and content.endswith(' ') and content.strip():
                    content = content[1:-1]
                yield first + text.count('\n', 0, match.start()), content

    def prose_without_code(self):
        """(line number, text) of prose with the inline code blanked out (for links)."""
        for first, text in self.paragraphs():
            blanked = INLINE_CODE.sub(lambda m: re.sub(r'[^\n]', ' ', m.group(0)), text)
            for offset, line in enumerate(blanked.split('\n')):
                yield first + offset, line

    def prose_without_code_and_links(self):
        """Prose with inline code and link targets blanked out (for paths: a link's target is
        relative to its file, and checked as a link)."""
        for number, line in self.prose_without_code():
            yield number, LINK.sub(lambda m: ' ' * len(m.group(0)), line)

    def anchors(self):
        seen, anchors = {}, set()
        for _, line in self.prose:
            match = re.match(r'^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$', line)
            if match:
                anchor = github_anchor(match.group(1))
                count = seen.get(anchor, 0)
                seen[anchor] = count + 1
                anchors.add(anchor if count == 0 else f'{anchor}-{count}')
        return anchors

    def commands(self):
        """(line number, command line) from shell blocks and tool-led inline code."""
        for lang, first, lines in self.blocks:
            shell = lang in SHELL_LANGS or (
                not lang and any(COMMAND_START.match(line) for line in lines))
            if not shell:
                continue
            joined, start = '', None
            for number, line in enumerate(lines, first):
                start = number if start is None else start
                if line.rstrip().endswith('\\'):
                    joined += line.rstrip()[:-1] + ' '
                    continue
                yield start, joined + line
                joined, start = '', None
            if start is not None:
                yield start, joined
        for number, content in self.inline_code():
            if COMMAND_START.match(content) or TOOL_START.match(content):
                yield number, content


def split_commands(line):
    """The commands of a shell line: split at && || ; | &, comments removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars='|&;')
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands = [[]]
    for token in tokens:
        if token in OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def option_tokens(args):
    """--flag, -x and --flag=value tokens among a command's arguments ([--flag] too)."""
    for token in args:
        token = token.strip('[]')
        if token.startswith('-') and token not in ('-', '--') and not re.match(r'-\d', token):
            yield token.split('=', 1)[0]


class DocChecker:
    """Checks Markdown files against the repository at ``root``; each problem is a line
    'FILE:LINE: what is wrong'."""

    def __init__(self, root, package=PACKAGE):
        self.root = root
        self.package = package

    # --- what the repository has -------------------------------------------------------------

    def exists(self, rel):
        return osp.exists(osp.join(self.root, rel))

    @lru_cache(maxsize=None)
    def make_targets(self):
        targets = set()
        path = osp.join(self.root, 'Makefile')
        if osp.isfile(path):
            with open(path) as f:
                for line in f:
                    match = re.match(r'^([^\s#=:][^=:]*?)\s*::?(?!=)', line)
                    if match:
                        targets.update(match.group(1).split())
        return targets

    @lru_cache(maxsize=None)
    def options_of(self, script):
        """(option strings, None); (None, why they cannot be read); or (None, None) for a shell
        script that runs no single Python tool."""
        path = osp.join(self.root, script)
        with open(path) as f:
            source = f.read()
        if script.endswith('.sh'):
            runs = sorted(set(re.findall(r'\$\(dirname "\$0"\)/(\w+\.py)', source)))
            if len(runs) != 1:
                return None, None  # it runs no single tool of ours: its options are its own
            return self.options_of(osp.join(osp.dirname(script), runs[0]))
        if re.search(r'^def build_parser\(', source, re.M):
            try:
                parser = self.load(script).build_parser()
            except (Exception, SystemExit) as err:  # a tool may exit on import: name it
                return None, (f'{script} cannot be imported to read its flags '
                              f'({type(err).__name__}: {err}); its build_parser() must not '
                              f'need optional packages')
            return set(parser._option_string_actions), None
        if script.startswith('tools/'):
            return None, f'{script} has no build_parser(): its flags cannot be checked'
        # A benchmark script without build_parser(): the option strings of its add_argument calls.
        options = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'add_argument':
                options.update(a.value for a in node.args if isinstance(a, ast.Constant)
                               and isinstance(a.value, str) and a.value.startswith('-'))
        return options, None

    @lru_cache(maxsize=None)
    def load(self, script):
        name = '_docs_check_' + re.sub(r'\W', '_', osp.join(self.root, script))
        spec = importlib.util.spec_from_file_location(name, osp.join(self.root, script))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    # --- the checks ------------------------------------------------------------------------------

    def check(self, doc):
        return (self.check_commands(doc) + self.check_paths(doc) + self.check_python(doc)
                + self.check_links(doc))

    def check_commands(self, doc):
        problems = []
        for number, line in doc.commands():
            where = f'{doc.rel}:{number}'
            try:
                commands = split_commands(line)
            except ValueError as err:
                problems.append(f'{where}: cannot read the command {line.strip()!r}: {err}')
                continue
            for tokens in commands:
                problems += [f'{where}: {p}' for p in self.check_command(tokens)]
        return problems

    def check_command(self, tokens):
        while tokens and re.match(r'^\w+=', tokens[0]):  # VAR=value before the command
            tokens = tokens[1:]
        if not tokens:
            return []
        program, args = tokens[0], tokens[1:]
        if program == 'make':
            targets = [t for t in args if not t.startswith('-') and '=' not in t]
            return [f'`make {t}`: no such target in the Makefile' for t in targets
                    if t not in self.make_targets() and not is_placeholder(t)]
        if INTERPRETER.fullmatch(program) or program in ('bash', 'sh'):
            while args and args[0].startswith('-'):
                if args[0] in ('-m', '-c'):  # a module or a string: not a script of ours
                    return []
                args = args[1:]
            if not args:
                return []
            program, args = args[0], args[1:]
        program = program[2:] if program.startswith('./') else program
        if not program.startswith(('tools/', 'benchmarks/')):
            return []
        if not self.exists(program):
            return [] if is_placeholder(program) else [f'{program}: no such file']
        given = list(option_tokens(args))
        if not given or not program.endswith(('.py', '.sh')):
            return []
        options, why = self.options_of(program)
        if why:
            return [why]
        if options is None:
            return []
        return [f'{program} does not accept {option}' for option in given
                if option not in options]

    def check_paths(self, doc):
        if doc.rel in HISTORY:
            return []
        found = []  # (line number, token)
        for number, line in doc.prose_without_code_and_links():
            found += [(number, m.group(1)) for m in PATH_TOKEN.finditer(line)]
        for number, content in doc.inline_code():
            found += [(number, m.group(1)) for m in PATH_TOKEN.finditer(content)]
            if content in ROOT_FILES:
                found.append((number, content))
        for _, first, lines in doc.blocks:
            for number, line in enumerate(lines, first):
                found += [(number, m.group(1)) for m in PATH_TOKEN.finditer(line)]
        problems = []
        for number, token in found:
            token = token.rstrip('.')
            if is_placeholder(token):
                continue
            missing = [p for p in expand_braces(token) if not self.exists(p)]
            if missing:
                problems.append(f'{doc.rel}:{number}: {token} names {", ".join(missing)}, '
                                f'which does not exist')
        return problems

    def check_python(self, doc):
        if doc.rel in HISTORY:
            return []
        problems = []
        for lang, first, lines in doc.blocks:
            if lang not in PYTHON_LANGS:
                continue
            try:
                tree = ast.parse(textwrap.dedent('\n'.join(lines)))
            except SyntaxError as err:
                problems.append(f'{doc.rel}:{first + (err.lineno or 1) - 1}: the Python block '
                                f'does not parse: {err.msg}')
                continue
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [f'{node.module}.{a.name}' for a in node.names if a.name != '*']
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    if name.split('.')[0] == self.package:
                        why = self.resolve(name)
                        if why:
                            problems.append(f'{doc.rel}:{first + node.lineno - 1}: {why}')
        for number, content in doc.inline_code():
            name = content[:-2] if content.endswith('()') else content
            if re.fullmatch(r'%s(?:\.\w+)+' % re.escape(self.package), name):
                why = self.resolve(name)
                if why:
                    problems.append(f'{doc.rel}:{number}: {why}')
        return problems

    @lru_cache(maxsize=None)
    def resolve(self, dotted):
        """None when ``dotted`` (a module, or a module and attributes) exists, else why not."""
        parts = dotted.split('.')
        for i in range(len(parts), 0, -1):
            module_name = '.'.join(parts[:i])
            try:
                obj = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name is not None and module_name.startswith(err.name) \
                        and err.name.startswith(self.package):
                    continue  # the name goes on with attributes, or does not exist
                return f'{dotted}: importing {module_name} failed: {err}'
            except Exception as err:  # any other failure: name it
                return f'{dotted}: importing {module_name} failed: {type(err).__name__}: {err}'
            for attribute in parts[i:]:
                if not hasattr(obj, attribute):
                    return f'{dotted}: {module_name} has no module or attribute {attribute}'
                obj = getattr(obj, attribute)
            return None
        return f'{dotted}: no such module'

    def check_links(self, doc):
        problems = []
        text_lines = list(doc.prose_without_code())
        targets = [(n, m.group(1)) for n, line in text_lines for m in LINK.finditer(line)]
        targets += [(n, m.group(1)) for n, line in text_lines
                    for m in REFERENCE_LINK.finditer(line)]
        for number, target in targets:
            if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target):  # https:, mailto:
                continue
            path, _, anchor = target.partition('#')
            rel = osp.normpath(osp.join(osp.dirname(doc.rel), path)) if path else doc.rel
            where = f'{doc.rel}:{number}: the link {target}'
            if not self.exists(rel):
                problems.append(f'{where} leads nowhere ({rel} does not exist)')
                continue
            if anchor and rel.endswith('.md'):
                with open(osp.join(self.root, rel)) as f:
                    anchors = Markdown(rel, f.read()).anchors()
                if anchor not in anchors:
                    problems.append(f'{where}: {rel} has no heading #{anchor}')
        return problems


def doc_files(root):
    names = ['README.md', 'CHANGELOG.md', 'CONTRIBUTING.md']
    docs = sorted(glob.glob(osp.join(root, 'docs', '*.md')))
    return [n for n in names if osp.isfile(osp.join(root, n))] + \
        [osp.relpath(p, root) for p in docs]


def read(root, rel):
    with open(osp.join(root, rel)) as f:
        return Markdown(rel, f.read())


@lru_cache(maxsize=None)
def problems_of(kind):
    checker = DocChecker(REPO_ROOT)
    check = getattr(checker, f'check_{kind}')
    return list(itertools.chain.from_iterable(
        check(read(REPO_ROOT, rel)) for rel in doc_files(REPO_ROOT)))


def report(problems):
    return f'{len(problems)} problem(s) in the docs:\n' + '\n'.join(problems)


def test_the_docs_are_there():
    files = doc_files(REPO_ROOT)
    for name in ('README.md', 'CHANGELOG.md', 'CONTRIBUTING.md'):
        assert name in files, f'{name} is missing'
    assert any(f.startswith('docs' + osp.sep) for f in files), 'docs/ has no guide'


def test_readme_is_a_page():
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, \
        f'README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/'


@pytest.mark.parametrize('kind', [
    'commands',  # tools exist and accept the flags written after them; make targets exist
    'paths',  # repository paths named exist
    'python',  # mmdet_vanillanet names import
    'links',  # local links and their anchors resolve
])
def test_the_docs_hold(kind):
    problems = problems_of(kind)
    assert not problems, report(problems)


def test_the_checker_reports_what_is_wrong(tmp_path, monkeypatch):
    """The same checker, on a small repository whose docs hold one mistake of each kind (and
    the placeholders and other repositories' paths it must leave alone)."""
    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))

    write('Makefile', 'demo: install\n\tpython tools/good.py\ninstall:\n\ttrue\n')
    write('tools/good.py', '''\
        import argparse


        def build_parser():
            parser = argparse.ArgumentParser()
            parser.add_argument('config')
            parser.add_argument('--real', action='store_true')
            parser.add_argument('--shape', type=int, nargs=2)
            return parser


        def main():
            build_parser().parse_args()
        ''')
    write('tools/old.py', 'import argparse\n')
    write('tools/launch.sh', 'python "$(dirname "$0")/good.py" "$@"\n')
    write('tools/plain.sh', 'echo "$@"\n')
    write('benchmarks/bench.py', 'import argparse\np = argparse.ArgumentParser()\n'
                                 "p.add_argument('--iters')\n")
    write('configs/a5.py', '')
    write('configs/a9.py', '')
    write('fakepkg/__init__.py', 'present = 1\n')
    write('docs/guide.md', '''\
        # Guide

        ## Usage

        ```bash
        python tools/good.py CONFIG --real --shape 1 2 [--real]  # fine
        python tools/good.py CONFIG --bogus
        python tools/good.py configs/a5.py \\
            --real --also-bogus
        make install && make nosuchtarget
        python tools/missing.py
        bash tools/launch.sh --real --not-a-flag | tail
        PYTHONPATH=. python3 benchmarks/bench.py --iters 3 --nope
        python tools/old.py --whatever
        python tools/X.py ARGS
        python -m pytest -x
        python $OTHER/tools/deploy.py --anything
        bash tools/plain.sh --its-own-option
        ```

        Run `tools/good.py --real` or `python tools/good.py --wrong` or `make demo`.
        Configs: `configs/a{5,9}.py`, `configs/a{5,7}.py`, configs/gone.py, `configs/CONFIG.py`,
        `PATH/TO/configs/x.py`, `work_dirs/x/y.pth`, `$OTHER/configs/z.py`, `data/coco/`.

        ```python
        from fakepkg import present, absent
        ```

        See [usage](#usage), [nothing](#nothing), [other](other.md), [root](../Makefile),
        [web](https://example.com/x.md) and `fakepkg.present`, `fakepkg.gone`.
        ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    checker = DocChecker(str(tmp_path), package='fakepkg')
    problems = checker.check(read(str(tmp_path), 'docs/guide.md'))
    expected = [
        'docs/guide.md:7: tools/good.py does not accept --bogus',
        'docs/guide.md:8: tools/good.py does not accept --also-bogus',
        'docs/guide.md:10: `make nosuchtarget`: no such target in the Makefile',
        'docs/guide.md:11: tools/missing.py: no such file',
        'docs/guide.md:12: tools/launch.sh does not accept --not-a-flag',
        'docs/guide.md:13: benchmarks/bench.py does not accept --nope',
        'docs/guide.md:14: tools/old.py has no build_parser(): its flags cannot be checked',
        'docs/guide.md:21: tools/good.py does not accept --wrong',
        'docs/guide.md:11: tools/missing.py names tools/missing.py, which does not exist',
        'docs/guide.md:22: configs/a{5,7}.py names configs/a7.py, which does not exist',
        'docs/guide.md:22: configs/gone.py names configs/gone.py, which does not exist',
        'docs/guide.md:26: fakepkg.absent: fakepkg has no module or attribute absent',
        'docs/guide.md:30: fakepkg.gone: fakepkg has no module or attribute gone',
        'docs/guide.md:29: the link #nothing: docs/guide.md has no heading #nothing',
        'docs/guide.md:29: the link other.md leads nowhere (docs/other.md does not exist)',
    ]
    assert sorted(problems) == sorted(expected), report(problems)
    sys.modules.pop('fakepkg', None)


@pytest.mark.parametrize('line, commands', [
    ('make install && make test  # both', [['make', 'install'], ['make', 'test']]),
    ('a --x "b c"; d | e', [['a', '--x', 'b c'], ['d'], ['e']]),
    ('python tools/t.py CONFIG --part raw  # url#anchor', [['python', 'tools/t.py', 'CONFIG',
                                                             '--part', 'raw']]),
])
def test_command_lines_split_at_operators_and_comments(line, commands):
    assert split_commands(line) == commands


def test_placeholders_and_brace_patterns():
    assert is_placeholder('PATH/TO/configs/x.py') and is_placeholder('tools/X.py')
    assert is_placeholder('benchmarks/results/gpu_backbones_<card>.md')
    assert not is_placeholder('configs/mask_rcnn_vanillanet13_x1_5_coco.py')
    assert not is_placeholder('docs/README.md')
    assert expand_braces('c/a{5,13_x1_5}_b.{md,json}') == [
        'c/a5_b.md', 'c/a5_b.json', 'c/a13_x1_5_b.md', 'c/a13_x1_5_b.json']
    assert github_anchor('Testing the fused network: --deploy') == \
        'testing-the-fused-network---deploy'
    assert github_anchor('A fused checkpoint: tools/convert_checkpoint.py') == \
        'a-fused-checkpoint-toolsconvert_checkpointpy'
