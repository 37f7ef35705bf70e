"""What each file of ``tests/data/bad_jobs/`` must be refused with: a text its message contains, and its line.

Shared by the job-file tests (``tests/spec``) and the daemon's ingest test (``tests/daemon``), which drops the
whole corpus into a live queue.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data" / "bad_jobs"

#: file name → (text the error must contain, line it must name or None where YAML gives no line).
EXPECTED: dict[str, tuple[str, int | None]] = {
    "alias_bomb.yaml": ("alias bomb", None),
    "bad_cron.yaml": ("is not a cron expression", 3),
    "bad_date.yaml": ("YAML error: month must be in 1..12", None),
    "bad_cron_words.yaml": ("Wrong number of fields", 3),
    "bad_name.yaml": ("name: String should match pattern", 1),
    "batch_missing_name.yaml": ("jobs[1].name: Field required", 5),
    "binary_garbage.yaml": ("binary data", None),
    "custom_tag.yaml": ("only plain YAML is accepted", 3),
    "deep_nesting.yaml": ("nested too deeply", None),
    "defaults_not_mapping.yaml": ("defaults: must be a mapping", 1),
    "duplicate_key.yaml": ("duplicate key 'steps' (first at line 3)", 4),
    "duplicate_names.yaml": ("job name 'twin' is used more than once", None),
    "empty.yaml": ("file is empty", None),
    "huge_number.yaml": ("steps: Input should be less than or equal to 100000", 3),
    "job_entry_scalar.yaml": ("jobs[0]: a job must be a mapping", 4),
    "jobs_empty.yaml": ("jobs: must be a non-empty list", 1),
    "jobs_not_list.yaml": ("jobs: must be a non-empty list", 3),
    "list_document.yaml": ("expected a mapping (a job, or defaults + jobs), got list", 1),
    "missing_kind.yaml": ("missing 'kind'", None),
    "multi_document.yaml": ("expected a single document", 3),
    "not_utf8.yaml": ("not UTF-8 text (byte 0xe9", None),
    "only_comment.yaml": ("got nothing", 1),
    "python_name_tag.yaml": ("python/name:os.system': only plain YAML is accepted", 2),
    "python_object_tag.yaml": ("python/object/apply:os.system': only plain YAML is accepted", 3),
    "range_negative_retries.yaml": ("retries: Input should be greater than or equal to 0", 3),
    "range_negative_timeout.yaml": ("timeout: Value error, a duration must be positive", 3),
    "range_priority_huge.yaml": ("priority: Input should be less than or equal to 1000", 3),
    "range_zero_devices.yaml": ("devices: Input should be greater than or equal to 1", 3),
    "scalar_document.yaml": ("got str", 1),
    "syntax_bad_indent.yaml": ("mapping values are not allowed here", 3),
    "syntax_duplicate_colon.yaml": ("mapping values are not allowed here", 1),
    "syntax_tab_indent.yaml": ("found character '\\t' that cannot start any token", 4),
    "syntax_unclosed_bracket.yaml": ("while parsing a flow sequence, expected ',' or ']'", 4),
    "syntax_unclosed_quote.yaml": ("found unexpected end of stream", 3),
    "truncated.yaml": ("expected ',' or ']', but got '<stream end>'", 7),
    "type_after_mapping.yaml": ("after: Input should be a valid list", 3),
    "type_not_before_bad.yaml": ("not_before: Input should be a valid datetime", 3),
    "type_priority_list.yaml": ("priority: Input should be a valid integer", 3),
    "type_steps_string.yaml": ("steps: Input should be a valid integer", 3),
    "type_timeout_bad.yaml": ("'soon' is not a duration", 3),
    "type_mapping_for_number.yaml": ("step_s: Input should be a valid number", 3),
    "unhashable_key.yaml": ("while constructing a mapping, found unhashable key", 3),
    "unknown_key_in_batch.yaml": ("jobs[1].retires: unknown key 'retires'; did you mean 'retries'?", 6),
    "unknown_key_in_defaults.yaml": ("defaults.stpes: unknown key 'stpes'; did you mean 'steps'?", 3),
    "unknown_key_typo.yaml": ("prority: unknown key 'prority'; did you mean 'priority'?", 3),
    "unknown_top_level_in_batch.yaml": ("jobz: unknown top-level key", 3),
    "wrong_kind.yaml": ("unknown job kind 'prob'; did you mean 'probe'?", 2),
    "cycle.yaml": ("after: dependency cycle: a → c → b → a", None),
    "cycle_self.yaml": ("after: job 'selfish' waits for itself", 3),
}

#: Files that are valid job files on their own and are refused when their ``after:`` is resolved in the store.
DEPENDENCY_EXPECTED: dict[str, str] = {
    "after_unknown_name.yaml": "no job named 'no-such-job-anywhere' in this file or the store",
    "after_unknown_id.yaml": "no job with id 987654",
}

#: Size of the generated oversized file (bytes): far above the job-file limit, never committed.
HUGE_FILE_BYTES = 50 * 1024 * 1024


def write_huge_file(path: Path) -> Path:
    """A 50 MB job file: a valid start, then padding (written in chunks, not held in memory)."""
    chunk = ("# padding " + "x" * 1013 + "\n").encode()
    with open(path, "wb") as file:
        file.write(b"name: huge\nkind: probe\n")
        for _ in range(HUGE_FILE_BYTES // len(chunk)):
            file.write(chunk)
    return path
