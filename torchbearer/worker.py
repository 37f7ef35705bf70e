"""Runs exactly one job in its own process: ``python -m torchbearer.worker <job-id> <attempt>``.

The supervisor starts it in a new process group with stdout/stderr going to the run folder's ``log.txt``. The
worker dispatches through the kind registry, records how its attempt ended in the store itself (so the outcome
survives a daemon that died meanwhile), and exits with :data:`EXIT_SUCCEEDED`, :data:`EXIT_FAILED` or
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


def run_job(job_id: int, attempt: int) -> int:
    """Run one attempt of a job; returns the process exit code."""
    from torchbearer.context import JobContext, JobInterrupted
    from torchbearer.jobs import get_kind
    from torchbearer.redact import register_settings
    from torchbearer.settings import Settings
    from torchbearer.store import Store

    settings = Settings.load()
    register_settings(settings)
    store = Store(settings.state_path)
    job = store.job(job_id)
    if job is None:
        log.error("job %s is not in %s", job_id, settings.state_path)
        return EXIT_USAGE
    run_dir = Path(job.run_dir) if job.run_dir else settings.runs_dir / f"{job.id}-{job.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(job_id=job.id, name=job.name, attempt=attempt, run_dir=run_dir, settings=settings, store=store)
    ctx.install_signal_handlers()
    log.info("job %s (#%d) attempt %d: kind %s", job.name, job.id, attempt, job.kind)

    def finish(job_id: int, attempt: int, **outcome: object) -> None:
        # waits out a store that refuses writes: how the attempt ended must be recorded
        ctx.persist(lambda: store.finish_attempt(job_id, attempt, **outcome))

    try:
        kind = get_kind(job.kind)
        spec = kind.spec.model_validate(job.spec)
        kind.run(spec, ctx)
    except JobInterrupted as exc:
        log.warning("interrupted: %s", exc)
        finish(job_id, attempt, outcome="interrupted", exit_code=EXIT_INTERRUPTED, reason=str(exc))
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded, SystemExit included
        traceback.print_exc()
        sys.stderr.flush()
        if ctx.should_stop and not isinstance(exc, Exception):
            finish(job_id, attempt, outcome="interrupted", exit_code=EXIT_INTERRUPTED)
            return EXIT_INTERRUPTED
        # a wrong input is the user's mistake: its own exit code keeps it out of the crash-loop guard
        code = EXIT_INPUT if is_input_error(exc) else EXIT_FAILED
        finish(job_id, attempt, outcome="failed", exit_code=code, reason=describe_exception(exc))
        return code
    finish(job_id, attempt, outcome="succeeded", exit_code=EXIT_SUCCEEDED)
    log.info("job %s (#%d) succeeded", job.name, job.id)
    return EXIT_SUCCEEDED


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        print("usage: python -m torchbearer.worker <job-id> <attempt>", file=sys.stderr)
        return EXIT_USAGE
    faulthandler.enable()  # a segfault leaves its Python traceback in log.txt
    faulthandler.register(STACK_SIGNAL, all_threads=True, chain=False)  # a stalled job's stacks, ditto
    from torchbearer.joblog import setup_job_logging
    from torchbearer.redact import ScrubbingStream

    # everything printed goes to the run folder's log.txt: scrub known secrets on the way (register_settings)
    sys.stdout, sys.stderr = ScrubbingStream(sys.stdout), ScrubbingStream(sys.stderr)
    setup_job_logging(sys.stderr)  # one handler: each line once, no tips, numbers as numbers
    return run_job(int(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
