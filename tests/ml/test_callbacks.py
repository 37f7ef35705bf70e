"""``ProgressReporter`` in a real (tiny) Lightning fit: a run restored from a checkpoint says where it goes on
from, so the store can drop what earlier attempts logged from there (``ctx.resumed``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from torchbearer.ml.callbacks import ProgressReporter


def _trainer(epochs: int, heard: list[tuple[int, int]]) -> L.Trainer:
    reporter = ProgressReporter(lambda *a, **k: None, lambda *a, **k: None,
                                resumed=lambda epoch, step: heard.append((epoch, step)))  # fmt: skip
    return L.Trainer(max_epochs=epochs, limit_train_batches=3, limit_val_batches=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[reporter], accelerator="cpu", devices=1)  # fmt: skip


def test_a_restored_run_says_the_epoch_and_step_it_goes_on_from(tmp_path: Path) -> None:
    heard: list[tuple[int, int]] = []
    first = _trainer(1, heard)
    first.fit(BoringModel())
    assert heard == [], "a fresh run resumes nothing"
    first.save_checkpoint(tmp_path / "last.ckpt")
    _trainer(2, heard).fit(BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert [step for _, step in heard] == [3], "the step after the first epoch's three"
