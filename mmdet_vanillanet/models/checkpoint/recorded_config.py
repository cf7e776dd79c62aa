"""The config a checkpoint records of the run that wrote it: MMEngine's Runner writes the whole
config into the checkpoint's meta (``meta['cfg']``; MMCV 1.x runners wrote ``meta['config']``) as
Python source, the text of ``Config.pretty_text``.

That text is read here as literals only (numbers, strings, lists, tuples, dicts and ``dict(...)``
calls), never executed: a checkpoint is data, and executing a config runs any code in it.
"""
import ast
from typing import Optional

META_KEYS = ('cfg', 'config')


def _literal(node: ast.AST):
    """The value of a literal expression, ``dict(key=value, ...)`` included; ValueError for
    anything else (a name, another call, an operation)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' \
            and not node.args and all(kw.arg for kw in node.keywords):
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    return ast.literal_eval(node)


def recorded_model_cfg(checkpoint) -> Optional[dict]:
    """``model`` of the config the checkpoint records, as a dict; None where it records no
    config, or one whose ``model`` is not made of literals."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    text = next((meta[k] for k in META_KEYS if isinstance(meta, dict)
                 and isinstance(meta.get(k), str)), None)
    if text is None:
        return None
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and [getattr(t, 'id', None)
                                                  for t in statement.targets] == ['model']:
            try:
                model = _literal(statement.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return None
            return model if isinstance(model, dict) else None
    return None
