"""Runs exactly one job in its own process: ``python -m torchbearer.worker <job-id> <attempt> <run-folder>``.

The supervisor starts it in a new process group with stdout/stderr going to the run folder's ``log.txt``. The
worker never opens the state store: it reads its job from the run folder's ``job.json`` (written by the
daemon), dispatches through the kind registry, reports through the events file and writes how its attempt
ended to ``outcome-<attempt>.json`` atomically (so the outcome survives a daemon that died meanwhile; see
:mod:`torchbearer.runs`), and exits with :data:`EXIT_SUCCEEDED`, :data:`EXIT_FAILED` or
:data:`EXIT_INTERRUPTED` (stopped at a safe point after SIGTERM: the job runs again).
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import traceback
from pathlib import Path

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later
EXIT_INPUT = 65  # EX_DATAERR: the job's input is wrong (a user error, not a crash)
#: The supervisor's stall watchdog sends this to have every thread's Python stack written into log.txt.
STACK_SIGNAL = signal.SIGUSR1

#: Errors of the libraries that mean "the job's input is wrong" (named, so the worker imports none of them):
#: with ``JobInputError``, ``FileNotFoundError`` and a spec's ``ValidationError`` they end an attempt with
#: :data:`EXIT_INPUT`, which the crash-loop guard does not count.
INPUT_ERRORS = frozenset({
    "torchbearer.ml.labels.LabelError", "torchbearer.ml.scenes.InputCheckError",
    "torchbearer.ml.checkpoint.CheckpointError", "torchbearer.imagery.aoi.AoiError",
    "torchbearer.imagery.copernicus.CredentialsMissing", "torchbearer.imagery.scenes.NoScenesError",
})  # fmt: skip

log = logging.getLogger("torchbearer.worker")


def describe_exception(exc: BaseException) -> str:
    """One line for the job's reason: the exception type and its message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the job's input is wrong (a user error) rather than that the job crashed."""
    from pydantic import ValidationError

    from torchbearer.context import JobInputError

    if isinstance(exc, JobInputError | FileNotFoundError | ValidationError):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in INPUT_ERRORS for cls in type(exc).__mro__)


def run_job(job_id: int, attempt: int, run_dir: Path) -> int:
    """Run one attempt of a job; returns the process exit code."""
    from torchbearer import runs
    from torchbearer.context import JobContext, JobInterrupted, task_rank
    from torchbearer.joblog import LogMarkHandler
    from torchbearer.jobs import get_kind
    from torchbearer.redact import register_settings, scrub
    from torchbearer.settings import Settings
    from torchbearer.store import AttemptOutcome

    settings = Settings.load()
    register_settings(settings)
    try:
        ctx = JobContext.from_run_dir(run_dir, attempt, settings)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if ctx.job_id != job_id:
        log.error("%s is the job file of job #%d, not #%d", run_dir / runs.JOB_FILE, ctx.job_id, job_id)
        return EXIT_USAGE
    ctx.rank = task_rank()  # a parallel job's srun tasks: only rank 0 reports
    marks = LogMarkHandler(ctx.emit)  # the job's warnings and errors reach the store as log markers
    logging.getLogger().addHandler(marks)
    ctx.install_signal_handlers()
    if _early_stops:  # SIGTERM while starting: stop at the first safe point, as if it came now
        log.warning("received %s while starting", signal.Signals(_early_stops[0]).name)
        ctx.request_stop()
    job = ctx.job
    log.info("job %s (#%d) attempt %d: kind %s", ctx.name, job_id, attempt, job["kind"])

    def finish(outcome: AttemptOutcome, code: int, reason: str | None = None) -> int:
        logging.getLogger().removeHandler(marks)
        marks.close()
        ctx.close()  # every event is in the file before the outcome says the attempt ended
        if not ctx.rank:  # one outcome per job, however many tasks ran it
            runs.write_outcome(run_dir, attempt, outcome, code, scrub(reason) if reason else reason)
        return code

    try:
        kind = get_kind(job["kind"])
        spec = kind.spec.model_validate(job["spec"])
        kind.run(spec, ctx)
    except JobInterrupted as exc:
        log.info("interrupted: %s", exc)  # no warning: a daemon stop is routine, and its transition says it
        return finish(AttemptOutcome.INTERRUPTED, EXIT_INTERRUPTED, str(exc))
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded, SystemExit included
        traceback.print_exc()
        sys.stderr.flush()
        if ctx.should_stop and not isinstance(exc, Exception):
            return finish(AttemptOutcome.INTERRUPTED, EXIT_INTERRUPTED)
        # a wrong input is the user's mistake: its own exit code keeps it out of the crash-loop guard
        code = EXIT_INPUT if is_input_error(exc) else EXIT_FAILED
        return finish(AttemptOutcome.FAILED, code, describe_exception(exc))
    log.info("job %s (#%d) succeeded", ctx.name, job_id)
    return finish(AttemptOutcome.SUCCEEDED, EXIT_SUCCEEDED)


#: Signals that arrived before the job's own handlers were installed (see :func:`main`).
_early_stops: list[int] = []


def _note_early_stop(signum: int, _frame: object) -> None:
    _early_stops.append(signum)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not all(a.isdigit() for a in args[:2]):
        print("usage: python -m torchbearer.worker <job-id> <attempt> <run-folder>", file=sys.stderr)
        return EXIT_USAGE
    # A stop may come while the libraries load (a second or more): note it now, honour it once the job's
    # context exists, instead of dying of it without an outcome.
    signal.signal(signal.SIGTERM, _note_early_stop)
    signal.signal(signal.SIGINT, _note_early_stop)
    faulthandler.enable()  # a segfault leaves its Python traceback in log.txt
    faulthandler.register(STACK_SIGNAL, all_threads=True, chain=False)  # a stalled job's stacks, ditto
    from torchbearer.joblog import setup_job_logging
    from torchbearer.redact import ScrubbingStream

    # everything printed goes to the run folder's log.txt: scrub known secrets on the way (register_settings)
    sys.stdout, sys.stderr = ScrubbingStream(sys.stdout), ScrubbingStream(sys.stderr)
    setup_job_logging(sys.stderr)  # one handler: each line once, no tips, numbers as numbers
    return run_job(int(args[0]), int(args[1]), Path(args[2]))


if __name__ == "__main__":
    sys.exit(main())
