"""A worker's log: capped in size while the worker keeps appending, and its end read for failed jobs."""

from __future__ import annotations

import os

from torchbearer.daemon.supervisor import cap_log
from torchbearer.runs import read_tail


def test_cap_keeps_the_newest_half_and_appends_continue(tmp_path):
    path = tmp_path / "log.txt"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as the worker's stdout is opened
    os.write(writer, b"".join(f"line {n:04d}\n".encode() for n in range(1000)))  # 10 000 bytes
    assert not cap_log(path, 20_000)
    assert cap_log(path, 4_000)
    os.write(writer, b"after the cut\n")
    os.close(writer)
    text = path.read_text()
    assert text.startswith("[… 8,000 earlier bytes cut by torchbearer …]\n")
    assert "line 0799" not in text and "line 0800\n" in text and text.endswith("line 0999\nafter the cut\n")
    assert len(text.encode()) < 4_000


def test_read_tail(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("".join(f"line {n}\n" for n in range(100)) + "Traceback (most recent call last):\nboom\n")
    tail = read_tail(path, lines=3)
    assert tail == "line 99\nTraceback (most recent call last):\nboom"
    assert read_tail(tmp_path / "missing.txt") == ""
    assert read_tail(path, lines=1000, max_bytes=20).endswith("boom")
