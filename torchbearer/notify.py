"""Telling the user what happened overnight: Apprise notifications and a shell-command hook.

Events (:data:`~torchbearer.settings.NOTIFY_EVENTS`): a job ``failed`` (its last try) or ``succeeded``, a job
``stalled`` (the watchdog stopped it), the ``queue-empty`` (nothing left to run), the crash-loop guard
``paused`` the queue, the morning ``report``. The daemon's loop builds an :class:`Event` from the store (cheap
reads) and hands it to a :class:`Notifier`, whose own thread sends it: to every Apprise URL of
``TORCHBEARER_NOTIFY_URLS`` (ntfy, Slack, Matrix, Telegram, e-mail, ``json://`` webhooks …) and to
``TORCHBEARER_NOTIFY_COMMAND`` (the event as JSON on stdin and in ``TORCHBEARER_EVENT``). A receiver that is
slow, down or answers an error costs only a logged warning: the loop never waits for it, and a full queue of
unsent events drops the newest. Notifier URLs carry credentials (``ntfy://user:password@host``, bot tokens):
:func:`url_secrets` gives them to ``redact.py``, which masks them in every log line and stored text.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from torchbearer.redact import scrub, scrub_value
from torchbearer.settings import Settings
from torchbearer.store import RUNNABLE_STATES, Job, JobState, Store

log = logging.getLogger("torchbearer.notify")

#: Lines of the job's log carried in a message.
LOG_LINES = 10
#: Unsent events kept while a receiver is slow; more are dropped (with a warning).
MAX_PENDING = 100
#: Seconds the shell hook may run before it is killed.
COMMAND_TIMEOUT_S = 30.0
#: Seconds :meth:`Notifier.close` waits for the events still pending (the daemon is stopping).
CLOSE_TIMEOUT_S = 10.0
#: Apprise's notification type per event (the colour or icon a service shows).
_TYPES = {"failed": "failure", "stalled": "warning", "paused": "warning", "succeeded": "success"}


@dataclass
class Event:
    """What a notification says. Durations in seconds; ``job`` fields are None for queue-wide events."""

    event: str
    title: str
    message: str
    job_id: int | None = None
    name: str | None = None
    kind: str | None = None
    state: str | None = None
    reason: str | None = None
    duration_s: float | None = None
    best_metric: dict[str, float | str] | None = None
    log_tail: str | None = None
    jobs_left: int = 0
    attachments: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps(scrub_value(asdict(self)))

    @property
    def body(self) -> str:
        """The text a human reads: the message, then the figures, then the end of the log."""
        lines = [self.message]
        figures = []
        if self.duration_s is not None:
            figures.append(f"duration {format_duration(self.duration_s)}")
        if self.best_metric:
            figures.append(f"best {self.best_metric['name']} {self.best_metric['value']:.4g}")
        figures.append(f"jobs left {self.jobs_left}")
        lines.append(" · ".join(figures))
        if self.log_tail:
            lines += ["last log lines:", self.log_tail]
        return scrub("\n".join(lines))


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12.3 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


# -- building events from the store ----------------------------------------------------------------------------


def jobs_left(store: Store) -> int:
    """Jobs that will still run: queued, waiting, running, interrupted (held ones wait for the user)."""
    counts = store.counts_by_state()
    states = {*RUNNABLE_STATES, JobState.WAITING, JobState.RUNNING}
    return sum(count for state, count in counts.items() if state in states)


def _monitor(spec: Any) -> tuple[str | None, str | None]:
    """The ``monitor`` and ``mode`` a spec names anywhere (train: ``train.early_stopping.monitor``)."""
    if isinstance(spec, dict):
        if isinstance(spec.get("monitor"), str):
            return spec["monitor"], spec.get("mode")
        for value in spec.values():
            found = _monitor(value)
            if found[0]:
                return found
    return None, None


def best_metric(store: Store, job: Job) -> dict[str, float | str] | None:
    """The job's best value of the metric it optimises (its ``monitor``, else ``val/iou``, ``val/loss``, …).

    Maximum, or minimum for a loss (or ``mode: min``). None when the job logged no metric.
    """
    names = store.metric_names(job.id)
    if not names:
        return None
    monitor, mode = _monitor(job.spec)
    preferred = [monitor, "val/iou", "val/accuracy", "val/f1", "val/loss"]
    name = next((n for n in preferred if n in names), None)
    name = name or next((n for n in sorted(names) if n.startswith("val/")), None) or sorted(names)[0]
    values = [row["value"] for row in store.metrics(job.id, name)]
    lowest = mode == "min" or (mode is None and "loss" in name)
    return {"name": name, "value": min(values) if lowest else max(values)}


def job_event(store: Store, job: Job, event: str, log_tail: str | None = None) -> Event:
    """An event about one job, read from the store (and ``log_tail``, the end of its log)."""
    reason = f": {job.reason}" if job.reason else ""
    lines = "\n".join((log_tail or "").splitlines()[-LOG_LINES:]) or None
    return Event(
        event=event,
        title=f"torchbearer: {job.name} (#{job.id}) {event}",
        message=f"job {job.name} (#{job.id}, kind {job.kind}) {job.state}{reason}",
        job_id=job.id,
        name=job.name,
        kind=job.kind,
        state=job.state,
        reason=job.reason,
        duration_s=job.duration_s,
        best_metric=best_metric(store, job),
        log_tail=lines,
        jobs_left=jobs_left(store),
    )


def queue_event(store: Store, event: str, message: str) -> Event:
    """An event about the whole queue (``queue-empty``, ``paused``)."""
    counts = store.counts_by_state()
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return Event(event=event, title=f"torchbearer: {message}", message=f"{message} ({summary or 'no jobs'})",
                 jobs_left=jobs_left(store))  # fmt: skip


# -- sending ---------------------------------------------------------------------------------------------------


class Notifier:
    """Sends events on its own thread; :meth:`send` never blocks and never raises."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pending: queue.Queue[Event | None] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._apprise: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.notify_urls or self.settings.notify_command)

    def wants(self, event: str) -> bool:
        return self.enabled and event in self.settings.notify_events

    def start(self) -> Notifier:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="torchbearer-notify", daemon=True)
            self._thread.start()
        return self

    def send(self, event: Event) -> None:
        """Queue ``event`` for sending if its kind is wanted; drop it (logged) when too many are pending."""
        if not self.wants(event.event) or self._thread is None:
            return
        try:
            self._pending.put_nowait(event)
        except queue.Full:
            log.warning("notification dropped (%d still unsent: receivers too slow): %s", MAX_PENDING, event.title)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is pending (waiting at most ``timeout_s``), then end the thread."""
        if self._thread is None:
            return
        try:
            self._pending.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("notifications still unsent after %.0f s: given up", timeout_s)
        self._thread = None

    def _serve(self) -> None:
        while (event := self._pending.get()) is not None:
            try:
                self._deliver(event)
            except Exception:  # a notifier's bug must not end the thread (or reach the daemon)
                log.exception("notification %r failed", event.title)

    def _deliver(self, event: Event) -> None:
        if self.settings.notify_urls:
            self._send_apprise(event)
        if self.settings.notify_command:
            self._run_command(event)

    def _client(self) -> Any:
        if self._apprise is None:
            import apprise  # only when notifications are configured: it is not a light import

            client = apprise.Apprise()
            for number, url in enumerate(self.settings.notify_urls, 1):
                if not client.add(url.get_secret_value()):  # Apprise needs the credential to send
                    log.error("TORCHBEARER_NOTIFY_URLS: URL %d (%s) is not one Apprise understands; skipped",
                              number, scrub(url.get_secret_value().split("://", 1)[0]) + "://…")  # fmt: skip
            self._apprise = client
        return self._apprise

    def _send_apprise(self, event: Event) -> None:
        from apprise import NotifyType

        client = self._client()
        if not len(client):
            return
        attach = [path for path in event.attachments if os.path.isfile(path)] or None
        notify_type = NotifyType(_TYPES.get(event.event, "info"))
        if client.notify(body=event.body, title=scrub(event.title), notify_type=notify_type, attach=attach):
            log.info("notified: %s", event.title)
        else:
            log.warning("a notifier did not take %r (see Apprise's messages above); the jobs go on", event.title)

    def _run_command(self, event: Event) -> None:
        payload = event.as_json()
        env = {**os.environ, "TORCHBEARER_EVENT": payload, "TORCHBEARER_EVENT_NAME": event.event}
        try:
            done = subprocess.run(
                self.settings.notify_command.get_secret_value(), shell=True, input=payload, text=True, env=env,
                capture_output=True, timeout=COMMAND_TIMEOUT_S, cwd=self.settings.project_dir,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            log.warning("TORCHBEARER_NOTIFY_COMMAND ran past %.0f s for %r: killed", COMMAND_TIMEOUT_S, event.title)
            return
        except OSError as exc:
            log.warning("TORCHBEARER_NOTIFY_COMMAND could not run: %s", exc)
            return
        if done.returncode != 0:
            log.warning("TORCHBEARER_NOTIFY_COMMAND exited with %d for %r: %s", done.returncode, event.title,
                        scrub(done.stderr.strip()[-500:]))  # fmt: skip
