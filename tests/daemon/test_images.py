"""The container images' entry command (``ENTRYPOINT`` + ``CMD`` of Dockerfile and Dockerfile-rocm), run in the
venv with the images' environment: it serves the project folder the images mount at ``/project``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, wait_for, wait_state, write_job
from tests.daemon.conftest import job_named
from torchbearer.settings import Settings
from torchbearer.store import Store


def image_recipe(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The entry command (ENTRYPOINT + CMD, exec form) and the ENV values of a Dockerfile."""
    command: dict[str, list[str]] = {}
    env: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        keyword, _, rest = line.strip().partition(" ")
        if keyword in {"ENTRYPOINT", "CMD"}:
            command[keyword] = json.loads(rest)
        elif keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return command.get("ENTRYPOINT", []) + command.get("CMD", []), env


def test_entry_command_serves_the_project(project: Settings, store: Store) -> None:
    command, image_env = image_recipe(REPO / "Dockerfile")
    assert image_recipe(REPO / "Dockerfile-rocm") == (command, image_env)  # one test covers both images
    assert command == ["torchbearer", "daemon"] and image_env["TORCHBEARER_PROJECT"] == "/project"
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))  # the venv's console script
    assert executable, f"{command[0]} is not installed in {Path(sys.executable).parent}"
    env = {**os.environ, **image_env, "TORCHBEARER_PROJECT": str(project.project_dir)}  # the volume, mounted here
    log = open(project.project_dir / "image.log", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen([executable, *command[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=project.project_dir, start_new_session=True)  # fmt: skip
    try:
        write_job(project.queue_dir, "one.yaml", "name: one\nkind: probe\nsteps: 1\n")
        wait_state(store, job_named(store, "one").id, "succeeded")
        assert store.daemon_info()["pid"] == process.pid
        process.send_signal(signal.SIGTERM)  # `docker stop`
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    wait_for(lambda: not store.daemon_info()["alive"], what="the daemon's record cleared")
