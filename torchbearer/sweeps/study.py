"""A sweep's Optuna study, kept in a journal file in the sweep's run folder so a restarted sweep carries on.

Ask-and-tell: the sweep asks Optuna for a trial's parameters, queues the trial as a job, and tells Optuna the
job's metric (or a failure) when it ends. A trial asked but not yet told is ``RUNNING`` in the study; a
restarted sweep finds such trials there and their jobs in the store. Optuna is imported here only, when a
sweep runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchbearer.sweeps.space import Dimension, grid

if TYPE_CHECKING:
    import optuna

#: The study's file in the sweep's run folder (Optuna's JournalFileBackend: one JSON line per change).
STUDY_FILE = "study.journal"


def open_study(run_dir: Path, name: str, method: str, direction: str, dimensions: list[Dimension],
               seed: int) -> optuna.Study:  # fmt: skip
    """Create the sweep's study, or load it when an earlier attempt of the sweep made it."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run_dir / STUDY_FILE)))
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler(method, dimensions, seed),
                               direction=direction, load_if_exists=True)  # fmt: skip


def sampler(method: str, dimensions: list[Dimension], seed: int) -> Any:
    """Optuna's sampler for ``grid`` (every point once, in a seeded order), ``random`` or ``tpe``."""
    import optuna

    if method == "grid":

        class AskTellGridSampler(optuna.samplers.GridSampler):
            """Optuna's grid, without the ``study.stop()`` its ``after_trial`` calls once the grid is done:
            that works only inside ``study.optimize`` (it raises under ask-and-tell); the sweep counts its
            trials itself."""

            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None

        return AskTellGridSampler(grid(dimensions), seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials asked and not yet told (their jobs may be queued, running, or not queued yet)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
