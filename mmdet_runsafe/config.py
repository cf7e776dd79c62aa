"""A config as every tool, benchmark and deploy function reads it: the file checked first, then
``--cfg-options`` merged after the checks MMEngine's DictAction does not make."""
import re
from typing import Optional, Union

from mmengine.config import Config

from .errors import Argument, InputError
from .input_paths import check_input_file


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """A config file, or a Config object, with ``cfg_options`` (``--cfg-options``) merged
    (into the object itself): how every tool, benchmark and deploy function reads one."""
    if not isinstance(config, Config):
        check_input_file(config, 'config file')
        config = Config.fromfile(config)
    if cfg_options is not None:
        check_no_dict_strings(cfg_options)
        config.merge_from_dict(cfg_options)
    return config


def check_no_dict_strings(cfg_options: dict):
    """MMEngine's DictAction (--cfg-options) parses numbers, strings, lists and tuples, not
    ``dict(...)``: ``custom_hooks=[dict(type=...)]`` arrives as a list of strings, which failed
    with an AttributeError or deep inside the Runner. Refused here, naming the key."""
    def strings(value):
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for key, value in cfg_options.items():
        written = [s for s in strings(value) if re.match(r'\s*dict\(', s)]
        if written:
            raise InputError(f'{key} in ', Argument('cfg_options'), f': {written[0]!r} is a '
                             f'string, not a dict (MMEngine\'s DictAction reads numbers, strings, '
                             f'lists and tuples, not dict(...)); set the fields one by one '
                             f'({key}.0.type=...) where the config has the entry, or write a '
                             f'config with this one as _base_')
