"""A real one-node Slurm cluster on localhost for the Slurm executor's tests, and a daemon that uses it.

The cluster is started once per session by ``start-local-slurm.sh`` (next to this file) in
``$SLURM_LOCAL_DIR`` (default ``/tmp/tb-slurm``) and stopped at the end, unless it was already up (then it is
left running). A cluster named by ``$SLURM_CONF`` that answers is used as it is.

Its node hides a folder from its jobs (``$SLURM_HIDDEN_DIR``, default ``hidden/`` next to ``slurm.conf``): slurmd
runs in a mount namespace of its own with an empty tmpfs over it. The ``node_*`` fixtures put the project's state
database there, so the daemon (on the host) uses it while a worker on the node cannot see it, as on a cluster
whose compute nodes do not share the database. ``TB_TEST_SLURM_SHOW_DB=1`` leaves the database in the project
(the Slurm side alone, with workers that still open the store).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess
from tests.daemon.conftest import stop_daemon
from torchbearer.settings import Settings
from torchbearer.store import Store

HERE = Path(__file__).resolve().parent
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge"


def controller_alive(folder: Path) -> bool:
    """Whether the slurmctld that start-local-slurm.sh started in ``folder`` runs (cheaper than asking it)."""
    try:
        os.kill(int((folder / "state" / "slurmctld.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def cluster_answers(env: dict[str, str]) -> bool:
    """Whether a Slurm controller answers ``sinfo`` with this environment."""
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "idle" in result.stdout


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[str]:
    """The ``SLURM_CONF`` of a running one-node cluster (started here when none runs)."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip(f"slurm packages absent: {INSTALL_HINT}")
    given = os.environ.get("SLURM_CONF")
    if given and cluster_answers(dict(os.environ)):
        yield given
        return
    if os.geteuid() != 0:
        pytest.skip("starting the local Slurm cluster needs root (slurmctld, slurmd and munged run as root)")
    folder = Path(os.environ.get("SLURM_LOCAL_DIR") or "/tmp/tb-slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_CONF": str(folder / "slurm.conf")}
    already_up = controller_alive(folder)
    result = subprocess.run([HERE / "start-local-slurm.sh"], env=env, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"start-local-slurm.sh failed ({result.returncode}): {result.stderr.strip()}; logs in {folder}/log")
    yield env["SLURM_CONF"]
    if not already_up:
        subprocess.run([HERE / "stop-local-slurm.sh"], env=env, timeout=60, check=False)


@pytest.fixture
def slurm_project(project: Settings, slurm_conf: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test project with the Slurm executor, a 1 s kill grace and no crash-loop guard."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("TORCHBEARER_EXECUTOR", "slurm")
    monkeypatch.setenv("TORCHBEARER_KILL_GRACE_S", "1")
    monkeypatch.setenv("TORCHBEARER_CRASH_LOOP_COUNT", "1000")
    return Settings.load(project.project_dir)


@pytest.fixture
def slurm_daemon(slurm_project: Settings) -> Iterator[DaemonProcess]:
    """A started daemon on the project whose workers are Slurm jobs."""
    process = DaemonProcess(slurm_project).start()
    yield process
    stop_daemon(process)


@pytest.fixture(scope="session")
def hidden_dir(slurm_conf: str) -> Path:
    """The folder the node hides from its jobs (an empty tmpfs over it in slurmd's mount namespace)."""
    return Path(os.environ.get("SLURM_HIDDEN_DIR") or Path(slurm_conf).parent / "hidden")


def db_shown() -> bool:
    """Whether ``TB_TEST_SLURM_SHOW_DB=1`` asks to keep the database where the node sees it."""
    return os.environ.get("TB_TEST_SLURM_SHOW_DB") == "1"


def node_hides(folder: Path, hidden_dir: Path) -> bool | None:
    """Whether the slurmd that start-local-slurm.sh started in ``folder`` has the tmpfs over ``hidden_dir`` in
    its mount namespace; None when there is no such slurmd to look at (a cluster started elsewhere)."""
    try:
        pid = int((folder / "state" / "slurmd.pid").read_text())
        mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    except (OSError, ValueError):
        return None
    return any(f" {hidden_dir} " in line and " - tmpfs tb-hidden " in line for line in mounts.splitlines())


@pytest.fixture
def node_project(
    slurm_project: Settings, slurm_conf: str, hidden_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """``slurm_project`` whose state database lives in the folder the node hides: only the daemon reaches it."""
    if db_shown():
        yield slurm_project
        return
    if node_hides(Path(slurm_conf).parent, hidden_dir) is False:
        pytest.skip("the test cluster's slurmd hides nothing: this host allows no mount namespace (CAP_SYS_ADMIN)")
    folder = Path(tempfile.mkdtemp(prefix="state-", dir=hidden_dir))
    monkeypatch.setenv("TORCHBEARER_STATE", str(folder / "torchbearer.db"))
    settings = Settings.load(slurm_project.project_dir)
    settings.ensure_dirs()
    yield settings
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def node_store(node_project: Settings) -> Iterator[Store]:
    """The store of ``node_project`` (on the host, where the database is)."""
    store = Store(node_project.state_path)
    yield store
    store.close()


@pytest.fixture
def node_daemon(node_project: Settings) -> Iterator[DaemonProcess]:
    """A started daemon on ``node_project``: Slurm workers on the node that cannot see its database."""
    process = DaemonProcess(node_project).start()
    yield process
    stop_daemon(process)
