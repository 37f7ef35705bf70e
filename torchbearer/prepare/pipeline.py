"""Run a chain of preparation steps: each step's product feeds the next (see :mod:`torchbearer.prepare.spec`).

Shared by the ``prepare`` kind (paths resolved by ``ctx.resolve``, products recorded as outputs) and by
``torchbearer prepare <step>`` (one step, paths as typed). Cheap checks of every step run first (files exist,
the label attribute exists), so a typo fails in a second, not after an hour of chipping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchbearer.prepare import PrepareError
from torchbearer.prepare.rasters import Report, no_report
from torchbearer.prepare.spec import Step

log = logging.getLogger("torchbearer.prepare")


@dataclass
class Chain:
    """What the steps so far produced, and the products to record (path, output kind)."""

    scene: Path | None = None
    mask: Path | None = None
    chips: Path | None = None
    outputs: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Runner:
    """Runs steps with one way of resolving paths, one data folder (for SAFE stacks) and one report."""

    resolve: Callable[[str], Path]
    data_dir: Path
    resolution: int = 20
    report: Report = no_report
    should_stop: Callable[[], bool] = bool

    def scene(self, given: str | Path) -> Path:
        """A raster path for a scene given as a SAFE folder or zip (stacked once), GeoTIFF or other raster."""
        from torchbearer.prepare.rasters import scene_raster

        path = self.resolve(str(given))
        if not path.exists():
            raise PrepareError(f"scene {path} does not exist")
        return scene_raster(path, self.resolution, self.data_dir, self.report, self.should_stop)

    def preflight(self, steps: list[Step]) -> None:
        """The checks that cost nothing: inputs named by the steps exist (or an earlier step writes them),
        label attributes exist."""
        from torchbearer.prepare.rasterize import check_attribute

        written: set[Path] = set()
        for i, step in enumerate(steps):
            o = step.options
            named = {"labels": getattr(o, "labels", None), "scene": getattr(o, "scene", None),
                     "mask": getattr(o, "mask", None), "source": getattr(o, "source", None)}  # fmt: skip
            named.update({f"inputs[{j}]": p for j, p in enumerate(getattr(o, "inputs", []))})
            for key, value in named.items():
                if value is not None and not (self.resolve(value).exists() or self.resolve(value) in written):
                    raise PrepareError(f"steps[{i}].{step.name}.{key}: {self.resolve(value)} does not exist")
            if step.name == "rasterize" and o.attribute is not None:  # type: ignore[attr-defined]
                check_attribute(self.resolve(o.labels), o.attribute)  # type: ignore[attr-defined]
            if getattr(o, "output", None) is not None:
                written.add(self.resolve(o.output))  # type: ignore[attr-defined]

    def run(self, steps: list[Step], chain: Chain) -> Chain:
        from torchbearer.prepare.rasters import bounded_memory

        self.preflight(steps)
        with bounded_memory():
            for i, step in enumerate(steps):
                log.info("step %d/%d: %s", i + 1, len(steps), step.name)
                getattr(self, f"_{step.name}")(step.options, chain)
                log.info("%s", chain.notes[-1])
        return chain

    # -- one method per step -------------------------------------------------------------------------------

    def _given_or(self, given: str | None, made: Path | None) -> Path | None:
        """The path a step names (resolved), else what an earlier step of the chain made (None: neither)."""
        return self.resolve(given) if given is not None else made

    def _grid_scene(self, given: str | None, chain: Chain, what: str) -> Path:
        if given is not None:
            return self.scene(given)
        if chain.scene is None:
            raise PrepareError(f"{what}: no scene: give one, or mosaic first")
        return chain.scene

    def _rasterize(self, o, chain: Chain) -> None:
        from torchbearer.imagery.grid import Grid
        from torchbearer.prepare.rasterize import rasterize_labels
        from torchbearer.prepare.rasters import open_raster

        if o.extent is not None:
            grid = Grid.from_extent(tuple(o.extent), o.resolution, o.crs)
        else:
            with open_raster(self._grid_scene(o.scene, chain, "rasterize")) as ds:
                grid = Grid.of(ds)
        output = self.resolve(o.output)
        counts = rasterize_labels(self.resolve(o.labels), grid, output, attribute=o.attribute, values=o.values,
                                  order=o.order, all_touched=o.all_touched, ignore_edge=o.ignore_edge,
                                  report=self.report)  # fmt: skip
        chain.mask = output
        chain.outputs.append((output, "mask"))
        chain.notes.append(f"rasterize: {output.name}: pixels per value {dict(sorted(counts.items()))}")

    def _chip(self, o, chain: Chain) -> None:
        from torchbearer.prepare.chip import chip_scene

        scene = self._grid_scene(o.scene, chain, "chip")
        mask = self._given_or(o.mask, chain.mask)
        output = self.resolve(o.output)
        manifest = chip_scene(scene, output, size=o.size, mask=mask, overlap=o.overlap,
                              positive_only=o.positive_only, nodata=o.nodata, report=self.report,
                              should_stop=self.should_stop)  # fmt: skip
        chain.chips = output
        chain.outputs.append((output, "chips"))
        chain.notes.append(f"chip: {manifest.splits['train']} chips of {o.size}² px ({manifest.value_domain}, "
                           f"no data {manifest.nodata:g}) in {output}")  # fmt: skip

    def _split(self, o, chain: Chain) -> None:
        from torchbearer.prepare.chip import ChipManifest
        from torchbearer.prepare.split import split_chips

        folder = self._given_or(o.chips, chain.chips)
        if folder is None:
            raise PrepareError("split: no chip folder: chip first or give chips")
        block = o.block or 4 * ChipManifest.read(folder).size
        fractions = {k: v for k, v in (("val", o.val), ("test", o.test)) if v > 0}
        result = split_chips(folder, fractions=fractions, block=block, seed=o.seed, report=self.report)
        chain.chips = folder
        chain.notes.append(f"split: {result.describe()}")

    def _mosaic(self, o, chain: Chain) -> None:
        from torchbearer.prepare.mosaic import mosaic

        inputs = [self.scene(p) for p in o.inputs]
        output = mosaic(inputs, self.resolve(o.output), format=o.format, reproject=o.reproject, report=self.report)
        chain.scene = output
        chain.outputs.append((output, "scene"))
        chain.notes.append(f"mosaic: {len(inputs)} rasters → {output}")

    def _flatten(self, o, chain: Chain) -> None:
        from torchbearer.prepare.flatten import flatten_scene

        scene = self._grid_scene(o.scene, chain, "flatten")
        mask = self._given_or(o.mask, chain.mask)
        output = self.resolve(o.output)
        rows = flatten_scene(scene, output, mask=mask, format=o.format, report=self.report,
                             should_stop=self.should_stop)  # fmt: skip
        chain.outputs.append((output, "table"))
        chain.notes.append(f"flatten: {rows:,} pixels → {output}")

    def _patches(self, o, chain: Chain) -> None:
        from torchbearer.prepare.patches import label_patches

        scene = self._grid_scene(o.scene, chain, "patches")
        output = self.resolve(o.output)
        counts = label_patches(scene, self.resolve(o.labels), output, classes=o.classes, size=o.size,
                               purity=o.purity, per_class=o.per_class, seed=o.seed, label_nodata=o.label_nodata,
                               report=self.report, should_stop=self.should_stop)  # fmt: skip
        chain.outputs.append((output, "patches"))
        chain.notes.append(f"patches: {sum(counts.values())} patches of {o.size}² px in {output}: {counts}")

    def _summarize(self, o, chain: Chain) -> None:
        from torchbearer.prepare.summarize import summarize

        if o.source is not None:
            given = self.resolve(o.source)
            source = given if given.is_dir() and not _is_safe(given) else self.scene(o.source)
        else:
            source = chain.chips or chain.scene
        if source is None:
            raise PrepareError("summarize: nothing to summarize: give source, a scene, or chip first")
        mask = self._given_or(o.mask, chain.mask if source == chain.scene else None)
        summary = summarize(source, self.resolve(o.output), mask=mask, report=self.report,
                            should_stop=self.should_stop)  # fmt: skip
        for path in summary.files:
            chain.outputs.append((path, "plot" if path.suffix == ".png" else "summary"))
        chain.notes.append(f"summarize: {source.name} ({summary.value_domain}) → {self.resolve(o.output)}")


def _is_safe(path: Path) -> bool:
    from torchbearer.imagery.local import is_safe

    return is_safe(path)
