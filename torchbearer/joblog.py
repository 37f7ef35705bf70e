"""A job's ``log.txt``: each line once, no advertising, numbers printed as numbers.

The worker logs through the root logger to stderr (which the supervisor sends to ``log.txt``). Lightning adds
its own console handler to the ``lightning`` logger when imported, so its lines arrived twice (once through
its handler as ``INFO: …``, once through the root's); :func:`adopt_library_handlers` removes that handler
and lets the lines reach the root once. :class:`JobLogFilter` drops the tips that advertise other products
and prints one-element tensors (``best val/iou = tensor(0.9811)``) as plain numbers. :class:`LogMarkHandler`
turns the job's warnings and errors into log markers for the daemon, which keeps them with the job (``show``,
the dashboard). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

#: Messages that advertise a product rather than tell about the run (Lightning's litlogger / litmodels tips).
ADVERTISING = re.compile(r"💡 Tip:|\blit(logger|models)\b")

#: Loggers of libraries that install a console handler of their own on import.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def plain_number(value: Any) -> Any:
    """A one-element tensor (or numpy scalar) as a Python number; anything else unchanged."""
    if type(value).__name__ in {"Tensor", "Parameter"} and hasattr(value, "numel") and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "size", 0) == 1:
        return value.item()
    return value


class JobLogFilter(logging.Filter):
    """Drops advertising tips; turns tensor arguments into numbers before the message is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(plain_number(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: plain_number(arg) for key, arg in record.args.items()}
        return not ADVERTISING.search(str(record.msg))


def setup_job_logging(stream: TextIO | None = None, level: int = logging.INFO) -> logging.Handler:
    """The worker's logging: one root handler on ``stream`` (stderr) with :class:`JobLogFilter`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(JobLogFilter())
    logging.basicConfig(level=level, handlers=[handler])
    return handler


def adopt_library_handlers() -> None:
    """Remove the console handlers libraries added to their own loggers, so their lines reach the root once.

    Call after the library is imported (Lightning adds its handler in ``lightning/__init__``). Does nothing
    while the root logger has no handler, so a library used outside a worker still prints.
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and handler not in root.handlers:
                logger.removeHandler(handler)
        logger.propagate = True


#: A log marker's message is the record's first line, cut to this many characters (the log holds the rest).
MARK_CHARS = 300
#: Markers per attempt: a job that warns in a loop marks its first ones and says how many more it logged.
MAX_MARKS = 100


class LogMarkHandler(logging.Handler):
    """Sends each warning or error a job logs to ``emit_event("log", level=…, logger=…, message=…)``: the
    worker contract's log markers, so the morning's ``show`` lists what went wrong without reading the log.

    At most :data:`MAX_MARKS` markers, then one saying how many more were logged (at :meth:`close`).
    """

    def __init__(self, emit_event: Callable[..., None], level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.addFilter(JobLogFilter())
        self._emit_event = emit_event
        self.marked = 0
        self.unmarked = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.marked >= MAX_MARKS:
            self.unmarked += 1
            return
        try:
            message = record.getMessage().strip().splitlines()
            text = (message[0] if message else "")[:MARK_CHARS]
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__})"
            self._emit_event("log", level=record.levelname.lower(), logger=record.name, message=text)
            self.marked += 1
        except Exception:  # noqa: BLE001 - a marker lost must not cost the job (the line is in log.txt)
            self.handleError(record)

    def close(self) -> None:
        if self.unmarked:
            more = f"{self.unmarked} more warnings or errors not marked: see log.txt"
            self._emit_event("log", level="warning", logger="torchbearer.worker", message=more)
            self.unmarked = 0
        super().close()
