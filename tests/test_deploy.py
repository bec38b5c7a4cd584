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


def test_compose_postgres_profile_has_a_checked_database_and_workers_that_scale() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    postgres, worker, api = (compose["services"][name] for name in ("postgres", "worker", "api"))
    assert postgres["profiles"] == ["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert postgres["volumes"][0].split(":")[0] in compose["volumes"]
    # Both read the URL from the environment (empty: SQLite); a scaled worker has no fixed name or port.
    assert api["environment"]["FORGE_DATABASE_URL"] == worker["environment"]["FORGE_DATABASE_URL"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert worker["stop_grace_period"]  # SIGTERM checkpoints the running job before the container goes


def _k8s() -> dict[str, dict]:
    docs = [
        d for path in sorted((ROOT / "examples" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
    ]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_kubernetes_example_gives_workers_gpus_the_database_secret_and_the_shared_project() -> None:
    objects = _k8s()
    secret = objects["Secret/forge-database"]
    assert secret["stringData"]["url"].startswith("postgresql+psycopg://")
    pvc = objects["PersistentVolumeClaim/forge-project"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    api = objects["Deployment/forge-api"]["spec"]["template"]["spec"]
    worker_pod = objects["Deployment/forge-worker"]["spec"]["template"]["spec"]
    service = objects["Service/forge-api"]
    assert service["spec"]["selector"] == objects["Deployment/forge-api"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == api["containers"][0]["ports"][0]["containerPort"]
    [worker] = worker_pod["containers"]
    assert worker["command"] == ["python", "-m", "worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert worker_pod["terminationGracePeriodSeconds"] >= 120
    for pod in (api, worker_pod):
        [container] = pod["containers"]
        env = _env(container)
        assert env["FORGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "forge-database", "key": "url"}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["project"] == env["FORGE_PROJECT_DIR"]["value"] == "/project"
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert claims["project"] == "forge-project"
    assert _env(worker)["FORGE_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_slurm_example_runs_one_worker_on_its_gpus_against_postgres() -> None:
    script = (ROOT / "examples" / "slurm" / "worker.sbatch").read_text()
    directives = dict(
        line.removeprefix("#SBATCH ").split("=", 1) for line in script.splitlines() if line.startswith("#SBATCH --")
    )
    assert directives["--gres"].startswith("gpu:") and directives["--signal"].startswith("B:TERM@")
    for name in ("FORGE_DATABASE_URL", "FORGE_PROJECT_DIR", "FORGE_WORKER_GPUS", "FORGE_WORKER_ID"):
        assert f"export {name}=" in script
    assert script.rstrip().splitlines()[-1].startswith("exec ") and "-m worker" in script
    result = subprocess.run(["bash", "-n", str(ROOT / "examples" / "slurm" / "worker.sbatch")], capture_output=True)
    assert result.returncode == 0, result.stderr
