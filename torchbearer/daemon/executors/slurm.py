"""Workers as Slurm batch jobs: ``sbatch`` to start, ``squeue``/``scontrol`` to watch, ``scancel`` to stop.

A shared filesystem is assumed for the project folder and this Python environment (the compute nodes see them
at the daemon's paths), not for the state database: the worker runs exactly as it would locally, under the same
contract (``runs.py``: it reads ``job.json`` and writes events and its outcome into its run folder, which the
daemon ingests). The batch script ``exec``\\ s the worker, so the batch step *is* the worker process: the
``--signal=B:TERM@…`` warning before the time limit and ``scancel --full --signal=TERM`` both reach its SIGTERM
handler, which stops at a safe point. A job trained in parallel (:func:`parallel`) runs as ``srun`` tasks
instead, every one of them warned (``--signal=TERM@…``); only rank 0 reports.

A controller out of reach is not a refusal: :class:`SlurmUnavailable` sends the job back to the queue, and
submissions wait (:meth:`SlurmExecutor.unavailable`), 2 s at first, doubling to :data:`SUBMIT_BACKOFF_MAX_S`.

Every job is submitted ``--no-requeue``: one Slurm job is one attempt, and the daemon decides what runs again.
All running jobs are queried with one ``squeue`` call at most every :data:`POLL_INTERVAL_S` seconds; a job that
ended is read once with ``scontrol show job`` (finished jobs stay there ``MinJobAge`` seconds, 300 by default)
or, when the controller forgot it, ``sacct`` (clusters without accounting have none).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from torchbearer.daemon.executors import SubmitLater
from torchbearer.settings import SECRET_NAMES, Settings, SettingsError
from torchbearer.worker import EXIT_INTERRUPTED

log = logging.getLogger("torchbearer.slurm")

#: Seconds between two ``squeue`` queries (one query covers every job this daemon watches).
POLL_INTERVAL_S = 2.0
#: Seconds a Slurm command may take before the call counts as failed.
COMMAND_TIMEOUT_S = 30.0
#: Job states after which the job's processes are gone and its exit code is final.
ENDED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})  # fmt: skip
#: Why Slurm itself ended a job, for the job's reason when the worker could not record one.
SLURM_ENDINGS = {
    "BOOT_FAIL": "Slurm could not boot the node for it (BOOT_FAIL)",
    "DEADLINE": "Slurm ended it at its deadline (DEADLINE)",
    "NODE_FAIL": "its Slurm node failed (NODE_FAIL)",
    "OUT_OF_MEMORY": "Slurm killed it for using more memory than it asked for (OUT_OF_MEMORY); ask for more "
    "with --mem in TORCHBEARER_SLURM_ARGS",
    "PREEMPTED": "Slurm preempted it (PREEMPTED)",
    "TIMEOUT": "Slurm ended it at its time limit (TIMEOUT); raise --time in TORCHBEARER_SLURM_ARGS",
}
#: Words of Slurm's messages (and ours) that mean the controller could not be reached or answer in time: a
#: restart or a network fault, not a refusal of the job. Anything else sbatch says is a refusal.
UNREACHABLE_MARKERS = (
    "Unable to contact slurm controller", "connect failure", "Connection refused", "Socket timed out",
    "Zero Bytes were transmitted", "Transport endpoint is not connected", "did not answer within",
    "temporarily unavailable", "standby mode",
)  # fmt: skip
#: Seconds before the first new submission once the controller could not be reached; doubles each time it still
#: cannot, up to :data:`SUBMIT_BACKOFF_MAX_S`.
SUBMIT_BACKOFF_S = 2.0
SUBMIT_BACKOFF_MAX_S = 120.0
#: Variables naming GPUs: on a cluster, Slurm sets them for the GPUs it allocates.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


class SlurmError(OSError):
    """A Slurm command could not be run or refused the request (the message is Slurm's own)."""


class SlurmUnavailable(SlurmError, SubmitLater):
    """``sbatch`` could not reach the controller: nothing was submitted; the job is submitted again later."""


def unreachable(error: SlurmError) -> bool:
    """Whether a failed Slurm command says the controller was out of reach, rather than refusing the request."""
    return any(marker.lower() in str(error).lower() for marker in UNREACHABLE_MARKERS)


def slurm_command(args: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """Run a Slurm client command; its stdout, or :class:`SlurmError` with its stderr."""
    try:
        result = subprocess.run(
            args, input=stdin, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise SlurmError(
            f"{args[0]} is not on PATH: install the Slurm client on this machine, or set TORCHBEARER_EXECUTOR=local"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer within {COMMAND_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise SlurmError(f"{args[0]} failed: {message}")
    return result.stdout


@dataclass(frozen=True)
class SlurmJobState:
    """What Slurm says about one job."""

    state: str  # PENDING, RUNNING, COMPLETED, FAILED, …
    exit_code: int  # as the supervisor wants it: negative for the signal that ended it

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


def parse_exit_code(field: str) -> int:
    """Slurm's ``ExitCode=a:b`` (b: the signal that ended the batch step) as one code, negative for a signal."""
    code, _, signum = field.partition(":")
    return -int(signum) if signum and int(signum) else int(code)


def parse_scontrol(text: str) -> dict[str, str]:
    """The ``Key=Value`` pairs of one ``scontrol -o show job`` line (values never hold spaces that we read)."""
    pairs = (item.partition("=") for item in text.split())
    return {key: value for key, sep, value in pairs if sep}


def query_active(job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job the controller still knows (``squeue``); unknown ids are left out."""
    try:
        out = slurm_command(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i|%T"])
    except SlurmError as exc:
        if "Invalid job id" in str(exc):  # every one of them is gone from the controller
            return {}
        raise
    states = {}
    for line in out.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state.split()[0] if state else ""
    return states


def query_ended(job_id: str) -> SlurmJobState | None:
    """State and exit code of a job (``scontrol show job``, then ``sacct``); None if Slurm has no record."""
    try:
        fields = parse_scontrol(slurm_command(["scontrol", "--oneliner", "show", "job", job_id]))
        return SlurmJobState(fields["JobState"], parse_exit_code(fields["ExitCode"]))
    except SlurmError as exc:
        if "Invalid job id" not in str(exc):
            raise
    try:
        out = slurm_command(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}",
                             "--format=JobID,State,ExitCode"])  # fmt: skip
    except SlurmError:  # no accounting on this cluster
        return None
    for line in out.splitlines():
        found, state, exit_code = [*line.split("|"), "", ""][:3]
        if found == job_id and state:
            return SlurmJobState(state.split()[0], parse_exit_code(exit_code or "0:0"))
    return None


def parallel(devices: int, nodes: int | None) -> int:
    """How many ``srun`` tasks a job runs as: ``devices`` × ``nodes`` for a kind that trains in parallel (its
    spec has ``num_nodes``) asking for more than one process; 0 for a job that runs as one process."""
    if nodes is None or devices * nodes <= 1:
        return 0
    return devices * nodes


class SlurmWorker:
    """A worker submitted by :class:`SlurmExecutor`: ``external_id`` is its Slurm job id."""

    def __init__(self, executor: SlurmExecutor, job_id: str, state: str = "PENDING") -> None:
        self.executor = executor
        self.pid: int | None = None
        self.external_id: str | None = job_id
        self.state = state
        self.exit_code: int | None = None
        #: Why Slurm ended it, when that says more than the exit code (time limit, memory, node failure).
        self.end_reason: str | None = None
        self.withdrawn = False  # cancelled before it could run

    @property
    def waiting(self) -> bool:
        """Whether it still waits in Slurm's queue (its run time has not started)."""
        return self.state == "PENDING"

    def poll(self) -> int | None:
        if self.exit_code is None:
            self.executor.refresh()
        return self.exit_code

    def settle(self, ended: SlurmJobState | None) -> None:
        """Record how the job ended (None: Slurm has no record of it any more)."""
        if ended is None:
            self.state, self.exit_code = "UNKNOWN", 1
            self.end_reason = f"Slurm has no record of job {self.external_id} any more"
            return
        self.state = ended.state
        self.exit_code = ended.exit_code
        if ended.state == "CANCELLED" and self.withdrawn:
            self.exit_code = EXIT_INTERRUPTED  # nothing lost: it runs again
        self.end_reason = SLURM_ENDINGS.get(ended.state)

    def terminate(self) -> None:
        """SIGTERM to the worker and its children; a job still waiting in the queue is simply withdrawn."""
        if not self.waiting:
            try:
                self._scancel("--full", "--signal=TERM")
                return
            except SlurmError as exc:  # still pending or starting ("can not be altered now")
                log.info("Slurm job %s: %s; withdrawing it", self.external_id, exc)
        self.withdrawn = True
        self._scancel()

    def kill(self) -> None:
        """SIGKILL to the worker and its children, and the job cancelled (unless it has ended meanwhile)."""
        self.executor.refresh(force=True)  # polls are spaced out: it may have stopped after SIGTERM already
        if self.exit_code is not None:
            return
        with contextlib.suppress(SlurmError):  # still pending or already ending: the plain cancel settles it
            self._scancel("--full", "--signal=KILL")
        self._scancel()

    def _scancel(self, *options: str) -> None:
        try:
            slurm_command(["scancel", *options, str(self.external_id)])
        except SlurmError as exc:
            if options:
                raise
            if "already completing or completed" not in str(exc):
                log.warning("could not cancel Slurm job %s: %s", self.external_id, exc)


class SlurmExecutor:
    """Submits workers to a Slurm cluster with ``sbatch``.

    Args:
        partition: ``--partition`` for every job (None: the cluster's default).
        extra_args: more ``sbatch`` options, e.g. ``--time=12:00:00``, ``--mem=32G``, ``--account=lab``.
        gres: the generic resource a job's device slots are asked as, e.g. ``gpu`` or ``gpu:a100``: a job
            with ``devices: 2`` gets ``--gres=gpu:2``. None: jobs ask for no GPUs.
        signal_lead_s: seconds before the time limit at which the worker gets SIGTERM to save and stop
            (Slurm may send it up to 60 s earlier).
        secrets_in_env_file: credential variables the worker reads from the env file itself: they are left
            out of the job's environment, which Slurm keeps with the job where cluster admins can read it.
    """

    name = "slurm"

    def __init__(
        self,
        *,
        partition: str | None = None,
        extra_args: tuple[str, ...] = (),
        gres: str | None = None,
        signal_lead_s: float = 60.0,
        secrets_in_env_file: frozenset[str] = frozenset(),
    ) -> None:
        self.partition = partition
        self.extra_args = tuple(extra_args)
        self.gres = gres
        self.signal_lead_s = signal_lead_s
        self.secrets_in_env_file = secrets_in_env_file
        self._warned_secrets = False
        self.workers: dict[str, SlurmWorker] = {}
        self._last_query = -math.inf
        self._last_error = ""
        self._submit_backoff_s = 0.0  # seconds to wait after the next unreachable controller; 0: none seen
        self._submit_at = -math.inf  # monotonic seconds: no submission before
        self._held = ""  # why submissions wait, while they do

    @classmethod
    def from_settings(cls, settings: Settings) -> SlurmExecutor:
        """The executor ``TORCHBEARER_SLURM_*`` describe; the worker is warned ``kill_grace_s`` (at least
        60 s) before its time limit. Refuses (:class:`SettingsError`) where ``sbatch`` is not on PATH."""
        if shutil.which("sbatch") is None:
            raise SettingsError(
                "TORCHBEARER_EXECUTOR=slurm, but sbatch is not on PATH: run the daemon where the Slurm client "
                "is installed and configured, or use the local executor"
            )
        return cls(
            partition=settings.slurm_partition,
            extra_args=settings.slurm_args,
            gres=settings.slurm_gres,
            signal_lead_s=max(60.0, settings.kill_grace_s),
            secrets_in_env_file=SECRET_NAMES & settings.env_file_values.keys(),
        )

    def sbatch_options(
        self, *, job_name: str, log_path: Path, cwd: Path, devices: int, nodes: int | None = None
    ) -> list[str]:
        """The ``sbatch`` command line for one worker; for a parallel job (``nodes`` given, see
        :func:`parallel`), ``devices`` tasks on each of ``nodes`` nodes, all of them warned before the limit."""
        tasks = parallel(devices, nodes)
        warned = "TERM" if tasks else "B:TERM"  # B: the batch step, which is the worker when it runs alone
        options = [
            "sbatch", "--parsable", "--no-requeue", "--export=ALL", f"--job-name={job_name}", f"--chdir={cwd}",
            f"--output={str(log_path).replace('%', '%%')}", "--open-mode=append",
            f"--signal={warned}@{math.ceil(self.signal_lead_s)}",
        ]  # fmt: skip
        if tasks:
            options += [f"--nodes={nodes}", f"--ntasks-per-node={devices}"]
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.gres and devices:
            options.append(f"--gres={self.gres}:{devices}")
        return options + list(self.extra_args)

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cwd: Path,
        devices: int = 1,
        nodes: int | None = None,
    ) -> SlurmWorker:
        """Submit ``argv`` as a batch job named ``tb-<run folder>`` (``tb-<id>-<name>``); output appends to
        ``log_path``. A parallel job (:func:`parallel`) runs ``argv`` as ``srun`` tasks, one per device slot on
        each node, with ``TORCHBEARER_TASKS`` set to their number (Lightning's ``SLURMEnvironment`` makes them
        one DDP run; the worker of rank 0 alone reports)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in env.items() if k not in GPU_VARIABLES and k not in self.secrets_in_env_file}
        exposed = sorted(SECRET_NAMES & env.keys())
        if exposed and not self._warned_secrets:  # names only, never values
            log.warning("%s reach Slurm jobs through their environment, which Slurm stores with each job; "
                        "put them in the project's env file instead", ", ".join(exposed))  # fmt: skip
            self._warned_secrets = True
        tasks = parallel(devices, nodes)
        launch = shlex.join(argv)
        if tasks:
            env["TORCHBEARER_TASKS"] = str(tasks)
            # srun (Slurm 22.05+) no longer takes --cpus-per-task from sbatch's; a task that fails ends the others
            launch = f"srun --kill-on-bad-exit=1 {launch}"
        script = (
            "#!/bin/sh\n"
            "echo \"[torchbearer] Slurm job $SLURM_JOB_ID on $(hostname), $(date '+%F %T')\"\n"
            + ('export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"\n' if tasks else "")
            + f"exec {launch}\n"
        )
        command = self.sbatch_options(job_name=f"tb-{log_path.parent.name}", log_path=log_path, cwd=cwd,
                                      devices=devices, nodes=nodes)  # fmt: skip
        try:
            answer = slurm_command(command, env=env, stdin=script)
        except SlurmError as exc:
            if unreachable(exc):
                raise self._hold(exc) from None
            raise
        self._submit_backoff_s, self._held = 0.0, ""
        job_id = answer.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {job_id!r}, not a job id")
        return self._watch(SlurmWorker(self, job_id))

    def _hold(self, error: SlurmError) -> SlurmUnavailable:
        """Hold submissions back after an unreachable controller: 2 s, then twice as long each time, up to
        :data:`SUBMIT_BACKOFF_MAX_S`. (A submission whose answer timed out may have reached the controller
        after all: see "sbatch failures" in docs/slurm.md.)"""
        delay = self._submit_backoff_s or SUBMIT_BACKOFF_S
        self._submit_backoff_s = min(2 * delay, SUBMIT_BACKOFF_MAX_S)
        self._submit_at = time.monotonic() + delay
        self._held = f"Slurm cannot take jobs now ({error}); trying again in {delay:.0f} s"
        log.warning("%s", self._held)
        return SlurmUnavailable(self._held)

    def unavailable(self) -> str | None:
        """Why no job can be submitted now (the controller was out of reach at the last try), or None once it
        is time to try again."""
        return self._held if time.monotonic() < self._submit_at else None

    def attach(self, job_id: str) -> SlurmWorker | None:
        """A handle on a job submitted earlier (by a daemon that died), or None if Slurm has no record of it."""
        try:
            state = query_active([job_id]).get(job_id)
            if state is None or state in ENDED_STATES:
                ended = query_ended(job_id)
                if ended is None:
                    return None
                worker = SlurmWorker(self, job_id, ended.state)
                worker.settle(ended)
                return worker
        except SlurmError as exc:  # the controller is unreachable: keep watching until it answers
            log.warning("Slurm job %s: %s", job_id, exc)
            state = "UNKNOWN"
        return self._watch(SlurmWorker(self, job_id, state))

    def _watch(self, worker: SlurmWorker) -> SlurmWorker:
        self.workers[str(worker.external_id)] = worker
        return worker

    def refresh(self, *, force: bool = False) -> None:
        """Query every watched job that has not ended (one ``squeue``), at most every :data:`POLL_INTERVAL_S`
        unless ``force``."""
        now = time.monotonic()
        if now - self._last_query < POLL_INTERVAL_S and not force:
            return
        self._last_query = now
        for job_id in [job_id for job_id, worker in self.workers.items() if worker.exit_code is not None]:
            del self.workers[job_id]  # the supervisor has its exit code
        if not self.workers:
            return
        try:
            states = query_active(list(self.workers))
            for job_id, worker in list(self.workers.items()):  # a signal handler's kill() may refresh too
                state = states.get(job_id)
                if state is None or state in ENDED_STATES:
                    worker.settle(query_ended(job_id))
                else:
                    worker.state = state
        except SlurmError as exc:  # a busy or restarting controller: try again next time, say so once
            if str(exc) != self._last_error:
                log.warning("cannot query Slurm (will retry): %s", exc)
            self._last_error = str(exc)
            return
        self._last_error = ""
