"""A SIGKILL is blamed on the out-of-memory killer only with evidence: the kernel log or the cgroup counter.

The readers are pointed at files in the kernel's own formats (``/dev/kmsg`` records, cgroup v1/v2 counter
files), since a test cannot make the kernel's OOM killer strike; the real ``/dev/kmsg`` and cgroup are read
too, which must not fail whatever the machine allows.
"""

from __future__ import annotations

import signal
from pathlib import Path

from torchbearer.daemon import oom
from torchbearer.daemon.supervisor import describe_exit

KMSG = (
    "6,1201,88012345,-;python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n"
    "6,1202,88012350,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/jobs,task_memcg=/jobs,task=python,pid=4242,uid=1000\n"
    "3,1203,88012360,-;Memory cgroup out of memory: Killed process 4242 (python) total-vm:9123456kB, "
    "anon-rss:8000000kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:17000kB oom_score_adj:0\n"
)


def test_kernel_log_names_the_killed_worker(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(KMSG)
    assert "Killed process 4242 (python)" in oom.kernel_log_oom(4242, kmsg)
    kmsg.write_text(KMSG.splitlines()[1])  # only the summary line
    assert "pid=4242" in oom.kernel_log_oom(4242, kmsg)
    assert oom.kernel_log_oom(424, kmsg) is None and oom.kernel_log_oom(42420, kmsg) is None
    assert oom.kernel_log_oom(4242, tmp_path / "unreadable") is None


def test_cgroup_counters_v1_and_v2(tmp_path: Path) -> None:
    (tmp_path / "v2" / "jobs").mkdir(parents=True)
    (tmp_path / "v2" / "jobs" / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    (tmp_path / "v2.cgroup").write_text("0::/jobs\n")
    assert oom.oom_kill_count(tmp_path / "v2", tmp_path / "v2.cgroup") == 2
    (tmp_path / "v1" / "memory" / "jobs").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "jobs" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"
    )
    (tmp_path / "v1.cgroup").write_text("5:cpu,cpuacct:/\n4:memory:/jobs\n0::/\n")
    assert oom.oom_kill_count(tmp_path / "v1", tmp_path / "v1.cgroup") == 5
    assert oom.oom_kill_count(tmp_path / "none", tmp_path / "v1.cgroup") is None
    assert oom.oom_kill_count() is None or oom.oom_kill_count() >= 0  # this machine's: readable or not


def test_sigkill_blamed_on_memory_only_with_evidence(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(KMSG)
    code = -signal.SIGKILL
    evidence = oom.oom_evidence(4242, None, kmsg=kmsg)
    assert "out-of-memory killer" in describe_exit(code, oom=evidence) and "Killed process 4242" in evidence
    counted = oom.oom_evidence(777, 3, count_after=4, kmsg=kmsg)
    assert "rose from 3 to 4" in describe_exit(code, oom=counted)
    nothing = oom.oom_evidence(777, 3, count_after=3, kmsg=kmsg)
    assert nothing is None
    plain = describe_exit(code, oom=nothing)
    assert "out-of-memory killer" not in plain.split("(")[0] and "not by torchbearer" in plain
    assert "likely" not in plain
