"""``defaults:`` apply to the jobs whose kind takes them: a night's train settings skip its predict job."""

from __future__ import annotations

import pytest

from torchbearer.spec import JobFileError, parse_job_text

NIGHT = """\
defaults:
  kind: probe
  steps: 7
  action: succeed
jobs:
  - {name: a}
  - {name: b, kind: other-probe, after: [a]}
"""


@pytest.fixture(autouse=True)
def _kinds():
    from pydantic import Field

    import tests.kinds  # noqa: F401 - registers probe
    from torchbearer.jobs import JobKind, register
    from torchbearer.spec import JobSpec

    class OtherSpec(JobSpec):
        steps: int = Field(1, ge=0)

    register(JobKind("other-probe", OtherSpec, lambda spec, ctx: None))


def test_defaults_skip_jobs_whose_kind_lacks_the_key():
    a, b = parse_job_text(NIGHT)
    assert a.spec.steps == 7 and a.given["action"] == "succeed"
    assert b.spec.steps == 7 and "action" not in b.given  # other-probe has no action: not merged


def test_a_default_no_job_takes_is_refused_with_its_line():
    with pytest.raises(JobFileError) as caught:
        parse_job_text(NIGHT.replace("  action: succeed", "  actoin: succeed"), "night.yaml")
    assert "night.yaml:4: defaults.actoin: unknown key 'actoin'; did you mean 'action'?" in str(caught.value)
