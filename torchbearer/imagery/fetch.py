"""``ensure_scenes``: the dispatcher from an imagery spec to the source that gets its scenes.

Each source owns its strategy (search, pick, fetch, stack): :mod:`torchbearer.imagery.copernicus`,
:mod:`torchbearer.imagery.earthsearch`, :mod:`torchbearer.imagery.local`; all fill the same data root
(:mod:`torchbearer.imagery.dataroot`). Jobs and commands call :mod:`torchbearer.imagery.acquire`, which calls
this once per resolution. A scene already in the cache costs no login and no download; a job that was
interrupted finds its verified files in place and its ``.part`` files resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchbearer.imagery.http import Report
from torchbearer.imagery.spec import ImagerySpec


def ensure_scenes(
    spec: ImagerySpec,
    data_dir: Path,
    report: Report | None = None,
    *,
    env: Callable[[str], str | None] = os.environ.get,
    should_stop: Callable[[], bool] = lambda: False,
    streaming: bool = False,
) -> list[Path]:
    """The stacked GeoTIFFs of the scenes ``spec`` asks for, fetched and built where missing.

    ``data_dir``: the data root (``settings.data_dir``). ``report``: called as ``ctx.progress`` is,
    ``report(stage="downloading", done=bytes, total=bytes, unit="B", files_done=, files_total=, scene=, force=)``
    (and stage ``"preparing data"`` while stacking). ``env``: variable lookup for credentials and endpoint
    overrides (``ctx.secret`` in a job). ``should_stop``: polled between chunks; partial files stay for a resume.
    AOI files and local paths must already be absolute (:meth:`ImagerySpec.with_paths`). ``streaming``: a local
    SAFE folder not stacked yet comes as an ``imagery.cache.StackBuild`` to start and read while it is written
    (downloaded products are stacked whole: their download dominates).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if spec.source == "local":
        from torchbearer.imagery.local import local_stacks

        return local_stacks(spec, data_dir, report, should_stop, streaming=streaming)
    if spec.source == "copernicus":
        from torchbearer.imagery import copernicus

        return copernicus.scene_stacks(spec, data_dir, report, env, should_stop)
    from torchbearer.imagery import earthsearch

    return earthsearch.scene_stacks(spec, data_dir, report, env, should_stop)
