"""Dockerfile and docker-compose.yml, checked with the tools that run without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_defines_api_and_gpu_worker_on_a_shared_project() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert "8000:8000" in api["ports"]
    assert worker["command"] == ["python", "-m", "worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    project = {v.rsplit(":", 1)[1] for v in api["volumes"]} & {v.rsplit(":", 1)[1] for v in worker["volumes"]}
    assert project == {"/project"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed (CI installs it)")
def test_docker_compose_config_is_valid() -> None:
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_lints_clean() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (the dev extra has it)")
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
