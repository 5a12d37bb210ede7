"""Plans: retry delays, limits, and a snapshot of the plan of every sample workflow."""

from __future__ import annotations

import os
import random

import pytest

from flows.workflow.check import analyse
from flows.workflow.load import load_workflow
from flows.workflow.params import bind
from flows.workflow.plan import plan_workflow, retry_delays
from flows.workflow.show import plan_text
from flows.workflow.spec import Retry

from ..conftest import SAMPLES

SNAPSHOTS = os.path.join(os.path.dirname(__file__), "snapshots")


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        (Retry(attempts=1, delay=5), []),
        (Retry(attempts=4, delay=2, backoff="fixed", jitter=0), [2, 2, 2]),
        (Retry(attempts=4, delay=2, backoff="linear", jitter=0), [2, 4, 6]),
        (Retry(attempts=5, delay=60, backoff="exponential", jitter=0, max_delay=200), [60, 120, 200, 200]),
    ],
)
def test_retry_delays(retry, expected):
    assert retry_delays(retry) == expected


def test_jitter_stays_within_its_fraction_and_varies():
    retry = Retry(attempts=50, delay=10, jitter=0.2)
    delays = retry_delays(retry, random.Random(7))
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 10


def _plan(path, env="staging", sets=None):
    loaded = load_workflow(path)
    analysis = analyse(loaded)
    bound = bind(
        loaded, sets or {}, environment=env, default_environment="development", workflow_id="<workflow_id>"
    )
    return plan_workflow(loaded, analysis.graph, bound, parallel=4)


SAMPLE_FILES = sorted(SAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_sample_plan_snapshot(path):
    """The plan of every sample is pinned; regenerate with OPSFLOW_UPDATE_SNAPSHOTS=1."""
    text = plan_text(_plan(path)).replace(os.environ["OPSFLOW_HOME"], "$OPSFLOW_HOME") + "\n"
    snapshot = os.path.join(SNAPSHOTS, f"{path.stem}.plan.txt")
    if os.environ.get("OPSFLOW_UPDATE_SNAPSHOTS") == "1":
        os.makedirs(SNAPSHOTS, exist_ok=True)
        with open(snapshot, "w") as handle:
            handle.write(text)
    assert os.path.exists(snapshot), f"no snapshot for {path.name}; OPSFLOW_UPDATE_SNAPSHOTS=1 writes it"
    with open(snapshot) as handle:
        assert text == handle.read(), f"plan of {path.name} changed; OPSFLOW_UPDATE_SNAPSHOTS=1 to accept"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_samples_validate_without_warnings(path):
    assert analyse(load_workflow(path)).warnings == []
