"""A job's log: Lightning's lines once, no advertising tips, tensors printed as numbers (in a fresh process,
set up as the worker sets up its logging)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # imports Lightning in a fresh process; test_train_job checks a real log too

SCRIPT = """
import logging, sys
from torchbearer.joblog import adopt_library_handlers, setup_job_logging
setup_job_logging(sys.stderr)
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
adopt_library_handlers()
rank_zero_info("GPU available: False, used: False")
rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x)")
logging.getLogger("torchbearer.jobs.train").info("best %s = %s at %s", "val/iou", torch.tensor(0.9811), "best.ckpt")
"""


def test_lightning_lines_once_no_tips_numbers_as_numbers():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len([line for line in lines if "GPU available" in line]) == 1, result.stderr
    assert not any("Tip:" in line or "litlogger" in line for line in lines), result.stderr
    assert any("best val/iou = 0.981" in line for line in lines), result.stderr
    assert "tensor(" not in result.stderr
