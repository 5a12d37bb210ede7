"""Per-environment batch settings: defaults, overrides, bad files."""

from __future__ import annotations

import pytest

from flows.errors import ValidationError
from flows.files.config import load_batch_config

CONFIG = """
defaults:
  processor: "cp {input} {output}"
  output: /srv/out
  workers: 2
environments:
  production:
    workers: 4
    notify: json://alerts:8080/hook
"""


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "batches.yaml"
    path.write_text(CONFIG)
    assert load_batch_config(path, None) == {
        "processor": "cp {input} {output}",
        "output": "/srv/out",
        "workers": 2,
    }
    production = load_batch_config(path, "production")
    assert production["workers"] == 4 and production["notify"] == "json://alerts:8080/hook"
    assert production["output"] == "/srv/out"


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        (CONFIG, "qa", "no environment 'qa'"),
        ("defaults:\n  wrokers: 2\n", None, "wrokers"),
        ("defaults:\n  workers: 0\n", None, "workers"),
        ("defaults: [\n", None, "malformed YAML"),
        ("defaults:\n  mode: warp\n", None, "mode"),
    ],
)
def test_bad_config(tmp_path, text, env, needle):
    path = tmp_path / "batches.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=needle):
        load_batch_config(path, env)
