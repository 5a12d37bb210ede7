"""The flow tests/test_trigger.py deploys and triggers through a real process worker."""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="opsflow-trigger-echo")
def echo(value: int = 1, fail: bool = False) -> int:
    get_run_logger().info("echo value=%s", value)
    if fail:
        raise RuntimeError(f"asked to fail (value={value})")
    return value
