"""A job's ``log.txt``: each line once, no advertising, numbers printed as numbers.

The worker logs through the root logger to stderr (which the supervisor sends to ``log.txt``). Lightning adds
its own console handler to the ``lightning`` logger when imported, so its lines arrived twice (once through
its handler as ``INFO: …``, once through the root's); :func:`adopt_library_handlers` removes that handler
and lets the lines reach the root once. :class:`JobLogFilter` drops the tips that advertise other products
and prints one-element tensors (``best val/iou = tensor(0.9811)``) as plain numbers. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import re
import sys
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
