"""Data preparation: the steps of the ``prepare`` kind and of ``torchbearer prepare <step>``.

One module per step (:mod:`.rasterize`, :mod:`.chip`, :mod:`.split`, :mod:`.mosaic`, :mod:`.flatten`,
:mod:`.summarize`), the rasters they share (:mod:`.rasters`: grids, scenes, the value domain), the step models
read from job files and options (:mod:`.spec`, no heavy imports) and the chain that runs them
(:mod:`.pipeline`). Like ``imagery/`` and ``ml/`` this is a library: steps take paths and a ``report``
callable (the arguments of ``ctx.progress``), never a store.
"""

from __future__ import annotations


class PrepareError(ValueError):
    """A preparation step cannot run on its inputs (names the file or option and what is wrong)."""


class Stopped(Exception):
    """A step stopped at a safe point on request (``should_stop``); running it again starts it over."""
