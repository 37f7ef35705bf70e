"""The dashboard's job view shows the pre-flight check's warnings kept with a job when it was queued."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import tb
from tests.daemon.conftest import job_named
from torchbearer.settings import Settings
from torchbearer.store import Store
from torchbearer.tui.poller import Poller


def test_job_view_reads_the_warnings(project: Settings, store: Store, tmp_path: Path) -> None:
    (project.project_dir / ".env").write_text("TORCHBEARER_DISK_RESERVE_GB=1000000\n")
    night = tmp_path / "scenes.yaml"
    night.write_text("name: scenes\nkind: download\nimagery: {aoi: [-8.2, 52.9, -8.0, 53.0], "
                     "dates: 2022-10-01/2022-10-10, resolution: 60, source: earth-search}\n")  # fmt: skip
    assert tb("submit", night).returncode == 0
    (project.project_dir / "plain.yaml").write_text("name: plain\nkind: probe\n")
    (project.project_dir / ".env").write_text("")
    assert tb("submit", project.project_dir / "plain.yaml").returncode == 0
    poller = Poller(Settings.load(project.project_dir))
    poller.focus_job = job_named(store, "scenes").id
    detail = poller.poll().detail
    assert len(detail.warnings) == 1 and "GiB will be written" in detail.warnings[0]
    poller.focus_job = job_named(store, "plain").id
    assert poller.poll().detail.warnings == ()
