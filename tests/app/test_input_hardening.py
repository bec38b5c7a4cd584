"""The attack run's inputs (issue 18), each answered 4xx through the real API on a real SQLite file, never a 500:
YAML bodies, dataset rows, config gaps the worker used to find, and the no-auth, lease and artifact rules.

Latency checks run against a real uvicorn process and are meant to hold on a loaded, shared 2-core machine (load
averages of 8-12 were seen while other suites ran): a median under 50 ms, 95% under 0.5 s and none over 5 s,
where the defects held every request for 13-33 s.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from app.core.config import Settings
from app.main import create_app
from tests.app.test_api import SPEC_CONFIG
from tests.conftest import ROOT, tiny_config
from tests.e2e.conftest import Processes, process_env
from tests.e2e.conftest import processes as processes  # the real API process fixture, shared with tests/e2e
from worker.protocol import JobSpec
from worker.setup import Setup

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _config(**sections: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(SPEC_CONFIG))
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def billion_laughs(levels: int = 9) -> bytes:
    """The classic alias bomb: 9 levels of 9 aliases each is 9**9 strings once expanded, from ~400 bytes."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


def warmed(base: str, headers: dict[str, str] | None = None) -> str:
    """`base` once the API has imported what it warms at start (transformers, for the optimizer names): a config
    with an unknown optimizer is answered only after that."""
    with httpx.Client(base_url=base, headers=headers or {}, timeout=120) as c:
        assert c.post("/api/training", json={"training": {"optim": "warm-up"}}).status_code == 422
    return base


def poll_while(base: str, busy: threading.Thread, headers: dict[str, str] | None = None) -> list[float]:
    """Seconds each `GET /api/training` took while `busy` ran (at least a few polls)."""
    times: list[float] = []
    with httpx.Client(base_url=base, headers=headers or {}, timeout=60) as poller:
        while busy.is_alive() or len(times) < 5:
            start = time.perf_counter()
            assert poller.get("/api/training").status_code == 200
            times.append(time.perf_counter() - start)
            time.sleep(0.01)
    return times


def assert_fast(times: list[float]) -> None:
    # See the module's docstring for why these bounds are generous.
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 20 else max(times)
    summary = (statistics.median(times), p95, max(times), len(times))
    assert statistics.median(times) < 0.05 and p95 < 0.5 and max(times) < 5.0, summary


# 1. YAML bodies


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"2026-01-01: x\n", "2026-01-01"),  # the date stays text, so it is an unknown key
        (b"model:\n  name: embedded:gemma-3-270m\n  2026-01-01: x\n", "model.2026-01-01"),
    ],
)
def test_a_yaml_date_key_is_a_422_naming_it(client: TestClient, body: bytes, param: str) -> None:
    response = client.post("/api/training", content=body, headers=YAML)
    assert response.status_code == 422, response.text
    assert response.json()["param"] == param


@pytest.mark.parametrize("depth", [3000, 5000])
@pytest.mark.parametrize("style", ["flow", "block"])
def test_deeply_nested_yaml_is_a_422(client: TestClient, depth: int, style: str) -> None:
    body = b"[" * depth + b"]" * depth if style == "flow" else b"- " * depth + b"x\n"
    response = client.post("/api/training", content=body, headers=YAML)
    assert response.status_code == 422 and response.json()["code"] == "too_deep", response.text


def test_yaml_numbers_and_text_that_json_cannot_carry_are_422s(client: TestClient) -> None:
    for body in (b"training: {seed: " + b"9" * 5000 + b"}\n", b'model: {name: "\\ud800"}\n', b"a: &a [*a]\n"):
        response = client.post("/api/training", content=body, headers=YAML)
        assert response.status_code == 422, (body[:40], response.text)


def test_the_alias_bomb_needs_a_token_first_and_is_refused_at_once(settings: Settings) -> None:
    settings.api_token = SecretStr(TOKEN)
    with TestClient(create_app(settings)) as client:
        unauthenticated = client.post("/api/training", content=billion_laughs(), headers=YAML)
        assert unauthenticated.status_code == 401
        response = client.post("/api/training", content=billion_laughs(), headers=YAML | AUTH)
        assert response.status_code == 413 and "alias" in response.json()["message"], response.text
        # 14 KB that expand to 5.7 MiB of JSON: the size limit applies to what was parsed, not only to the bytes.
        blob = "x" * 10_000
        expanding = f"model: {{name: &s {blob}}}\nlora: {{target_modules: [{', '.join(['*s'] * 570)}]}}\n".encode()
        assert len(expanding) < 16_000
        response = client.post("/api/training", content=expanding, headers=YAML | AUTH)
        assert response.status_code == 413 and "FORGE_MAX_REQUEST_BYTES" in response.json()["message"]
        assert client.get("/api/training/jobs", headers=AUTH).json()["total"] == 0


def test_a_body_is_not_read_before_the_token_is_checked(settings: Settings) -> None:
    settings.api_token = SecretStr(TOKEN)
    with TestClient(create_app(settings)) as client:
        for content, headers in ((b"not: [valid", YAML), (b'{"a": "\\ud800"}', {"Content-Type": "application/json"})):
            assert client.post("/api/training", content=content, headers=headers).status_code == 401
        upload = client.post("/api/training/datasets", files={"file": ("a.jsonl", b"{}\n")})
        assert upload.status_code == 401


@pytest.mark.serial  # answers within 100 ms
def test_the_alias_bomb_is_answered_within_100ms_while_polling_stays_fast(processes: Processes) -> None:
    base = warmed(processes.api(FORGE_API_TOKEN=TOKEN), AUTH)
    answers: list[tuple[int, float]] = []

    def attack() -> None:
        with httpx.Client(base_url=base, timeout=60) as attacker:
            for headers in ({}, AUTH, AUTH, AUTH):
                start = time.perf_counter()
                status = attacker.post("/api/training", content=billion_laughs(), headers=YAML | headers).status_code
                answers.append((status, time.perf_counter() - start))

    busy = threading.Thread(target=attack)
    busy.start()
    times = poll_while(base, busy, AUTH)
    busy.join()
    assert [status for status, _ in answers] == [401, 413, 413, 413]
    # The best of three: one answer on a loaded machine may wait for a CPU; each is far under the 13-22 s it took.
    assert min(seconds for _, seconds in answers[1:]) < 0.1 and max(s for _, s in answers) < 5.0, answers
    assert_fast(times)


def test_json_bodies_pass_the_same_checks(client: TestClient) -> None:
    surrogate = client.post(
        "/api/training", content=b'{"model": {"name": "\\ud800"}}', headers={"Content-Type": "application/json"}
    )
    assert surrogate.status_code == 422 and surrogate.json()["param"] == "model.name", surrogate.text
    deep = client.post("/api/training", content=b"[" * 3000 + b"]" * 3000, headers={"Content-Type": "application/json"})
    assert deep.status_code == 422


# 2. Dataset uploads


def _row(i: int) -> dict[str, str]:
    return {"instruction": "Answer briefly.", "input": f"What is {i} + 1?", "output": f"{i + 1}."}


def _jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


HUB_FORM = {"model": "example/not-cached", "chat_template": "gemma-3"}  # no tokenizer here: rows only


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ('{"instruction": ' + "[" * 5000 + "]" * 5000 + ', "input": "x", "output": "y"}', "too_deep"),
        ('{"instruction": ' + "[" * 40 + "]" * 40 + ', "input": "x", "output": "y"}', "too_deep"),
        ('{"instruction": "a", "input": ' + "7" * 5000 + ', "output": "y"}', "number_too_long"),
        ('{"instruction": "a", "input": "lone \\udc80 half", "output": "y"}', "invalid_text"),
    ],
)
@pytest.mark.parametrize("split", [None, "0.8,0.1,0.1"])
def test_a_bad_row_is_a_422_naming_its_line(
    client: TestClient, project: Path, bad: str, code: str, split: str | None
) -> None:
    rows: list[Any] = [_row(i) for i in range(10)]
    rows[3] = bad
    form = HUB_FORM | ({"split": split, "overwrite": "true"} if split else {})
    response = client.post("/api/training/datasets", data=form, files={"file": ("bad.jsonl", _jsonl(rows))})
    assert response.status_code == 422, response.text
    details = response.json()["details"]
    assert [(d["line"], d["type"]) for d in details] == [(4, code)]
    assert not (project / "data/uploads/bad.jsonl").exists()
    # Dropping it is allowed like any bad row, and with a split the three files are written from the rest.
    form |= {"invalid_rows": "drop", "max_dropped_fraction": "0.2"}
    kept = client.post("/api/training/datasets", data=form, files={"file": ("bad.jsonl", _jsonl(rows))})
    assert kept.status_code == 201, kept.text
    assert kept.json()["report"]["files"][0]["used"] == 9


def test_the_row_limit_is_a_413_that_says_so(settings: Settings, project: Path) -> None:
    settings.max_upload_rows = 50
    with TestClient(create_app(settings)) as client:
        ok = client.post(
            "/api/training/datasets", data=HUB_FORM, files={"file": ("ok.jsonl", _jsonl(map(_row, range(50))))}
        )
        assert ok.status_code == 201, ok.text
        files = {"file": ("big.jsonl", _jsonl([_row(i) for i in range(51)]))}
        response = client.post("/api/training/datasets", data=HUB_FORM, files=files)
    assert response.status_code == 413 and response.json()["code"] == "too_many_rows"
    assert "FORGE_MAX_UPLOAD_ROWS" in response.json()["message"]
    assert sorted(p.name for p in (project / "data/uploads").iterdir()) == ["ok.jsonl"]


@pytest.mark.serial  # polls within 50 ms
def test_a_100k_line_upload_leaves_polling_fast(processes: Processes, project: Path) -> None:
    base = warmed(processes.api())
    body = _jsonl([_row(i) for i in range(100_000)])
    result: dict[str, Any] = {}

    def upload() -> None:
        with httpx.Client(base_url=base, timeout=300) as uploader:
            start = time.perf_counter()
            response = uploader.post("/api/training/datasets", data=HUB_FORM, files={"file": ("big.jsonl", body)})
            result.update(status=response.status_code, text=response.text[:500], seconds=time.perf_counter() - start)

    busy = threading.Thread(target=upload)
    busy.start()
    times = poll_while(base, busy)
    busy.join()
    assert result["status"] == 201, result
    assert len(times) > 20, (len(times), result)  # the polls did overlap the validation
    assert_fast(times)


def test_two_uploads_of_one_name_at_once_one_wins_and_nothing_invalid_is_left(
    processes: Processes, project: Path
) -> None:
    base = processes.api()
    good = _jsonl([_row(i) for i in range(200)])
    bad = _jsonl([_row(i) for i in range(199)] + ["not json"])
    uploads = project / "data" / "uploads"
    statuses: list[int] = []

    def send(content: bytes, barrier: threading.Barrier) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            barrier.wait()
            statuses.append(
                c.post("/api/training/datasets", data=HUB_FORM, files={"file": ("race.jsonl", content)}).status_code
            )

    for _ in range(15):
        for contents in ((good, good), (good, bad)):
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=send, args=(content, barrier)) for content in contents]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            stored = uploads / "race.jsonl"
            # Whatever the order, the name holds a valid file (the good one) and nothing is left half-done.
            assert stored.read_bytes() == good
            assert [p.name for p in uploads.iterdir()] == ["race.jsonl"]
            stored.unlink()
    assert 500 not in statuses and set(statuses) <= {201, 409, 422}, statuses
    assert statuses.count(201) == 30  # exactly one winner a round


# 3. Config gaps the worker used to find


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"training": {"seed": -1}}, "training.seed"),
        ({"training": {"seed": 2**40}}, "training.seed"),
        ({"training": {"optim": "adamw_9bit"}}, "training.optim"),
        ({"lora": {"finetune_language_layers": False, "finetune_vision_layers": False}}, "lora"),
        ({"lora": {"target_modules": ["q_proj", "k_proj"], "finetune_attention_modules": False}}, "lora"),
        ({"lora": {"target_modules": ["attn.c_attn", "no_such_proj"]}}, "lora.target_modules"),
    ],
)
def test_config_gaps_are_422s_at_submission(client: TestClient, patch: dict[str, Any], param: str) -> None:
    response = client.post("/api/training", json=_config(**patch))
    assert response.status_code == 422, response.text
    assert response.json()["param"] == param, response.json()
    assert client.get("/api/training/jobs").json()["total"] == 0


def test_non_finite_numbers_are_refused_anywhere(client: TestClient) -> None:
    as_json = b'{"training": {"weight_decay": Infinity}, "evaluation": {"temperature": NaN}}'
    response = client.post("/api/training", content=as_json, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert {d["param"] for d in response.json()["details"]} == {"training.weight_decay", "evaluation.temperature"}
    as_yaml = client.post("/api/training", content=b"gates: {min_improvement: .inf}\n", headers=YAML)
    assert as_yaml.status_code == 422 and as_yaml.json()["param"] == "gates.min_improvement"


def test_target_modules_are_checked_against_a_local_models_weights(client: TestClient, tiny_model_dir: Path) -> None:
    config = tiny_config(tiny_model_dir)
    config["lora"]["target_modules"] = ["c_attn", "c_proj"]  # GPT-2's names: not in a Gemma
    response = client.post("/api/training", json=config)
    assert response.status_code == 422 and response.json()["param"] == "lora.target_modules", response.text
    assert "q_proj" in response.json()["message"]  # it says what the model has
    config["lora"]["target_modules"] = ["self_attn.q_proj", "no_such_proj"]  # one that matches is enough
    assert client.post("/api/training", json=config).status_code == 201


def test_a_malformed_test_split_is_refused_with_its_lines(client: TestClient, project: Path) -> None:
    test = project / "data/splits/test.jsonl"
    lines = test.read_text().splitlines()
    lines[1] = "{broken"
    lines[4] = json.dumps({"conversations": [{"role": "user", "content": "Hi"}]})
    test.write_text("\n".join(lines) + "\n")
    response = client.post("/api/training", json=SPEC_CONFIG)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "test_set_invalid" and body["param"] == "evaluation.test_path"
    assert [(d["line"], d["type"]) for d in body["details"]] == [(2, "not_json"), (5, "no_assistant_turn")]
    off = _config(evaluation={"baseline": False, "evaluate": False})
    assert client.post("/api/training", json=off).status_code == 201


# 4. Security and operations


def test_no_token_serves_only_on_loopback(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        Settings(project_dir=tmp_path, host=host, api_token=None).check_serving()
    Settings(project_dir=tmp_path, host="0.0.0.0", api_token=SecretStr(TOKEN)).check_serving()
    Settings(project_dir=tmp_path, host="0.0.0.0", allow_no_auth=True).check_serving()
    for token in (None, SecretStr("")):  # docker-compose passes an empty FORGE_API_TOKEN when none is set
        with pytest.raises(ValueError, match="FORGE_ALLOW_NO_AUTH"):
            Settings(project_dir=tmp_path, host="0.0.0.0", api_token=token).check_serving()


def test_python_m_app_refuses_to_listen_on_every_interface_without_a_token(project: Path, models_root: Path) -> None:
    env = process_env(project, models_root, FORGE_HOST="0.0.0.0", FORGE_API_TOKEN="")
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "FORGE_ALLOW_NO_AUTH" in result.stderr, result.stderr[-2000:]


def test_lease_and_heartbeat_are_checked_against_each_other(tmp_path: Path) -> None:
    Settings(project_dir=tmp_path, lease_seconds=3, heartbeat_seconds=1)
    with pytest.raises(ValidationError, match="at most a third of FORGE_LEASE_SECONDS"):
        Settings(project_dir=tmp_path, lease_seconds=3, heartbeat_seconds=2)
    env = dict(os.environ, FORGE_LEASE_SECONDS="5", FORGE_HEARTBEAT_SECONDS="4", FORGE_PROJECT_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "FORGE_HEARTBEAT_SECONDS=4" in result.stderr, result.stderr[-2000:]


def test_an_unfinished_file_is_a_404_like_any_missing_artifact(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/api/training", json=SPEC_CONFIG).json()["id"]
    quantized = settings.runs_dir / job_id / "models" / "quantized"
    quantized.mkdir(parents=True)
    (quantized / "model-Q8_0.gguf").write_bytes(b"GGUF")
    (quantized / "model-Q4_K_M.gguf.partial").write_bytes(b"GGUF")
    (settings.runs_dir / job_id / "models" / "merged.partial").mkdir()
    (settings.runs_dir / job_id / "models" / "merged.partial" / "config.json").write_text("{}")
    (quantized / "link.gguf").symlink_to(quantized / "model-Q4_K_M.gguf.partial")
    base = f"/api/training/jobs/{job_id}/artifacts"
    assert client.get(f"{base}/models/quantized/model-Q8_0.gguf").status_code == 200
    for name in (
        "models/quantized/model-Q4_K_M.gguf.partial",
        "models/merged.partial/config.json",
        "models/quantized/link.gguf",
    ):
        response = client.get(f"{base}/{name}")
        assert response.status_code == 404 and response.json()["code"] == "not_found", name


def test_an_empty_idempotency_key_is_a_422_naming_the_header(client: TestClient) -> None:
    response = client.post("/api/training", json=SPEC_CONFIG, headers={"Idempotency-Key": ""})
    assert response.status_code == 422 and "idempotency-key" in response.json()["param"].lower(), response.text
    assert client.get("/api/training/jobs").json()["total"] == 0


# 5. Path fields: one resolver (app/resolve.py) for every route that takes a path or a model name

TOO_LONG_NAME = "n" * 300  # one component over NAME_MAX (255)
TOO_LONG_PATH = "data/" + "d/" * 2100 + "train.jsonl"  # short components, over PATH_MAX (4096) in all
UNUSABLE = {
    "a 300-character component": f"data/{TOO_LONG_NAME}.jsonl",
    "longer than PATH_MAX": TOO_LONG_PATH,
}
CONFIG_ROUTES = ["/api/training", "/api/training/datasets/validate"]


def _with_path(param: str, value: str) -> dict[str, Any]:
    """SPEC_CONFIG with the config key `param` (section.field) set to `value`."""
    section, field = param.split(".")
    return _config(**{section: {field: value}})


@pytest.mark.parametrize("route", CONFIG_ROUTES)
@pytest.mark.parametrize("value", UNUSABLE.values(), ids=UNUSABLE.keys())
@pytest.mark.parametrize(
    "param", ["dataset.path", "dataset.val_path", "evaluation.test_path", "evaluation.glossary_path", "model.name"]
)
def test_an_unusable_path_is_a_422_naming_its_field(client: TestClient, route: str, value: str, param: str) -> None:
    response = client.post(route, json=_with_path(param, value))
    assert response.status_code == 422, response.text[:500]
    assert response.json()["param"] == param, response.json()
    assert client.get("/api/training/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    "value", [TOO_LONG_NAME, "~" + TOO_LONG_NAME, "models/" + TOO_LONG_NAME], ids=["bare", "tilde", "owner"]
)
def test_an_unusable_model_name_shaped_like_a_hub_id_is_a_422_too(client: TestClient, value: str) -> None:
    # No leading `/` or `.`: it could be a hub id, but it is looked for in the project and FORGE_MODEL_DIRS first.
    response = client.post("/api/training", json=_config(model={"name": value}))
    assert response.status_code == 422 and response.json()["param"] == "model.name", response.text[:500]


@pytest.mark.parametrize(
    "value", [TOO_LONG_NAME, f"models/{TOO_LONG_NAME}", "m/" * 2100 + "model"], ids=["component", "owner", "PATH_MAX"]
)
def test_the_datasets_routes_model_parameter_is_checked_like_model_name(client: TestClient, value: str) -> None:
    listed = client.get("/api/training/datasets", params={"model": value})
    assert listed.status_code == 422 and listed.json()["param"] == "query.model", listed.text[:500]
    files = {"file": ("rows.jsonl", _jsonl([_row(i) for i in range(10)]))}
    uploaded = client.post("/api/training/datasets", data={"model": value, "chat_template": "gemma-3"}, files=files)
    assert uploaded.status_code == 422 and uploaded.json()["param"] == "model", uploaded.text[:500]


@pytest.mark.parametrize("route", CONFIG_ROUTES)
@pytest.mark.parametrize("suffix", ["/", "/.", "\\"])
@pytest.mark.parametrize(
    ("param", "file"),
    [
        ("dataset.path", "data/splits/train.jsonl"),
        ("dataset.val_path", "data/splits/val.jsonl"),
        ("evaluation.test_path", "data/splits/test.jsonl"),
        ("evaluation.glossary_path", "data/glossary.json"),
    ],
)
def test_a_file_path_ending_like_a_folder_is_a_422(
    client: TestClient, project: Path, route: str, suffix: str, param: str, file: str
) -> None:
    (project / "data/glossary.json").write_text('["Lisboa"]')
    assert client.post(route, json=_with_path(param, file)).status_code in (200, 201)  # the file as it is named
    response = client.post(route, json=_with_path(param, file + suffix))
    assert response.status_code == 422, response.text[:500]
    assert (response.json()["code"], response.json()["param"]) == ("path_invalid", param)


def test_a_relative_model_name_found_only_under_forge_model_dirs_is_the_folder_the_worker_loads(
    client: TestClient, settings: Settings, tiny_model_dir: Path
) -> None:
    name = tiny_model_dir.name  # not in the project: only in models_root, which is FORGE_MODEL_DIRS
    assert not (settings.resolved_project_dir / name).exists()
    response = client.post("/api/training", json=tiny_config(Path(name)))
    assert response.status_code == 201, response.text[:500]
    job = response.json()
    # The training process resolves the stored config by the same rules, with the worker's FORGE_MODEL_DIRS.
    spec = JobSpec(
        job["id"],
        job["config"],
        str(settings.runs_dir / job["id"]),
        str(settings.resolved_project_dir),
        str(settings.cache_dir),
        model_dirs=[str(d) for d in settings.model_dirs],
    )
    assert Setup.of(spec).model_path == str(tiny_model_dir.resolve())
