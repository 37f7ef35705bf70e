"""``torchbearer explain FILE``: explain jobs in the foreground; a bad class fails the job, not the command."""

from __future__ import annotations

import shutil

from tests.cli.conftest import flat, tb_process
from tests.inference.conftest import card_for, save_checkpoint


def test_explain_runs_explain_files_and_reports_a_bad_class(project, small60) -> None:
    root = project.project_dir
    save_checkpoint(root / "a.ckpt", card_for(small60, "fcn"))
    shutil.copy(small60, root / "s60.tif")
    (root / "probe.yaml").write_text("name: p\nkind: probe\n")
    refused = tb_process("explain", root / "probe.yaml")
    assert refused.returncode == 2 and "not of kind explain" in flat(refused.stderr)

    (root / "why.yaml").write_text("name: why\nkind: explain\nmodel: {checkpoint: a.ckpt}\nscene: s60.tif\n"
                                   "target_class: snow\n")  # fmt: skip
    result = tb_process("explain", root / "why.yaml")
    assert result.returncode == 1, result.stderr
    assert "class 'snow' is not one of the model's classes: background, cloud" in flat(result.stdout + result.stderr)
