"""The dashboard's pages and fragments over the real app (no browser): what is open, what needs the token, and
the standard config the submit page starts from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app import jobs
from app.core.config import Settings
from app.core.db import Database
from app.main import create_app
from app.run_folder import RunFolder
from app.training_config import TrainingConfig
from app.web.routes import SPEC_KEYS, standard_config_yaml

TOKEN = "web-test-token"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def guarded(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_token": SecretStr(TOKEN)}))) as client:
        yield client


def _job(settings: Settings) -> str:
    db = Database(settings)
    try:
        with db.session() as session:
            job, _ = jobs.create(session, TrainingConfig.model_validate({"training": {"max_steps": 3}}))
            return job.id
    finally:
        db.dispose()


def test_pages_and_vendored_files_are_served_by_the_app(client: TestClient) -> None:
    for path in ("/", "/jobs/abc", "/submit", "/datasets"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert 'data-auth-required="false"' in page.text
        # Nothing is fetched from another host: every script and stylesheet is under /static.
        assert "http://" not in page.text.replace("http://127", "") and "https://" not in page.text.split("<main")[0]
    for path in (
        "/static/vendor/htmx-2.0.11/htmx.min.js",
        "/static/vendor/htmx-2.0.11/LICENSE",
        "/static/vendor/uplot-1.6.32/uPlot.iife.min.js",
        "/static/vendor/uplot-1.6.32/LICENSE",
        "/static/job.js",
    ):
        assert client.get(path).status_code == 200, path
    assert "/ui/jobs" not in client.get("/openapi.json").text  # the dashboard stays out of the API schema


def test_fragments_need_the_token_and_pages_hold_no_job_data(guarded: TestClient, settings: Settings) -> None:
    job_id = _job(settings)
    page = guarded.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and 'data-auth-required="true"' in page.text
    assert guarded.get("/").status_code == 200 and job_id not in guarded.get("/").text
    for path in ("/ui/jobs", f"/ui/jobs/{job_id}/results", f"/ui/jobs/{job_id}/log"):
        assert guarded.get(path).status_code == 401, path
        ok = guarded.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, path
    listing = guarded.get("/ui/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert f'data-job-id="{job_id}"' in listing and "queued" in listing


def test_fragments_name_a_missing_job_and_bad_paging(client: TestClient) -> None:
    missing = client.get("/ui/jobs/nope/results")
    assert missing.status_code == 404 and missing.json()["param"] == "job_id"
    bad = client.get("/ui/jobs?limit=0")
    assert bad.status_code == 422 and bad.json()["param"] == "query.limit"


def test_the_log_tail_is_the_last_lines(client: TestClient, settings: Settings) -> None:
    job_id = _job(settings)
    log = RunFolder(settings.runs_dir / job_id, TrainingConfig()).log_file
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i} <b>\n" for i in range(100)))
    text = client.get(f"/ui/jobs/{job_id}/log").text
    assert "line 99 &lt;b&gt;" in text and "line 60 " in text and "line 59 " not in text  # escaped, 40 lines


def test_the_standard_config_is_the_specs_keys_and_validates(tmp_path: Path) -> None:
    config = yaml.safe_load(standard_config_yaml())
    assert {section: list(values) for section, values in config.items()} == SPEC_KEYS
    assert config["training"]["learning_rate"] == 2e-4 and config["lora"]["r"] == 8
    assert TrainingConfig.model_validate(config) == TrainingConfig()
