"""``python -m torchbearer`` is the ``torchbearer`` command."""

from torchbearer.cli import entry_point

entry_point()
