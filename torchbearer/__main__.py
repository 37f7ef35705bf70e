"""``python -m torchbearer`` is the ``torchbearer`` command."""

from torchbearer.cli import app

app()
