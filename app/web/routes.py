"""The dashboard: pages served by the API itself (no build step), and the HTML fragments they load.

The pages are shells that hold no job data, so they are open like `/docs`; everything about jobs comes from
the `/ui` fragments and the JSON API, both behind the same bearer token. The browser sends the token as a
header (htmx and fetch), never in a URL, and reads the event stream with fetch(), since EventSource cannot send
headers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from app import artifacts, jobs
from app.api.deps import SessionDep, SettingsDep, require_token
from app.api.schemas import JobRead
from app.models import TERMINAL_STATUSES, Job, JobStatus
from app.run_folder import RunFolder
from app.training_config import GGUF_TYPES, LOWER_IS_BETTER, TrainingConfig

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

# The keys of the spec's "Standard Config", in its order; the submit page starts from them with Forge's
# defaults (the embedded model rather than the spec's hub id, which a worker may not have cached).
SPEC_KEYS: dict[str, list[str]] = {
    "model": ["name", "max_seq_length", "dtype", "load_in_4bit"],
    "lora": [
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "use_gradient_checkpointing",
        "finetune_vision_layers",
        "finetune_language_layers",
        "finetune_attention_modules",
        "finetune_mlp_modules",
    ],
    "training": [
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "warmup_steps",
        "max_steps",
        "num_train_epochs",
        "learning_rate",
        "lr_scheduler_type",
        "optim",
        "weight_decay",
        "logging_steps",
        "seed",
        "output_dir",
    ],
    "dataset": ["path", "text_field", "chat_template"],
    "save": ["lora_path", "merged_path", "gguf_path", "gguf_quantization"],
}
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024

pages = APIRouter(include_in_schema=False)
fragments = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_token)])


def standard_config_yaml() -> str:
    defaults = TrainingConfig().model_dump(mode="json")
    spec = {section: {key: defaults[section][key] for key in keys} for section, keys in SPEC_KEYS.items()}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    return templates.TemplateResponse(request, template, {"auth_required": bool(settings.tokens), **context})


@pages.get("/", response_class=HTMLResponse)
def job_list_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", title="Jobs")


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", title=f"Job {job_id}", job_id=job_id, gguf_types=GGUF_TYPES)


@pages.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    return _page(request, "submit.html", title="Submit a job", standard_config=standard_config_yaml())


@pages.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    return _page(request, "datasets.html", title="Datasets")


# ---------------------------------------------------------------- fragments (behind the token)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=200, description="Jobs per page.")
    offset: int = Field(default=0, ge=0, le=2**63 - 1, description="Jobs to skip, newest first.")


def _duration(job: Job, now: datetime) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or (None if job.status in TERMINAL_STATUSES else now)
    return None if end is None else max(0.0, (end - job.started_at).total_seconds())


def _progress(job: Job) -> float | None:
    if job.status == JobStatus.succeeded:
        return 1.0
    if job.total_steps:
        return min(1.0, job.step / job.total_steps)
    return None


@fragments.get("/jobs", response_class=HTMLResponse)
def job_rows(request: Request, session: SessionDep, query: Annotated[ListQuery, Query()]) -> HTMLResponse:
    rows, total = jobs.page(session, limit=query.limit, offset=query.offset)
    now = datetime.now(UTC)
    items = [{"job": job, "duration": _duration(job, now), "progress": _progress(job)} for job in rows]
    return templates.TemplateResponse(
        request,
        "fragments/jobs.html",
        {"items": items, "total": total, "limit": query.limit, "offset": query.offset},
    )


def _metric_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    baseline = (result.get("baseline") or {}).get("metrics") or {}
    tuned = (result.get("evaluation") or {}).get("metrics") or {}
    rows = []
    for name in [*baseline, *(k for k in tuned if k not in baseline)]:
        before, after = baseline.get(name), tuned.get(name)
        better = None
        if isinstance(before, int | float) and isinstance(after, int | float) and before != after:
            better = (after < before) if name in LOWER_IS_BETTER else (after > before)
        rows.append({"name": name, "baseline": before, "tuned": after, "better": better})
    return rows


@fragments.get("/jobs/{job_id}/results", response_class=HTMLResponse)
def job_results(request: Request, job_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The metrics table, the gates and the artifacts: what changes when a phase ends."""
    job = jobs.get(session, job_id)
    read = JobRead.from_job(job)
    result = job.result or {}
    files = artifacts.listing(RunFolder.of(settings.runs_dir, job))
    return templates.TemplateResponse(
        request,
        "fragments/results.html",
        {
            "job": read,
            "metrics": _metric_rows(result),
            "examples": (result.get("evaluation") or result.get("baseline") or {}).get("examples"),
            "artifacts": files,
        },
    )


def _tail(path: Path, lines: int) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        text = handle.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


@fragments.get("/jobs/{job_id}/log", response_class=HTMLResponse)
def job_log(request: Request, job_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    job = jobs.get(session, job_id)
    lines = _tail(RunFolder.of(settings.runs_dir, job).log_file, LOG_TAIL_LINES)
    return templates.TemplateResponse(request, "fragments/log.html", {"lines": lines})


def _filters() -> dict[str, Any]:
    def size(n: int | None) -> str:
        if n is None:
            return ""
        value = float(n)
        for unit in ("B", "KB", "MB", "GB"):
            if value < 1000 or unit == "GB":
                return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
            value /= 1000
        return f"{n} B"

    def duration(seconds: float | None) -> str:
        if seconds is None:
            return ""
        s = round(seconds)
        h, rest = divmod(s, 3600)
        m, sec = divmod(rest, 60)
        return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")

    def when(value: datetime | None) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""

    def number(value: Any) -> str:
        if value is None:
            return "\u2013"  # an en dash: no value
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    return {"size": size, "duration": duration, "when": when, "number": number}


templates.env.filters.update(_filters())


def install(app: FastAPI) -> None:
    """Serves the dashboard at `/` from the app itself: pages, fragments and the vendored static files."""
    app.include_router(pages)
    app.include_router(fragments)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
