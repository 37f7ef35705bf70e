"""Lightning callbacks that tie training to the outside world without knowing the queue.

:class:`ProgressReporter` hands progress and metrics to two callables (a job passes ``ctx.progress`` and
``ctx.metrics``); :class:`LastCheckpoint` saves ``last.ckpt`` at the end of every epoch, and at the end of a
training step once a callable says to stop (a job passes ``lambda: ctx.should_stop``), so the run resumes there;
:class:`AtomicCheckpointIO` makes every save atomic.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)

Report = Callable[..., Any]
Metrics = Callable[..., Any]


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().item() if value.numel() == 1 else None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class ProgressReporter(L.Callback):
    """Report stage, epoch, step, total steps, loss, learning rate, samples/s, data-wait share and ETA.

    Step reports go out at most every ``interval_s`` seconds and at each epoch's last step; validation metrics
    once per epoch. The data-wait
    share is the time between the end of one training step and the start of the next (the DataLoader's wait
    and hooks) over the whole step time, measured over the reporting interval. ``resumed`` (a job passes
    ``ctx.resumed``) hears the epoch and global step a run restored from a checkpoint goes on from.
    """

    def __init__(
        self,
        report: Report,
        metrics: Metrics,
        interval_s: float = 1.0,
        resumed: Callable[[int, int], Any] | None = None,
    ) -> None:
        from torchbearer.joblog import adopt_library_handlers

        adopt_library_handlers()  # Lightning's own console handler would write each of its lines a second time
        self.report = report
        self.metrics = metrics
        self.resumed = resumed
        self.interval_s = interval_s
        self._window_start = 0.0
        self._batch_start = 0.0
        self._last_end: float | None = None
        self._wait = 0.0
        self._busy = 0.0
        self._samples = 0
        self._step_times: list[float] = []

    # -- helpers -------------------------------------------------------------------------------------------

    @staticmethod
    def total_steps(trainer: L.Trainer) -> int | None:
        """Optimizer steps of the whole run if it goes to ``max_epochs`` (early stopping may end it sooner)."""
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or trainer.max_epochs is None or trainer.max_epochs < 0:
            return None
        return per_epoch * trainer.max_epochs

    @staticmethod
    def learning_rate(trainer: L.Trainer) -> float | None:
        return trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    def _eta(self, trainer: L.Trainer) -> float | None:
        total = self.total_steps(trainer)
        if total is None or not self._step_times:
            return None
        per_step = sum(self._step_times) / len(self._step_times)
        return max(0, total - trainer.global_step) * per_step

    # -- hooks ---------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_start = time.perf_counter()
        if self.resumed is not None and trainer.ckpt_path:  # restored: the loop goes on from here
            self.resumed(trainer.current_epoch, trainer.global_step)
        self.report("training", done=trainer.global_step, total=self.total_steps(trainer), unit="steps",
                    epoch=trainer.current_epoch, step=trainer.global_step, force=True)  # fmt: skip

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the first batch of an epoch waits for workers to start: not a data wait

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += now - self._last_end
        self._batch_start = now

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._busy += now - self._batch_start
        self._samples += len(batch["image"]) if isinstance(batch, dict) else 0
        if self._last_end is not None:
            self._step_times.append(now - self._last_end)
            self._step_times = self._step_times[-200:]
        self._last_end = now
        elapsed = now - self._window_start
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # every epoch gets a point on the curves
        if elapsed < self.interval_s and not last_of_epoch:
            return
        loss = _number(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        lr = self.learning_rate(trainer)
        values = {
            "train/loss_step": loss,  # Lightning's name for the per-step value; the epoch mean is train/loss_epoch
            "lr": lr,
            "samples_per_s": self._samples / elapsed,
            "data_wait_share": self._wait / (self._wait + self._busy) if self._wait + self._busy > 0 else None,
        }
        values = {k: v for k, v in values.items() if v is not None}
        self.metrics(values, step=trainer.global_step, epoch=trainer.current_epoch)
        fields = {("loss" if k == "train/loss_step" else k): v for k, v in values.items()}
        self.report("training", done=trainer.global_step, total=self.total_steps(trainer), unit="steps",
                    epoch=trainer.current_epoch, step=trainer.global_step, eta_s=self._eta(trainer),
                    max_epochs=trainer.max_epochs, epoch_step=batch_idx + 1,
                    epoch_steps=_number(trainer.num_training_batches), **fields)  # fmt: skip
        self._window_start, self._wait, self._busy, self._samples = now, 0.0, 0.0, 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch means of the training values, under Lightning's names (``train/loss_epoch``)."""
        values = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        values = {k: v for k, v in values.items() if v is not None and k.endswith("_epoch")}
        if values:
            self.metrics(values, step=trainer.global_step, epoch=trainer.current_epoch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.report("validating", epoch=trainer.current_epoch, step=trainer.global_step, force=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        values = {k: v for k, v in values.items() if v is not None}
        self.metrics(values, step=trainer.global_step, epoch=trainer.current_epoch)
        self.report("training", done=trainer.global_step, total=self.total_steps(trainer), unit="steps",
                    epoch=trainer.current_epoch, step=trainer.global_step, eta_s=self._eta(trainer),
                    max_epochs=trainer.max_epochs, force=True, **values)  # fmt: skip
        self._window_start, self._wait, self._busy, self._samples = time.perf_counter(), 0.0, 0.0, 0
        self._last_end = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: a kill during a save leaves the previous file whole.

    The checkpoint goes to a hidden temporary file beside the target (same file system, so the rename is
    atomic), is flushed to disk, then replaces the target with :func:`os.replace`. Lightning's own writer goes
    through a temporary file in ``/tmp`` and ``shutil.move``, which copies in place when ``/tmp`` is another
    file system.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` at the end of every epoch, whatever the monitored metric did; and a stop at a safe point.

    Every validation end (the end of an epoch's work) saves ``checkpoint``, so a ``kill -9`` loses at most the
    epoch in flight. Being a :class:`~lightning.pytorch.callbacks.Checkpoint`, it runs after the other callbacks
    and after the ``ModelCheckpoint`` listed before it, so the file holds this epoch's best score and early
    stopping state. An epoch that ends without validation is saved at its end.

    Once ``should_stop()`` is true, training stops with ``checkpoint`` holding the current state: in the middle
    of an epoch after the current training step (the run resumes within the epoch); during an epoch's last step
    or its validation at the epoch's end. Either way :class:`TrainingStopped` leaves ``trainer.fit``, and the
    log names the epoch and step the file really holds (:attr:`saved`).

    Lightning installs its own SIGTERM handler for the run, which aborts validation half-way; the handler that
    was in place when this callback was made (a job's, which only sets ``should_stop``) is put back.
    """

    def __init__(self, checkpoint: Path, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.should_stop = should_stop
        self.checkpoint = Path(checkpoint)
        self.handler = signal.getsignal(signal.SIGTERM)
        self.saved: tuple[int, int] | None = None  # (epoch, global step) of the last save of this run

    def save(self, trainer: L.Trainer) -> None:
        """Write ``checkpoint`` now (atomically with :class:`AtomicCheckpointIO`) and record what it holds."""
        trainer.save_checkpoint(self.checkpoint)
        self.saved = (trainer.current_epoch, trainer.global_step)
        log.debug("%s saved at epoch %d, step %d", self.checkpoint.name, *self.saved)

    def _saved_now(self, trainer: L.Trainer) -> bool:
        return self.saved is not None and self.saved[1] == trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if callable(self.handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.handler)

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        """Whether to stop now. In a parallel (DDP) run every process must take the same branch, since saving
        is collective: a stop seen by any of them is decided by all (one small all-reduce)."""
        stop = self.should_stop()
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx + 1 >= trainer.num_training_batches or not self._stop_requested(trainer):
            return
        self.save(trainer)
        self._stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self._saved_now(trainer):
            return
        self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._saved_now(trainer):  # no validation this epoch: its end is the safe point
            self.save(trainer)
        if self._stop_requested(trainer):
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        assert self.saved is not None
        where = "epoch {}, step {}".format(*self.saved)
        log.warning("stop requested: %s saved at %s", self.checkpoint.name, where)
        raise TrainingStopped(f"stopped at {where}")


class TrainingStopped(Exception):
    """Training stopped on request after saving its checkpoint."""


class ValidationSamples(L.Callback):
    """Log the first ``count`` patches of each validation epoch's first batch to TensorBoard: a subclass draws
    them in :meth:`log_samples`. Skips the sanity check, and does nothing without a TensorBoard logger."""

    def __init__(self, count: int) -> None:
        self.count = count

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        from lightning.pytorch.loggers import TensorBoardLogger

        if trainer.sanity_checking or batch_idx != 0:
            return
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is not None:
            self.log_samples(board, trainer, pl_module, batch)

    def log_samples(self, board: Any, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        """Draw the first ``count`` patches of ``batch`` into ``board`` (a ``TensorBoardLogger``)."""
        raise NotImplementedError


class SamplePredictions(ValidationSamples):
    """Log the first ``count`` validation patches as images to TensorBoard after each validation epoch.

    Each image is the patch's RGB composite, its mask and the prediction side by side (``val/sample_<i>``), so
    the Images tab shows the predictions change epoch by epoch. Does nothing without a TensorBoard logger.
    """

    def log_samples(self, board: Any, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        images = batch["image"][: self.count]
        with torch.no_grad():
            prediction = pl_module.predict_classes(pl_module(images)).cpu().numpy()
        card = pl_module.card
        for i, (image, mask, pred) in enumerate(zip(images.float().cpu().numpy(), batch["mask"].cpu().numpy(),
                                                    prediction, strict=False)):  # fmt: skip
            board.experiment.add_image(f"val/sample_{i}", sample_image(image, mask, pred, card.bands, card.classes),
                                       trainer.global_step, dataformats="HWC")  # fmt: skip


def sample_image(image: Any, mask: Any, prediction: Any, bands: list[str], classes: list[str]) -> Any:
    """RGB | mask | prediction of one patch as an H × 3W × 3 float image in [0, 1] (classes as greys, ignored
    mask pixels black)."""
    import numpy as np

    from torchbearer.ml.labels import IGNORE
    from torchbearer.ml.plots import rgb_image

    levels = max(len(classes) - 1, 1)

    def grey(labels: np.ndarray) -> np.ndarray:
        shade = np.where(labels == IGNORE, 0.0, 0.25 + 0.75 * labels.clip(0, levels) / levels)
        return np.repeat(shade[..., None], 3, axis=-1)

    return np.concatenate([rgb_image(image, list(bands)), grey(mask.astype(np.int64)), grey(prediction)], axis=1)
