"""Whether the kernel's out-of-memory killer ended a worker: evidence, not a guess.

A worker killed by SIGKILL that torchbearer did not kill may have met the OOM killer, or ``kill -9`` from a
user or another program. Two places can tell: the kernel log (``/dev/kmsg``: "Out of memory: Killed process
<pid>", "oom-kill:…,pid=<pid>,…"), readable where ``dmesg`` is, and the memory cgroup's OOM-kill counter
(cgroup v2 ``memory.events`` ``oom_kill``; v1 ``memory.oom_control`` ``oom_kill``), which counts kills in the
daemon's cgroup and the cgroups below it. Each reader returns None when it cannot read its source.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
KMSG = Path("/dev/kmsg")
#: Bytes of kernel log read at most (the ring buffer is usually 256 KiB to a few MiB).
KMSG_MAX_BYTES = 16 * 1024 * 1024


def _counter_files(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    """The OOM counter files of this process's memory cgroup, nearest first (v2, then v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2 (unified); a hybrid host mounts it under unified/
            for base in (cgroup_root, cgroup_root / "unified"):
                files.append(base / relative / "memory.events")
        elif "memory" in controllers.split(","):
            base = cgroup_root / "memory"
            # Inside a cgroup namespace the path shown may not exist from here: the mount's root is ours then.
            files += [base / relative / "memory.oom_control", base / "memory.oom_control"]
    return files


def oom_kill_count(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """Processes the OOM killer has killed in this process's memory cgroup (and below); None if unknown."""
    for path in _counter_files(cgroup_root, proc_cgroup):
        try:
            text = path.read_text()
        except OSError:
            continue
        match = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def kernel_log_oom(pid: int, kmsg: Path = KMSG) -> str | None:
    """The kernel log's line saying the OOM killer killed ``pid``; None if none (or the log is unreadable)."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    chunks, size = [], 0
    try:
        while size < KMSG_MAX_BYTES:
            try:
                chunk = os.read(fd, 8192)  # /dev/kmsg: one record a read
            except BlockingIOError:  # no more records
                break
            except OSError as exc:
                if exc.errno == 32:  # EPIPE: records overwritten while reading; go on with the next
                    continue
                break
            if not chunk:  # a plain file (tests): its end
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    messages = [line.split(";", 1)[-1].strip() for line in b"".join(chunks).decode(errors="replace").splitlines()]
    # "Killed process <pid> (name) total-vm…" reads best; the oom-kill summary line is the fallback.
    for pattern in (rf"Killed process {pid}\b", rf"oom-kill:.*\bpid={pid}\b"):
        found = next((m for m in messages if re.search(pattern, m)), None)
        if found is not None:
            return found[:200]
    return None


def oom_evidence(pid: int | None, count_before: int | None, *, count_after: int | None = None,
                 kmsg: Path = KMSG) -> str | None:  # fmt: skip
    """What shows the OOM killer ended worker ``pid``: its kernel-log line, or the cgroup counter's rise
    since the worker started (``count_before``; ``count_after`` defaults to reading it now). None if nothing."""
    line = kernel_log_oom(pid, kmsg) if pid is not None else None
    if line is not None:
        return f"kernel log: {line}"
    after = oom_kill_count() if count_after is None else count_after
    if count_before is not None and after is not None and after > count_before:
        return f"the memory cgroup's OOM-kill counter (oom_kill) rose from {count_before} to {after} while it ran"
    return None
