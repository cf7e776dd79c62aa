"""Where a checkpoint comes from: a local path, a URL (downloaded once into torch's hub cache),
one of MMEngine's model-zoo names (``open-mmlab://``, ``openmmlab://``, ``torchvision://``,
``modelzoo://``, ``mmcls://``, resolved with MMEngine's own tables to their URL or file), or
another MMEngine storage backend (``s3://`` ...). Each problem is one line: an unknown name,
a failed download, a missing file."""
import io
import os
import os.path as osp
import urllib.error

import torch
from mmengine.fileio import get as fetch_bytes
from mmengine.runner import checkpoint as mmengine_checkpoint

from .errors import InputError
from .input_paths import check_input_file

HTTP = ('http://', 'https://')
# MMEngine's model-zoo schemes whose checkpoints load as they are (mmcls:// ones are rewritten
# by MMEngine after loading, so that scheme stays MMEngine's).
ZOO_PREFIXES = ('open-mmlab://', 'openmmlab://', 'torchvision://', 'modelzoo://')


def _zoo_tables():
    """(prefix, name -> url or MMEngine-home-relative path) for each model-zoo scheme."""
    c = mmengine_checkpoint
    openmmlab = c.get_external_models
    return [('open-mmlab://', openmmlab), ('openmmlab://', openmmlab),
            ('torchvision://', c.get_torchvision_models),
            ('modelzoo://', c.get_torchvision_models), ('mmcls://', c.get_mmcls_models)]


def resolve_model_zoo(filename: str) -> str:
    """The URL or local file an MMEngine model-zoo name stands for; other names unchanged."""
    for prefix, table in _zoo_tables():
        if filename.startswith(prefix):
            name = filename[len(prefix):]
            if prefix in ('open-mmlab://', 'openmmlab://'):
                name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
            try:
                urls = table()
            except ImportError as err:  # torchvision's names come from torchvision itself
                raise InputError(f'{filename}: {prefix} names need {err.name} installed '
                                 f'(pip install {err.name})') from None
            if name not in urls:
                raise InputError(
                    f'{filename}: MMEngine knows no model {name!r} under {prefix} (its '
                    f'{len(urls)} names are listed in mmengine/hub/*.json); give a path or URL')
            url = urls[name]
            return url if url.startswith(HTTP) else osp.join(
                mmengine_checkpoint._get_mmengine_home(), url)
    return filename


def _download(url: str) -> str:
    model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(url.split('?')[0]))
    if not osp.exists(cached):
        try:
            torch.hub.download_url_to_file(url, cached, progress=True)
        except (urllib.error.URLError, OSError) as err:
            raise InputError(f'could not download {url} ({getattr(err, "reason", err)}); '
                             f'download it yourself and give its local path') from None
    return cached


def open_checkpoint(filename: str):
    """A local path as is; URLs through torch's hub cache; model-zoo names through their URL;
    other schemes through MMEngine's storage backends."""
    source = resolve_model_zoo(filename)
    if source.startswith(HTTP):
        return _download(source)
    if '://' in source:
        try:
            return io.BytesIO(fetch_bytes(source))
        except KeyError:  # MMEngine has no backend for this prefix
            raise InputError(f'{filename}: no MMEngine storage backend reads '
                             f'{source.split("://")[0]}:// paths; give a local path, a URL '
                             f'or a model-zoo name') from None
    check_input_file(source, 'checkpoint file')
    return source
