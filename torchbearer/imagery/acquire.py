"""One way for every job kind to get its scenes: ``scenes:`` paths or an ``imagery:`` block → stacked GeoTIFFs.

train (and so sweep trials), predict (and classifier predictions), download, prepare and explain call
:func:`job_scenes`; the foreground commands (``torchbearer download``, ``plot``, ``prepare``) call
:func:`acquire`. Both go through :func:`torchbearer.imagery.fetch.ensure_scenes`, so every kind gets the same
inputs (local paths, globs, SAFE folders and zips, GeoTIFFs, Copernicus or Earth Search searches), the same
per-scene locks, the same progress stages and the same answer to a stop request: a job stopped mid-download
is *interrupted* (its partial files stay for the next attempt), never failed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from torchbearer.imagery.http import Report, TransferCancelled
from torchbearer.imagery.spec import ImagerySpec

if TYPE_CHECKING:
    from torchbearer.context import JobContext

#: A ``scenes:`` entry: a path or glob (each scene it finds is one scene), or a list of them (one scene given
#: at several resolutions, e.g. its 20 m and 60 m GeoTIFFs).
SceneEntry = str | list[str]


def _never() -> bool:
    return False


def local_imagery(paths: Sequence[str | Path], resolution: int) -> ImagerySpec:
    """The ``imagery: {source: local}`` block of scenes given by path (SAFE folders or zips, GeoTIFFs, globs)."""
    return ImagerySpec(source="local", paths=[str(p) for p in paths], resolution=resolution)  # type: ignore[arg-type]


def acquire(
    imagery: ImagerySpec,
    data_dir: Path,
    resolutions: Sequence[int],
    *,
    report: Report | None = None,
    env: Callable[[str], str | None] = os.environ.get,
    should_stop: Callable[[], bool] = _never,
    streaming: bool = False,
) -> list[list[Path]]:
    """Each scene of ``imagery`` as its stacks, one per resolution in ``resolutions`` (metres).

    ``streaming``: a local SAFE folder not stacked yet comes as an ``imagery.cache.StackBuild`` (path-like) that
    the caller starts and reads while it is written, instead of a finished stack (see ``predict``).

    A GeoTIFF given as it is counts once whatever the resolutions (it is already a stack). Paths must be
    absolute (:meth:`ImagerySpec.with_paths`). Raises :class:`~torchbearer.imagery.http.TransferCancelled`
    when ``should_stop`` turns true (partial files stay for a resume).
    """
    from torchbearer.imagery.fetch import ensure_scenes

    per_resolution = [
        ensure_scenes(
            imagery.model_copy(update={"resolution": r}), data_dir, report,
            env=env, should_stop=should_stop, streaming=streaming,
        )
        for r in dict.fromkeys(resolutions)
    ]  # fmt: skip
    return [list(dict.fromkeys(stacks)) for stacks in zip(*per_resolution, strict=True)]


def acquire_entries(
    entries: Sequence[SceneEntry],
    data_dir: Path,
    resolutions: Sequence[int],
    *,
    report: Report | None = None,
    should_stop: Callable[[], bool] = _never,
    streaming: bool = False,
) -> list[list[Path]]:
    """Each scene of a ``scenes:`` list (absolute paths) as its stacks, one per resolution (``streaming``: as
    for :func:`acquire`)."""
    scenes: list[list[Path]] = []
    for entry in entries:
        paths = [entry] if isinstance(entry, str) else entry
        found = acquire(local_imagery(paths, resolutions[0]), data_dir, resolutions, report=report,
                        should_stop=should_stop, streaming=streaming)  # fmt: skip
        if isinstance(entry, str):
            scenes += found  # a folder or glob: every scene it holds
        else:
            scenes.append(list(dict.fromkeys(p for stacks in found for p in stacks)))
    return scenes


@contextmanager
def stops_interrupt(ctx: JobContext) -> Iterator[None]:
    """Turn a transfer or lock wait cancelled by the job's stop request into
    :class:`~torchbearer.context.JobInterrupted` (the attempt is recorded as interrupted, no retry spent)."""
    from torchbearer.context import JobInterrupted

    try:
        yield
    except TransferCancelled as exc:
        if ctx.should_stop:
            raise JobInterrupted(f"stopped while getting the scenes: {exc}") from None
        raise


def job_scenes(
    ctx: JobContext,
    resolutions: Sequence[int],
    *,
    imagery: ImagerySpec | None = None,
    scenes: Sequence[SceneEntry] = (),
    streaming: bool = False,
) -> list[list[Path]]:
    """The scenes of a running job as their stacks, one per resolution: an ``imagery:`` block, else ``scenes:``.

    Paths resolve against the project, credentials come from ``ctx.secret``, progress goes to ``ctx.progress``
    (stages ``downloading`` and ``preparing data``), and the job's SIGTERM (cancel, daemon stop, timeout)
    raises :class:`~torchbearer.context.JobInterrupted`. ``streaming``: as for :func:`acquire`.
    """
    data_dir = ctx.settings.data_dir
    should_stop = lambda: ctx.should_stop  # noqa: E731 - read at each poll, not now
    with stops_interrupt(ctx):
        if imagery is not None:
            return acquire(imagery.with_paths(ctx.resolve), data_dir, resolutions, report=ctx.progress,
                           env=ctx.secret, should_stop=should_stop, streaming=streaming)  # fmt: skip
        entries = [str(ctx.resolve(e)) if isinstance(e, str) else [str(ctx.resolve(p)) for p in e] for e in scenes]
        return acquire_entries(entries, data_dir, resolutions, report=ctx.progress, should_stop=should_stop,
                               streaming=streaming)  # fmt: skip


def one_scene(scenes: list[list[Path]], where: str) -> list[Path]:
    """The stacks of the only scene in ``scenes`` (a kind that reads one scene); a clear error otherwise."""
    if len(scenes) != 1:
        names = ", ".join(Path(stacks[0]).name for stacks in scenes) or "none"
        raise ValueError(f"{where}: one scene expected, found {len(scenes)} ({names})")
    return scenes[0]


def scene_output(output: Path, stacks: list[Path], count: int) -> Path:
    """Where one scene's result goes: ``output`` itself, or with the scene's name added when there are several
    (a cached stack is ``<product>_<res>m.tif``: the resolution is left out)."""
    if count == 1:
        return output
    scene = re.sub(r"_\d+m$", "", Path(stacks[0]).stem)
    return output.with_name(f"{output.stem}_{scene}{output.suffix}")
