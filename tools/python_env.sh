# Sourced by the launch scripts: ROOT (the repository) and PYTHON (the repository's .venv
# python when there is one, so that no venv need be activated; else the python on PATH;
# PYTHON=/path/to/python overrides), and the repository on PYTHONPATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
