"""/api/training/datasets: validate a dataset, upload one (optionally splitting it), list them. Thin routes.

The routes are plain `def`s: validating a large file runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile, status
from pydantic import BaseModel, Field

from app.api.deps import SettingsDep, error_responses, require_token, resolve_config
from app.api.yaml_body import YAMLBodyRoute
from app.core.errors import Conflict, TooLarge
from app.datasets import job_data, store, templates, tokenizers
from app.datasets.validation import Report, Rules, validate_files
from app.resolve import model_source, template_for
from app.training_config import EMBEDDED_MODEL, TrainingConfig

router = APIRouter(
    prefix="/api/training/datasets",
    tags=["datasets"],
    dependencies=[Depends(require_token)],
    route_class=YAMLBodyRoute,
    responses=error_responses(
        e400="The body is not UTF-8 JSON (or YAML)",
        e401="No token, or a wrong one (when the server has FORGE_API_TOKEN)",
        e413="The request body is over its size limit",
        e422="Invalid input; each problem is named in `details`",
    ),
)


@router.post("/validate", response_model=Report, summary="Validate a config's dataset files without training")
def validate(config: TrainingConfig, settings: SettingsDep) -> Report:
    """Runs the checks a job submission runs on `dataset.path` (and the validation file): every row, and the
    length after templating when the model's tokenizer is on this server. `ok` says whether a job would start."""
    return job_data.validate(config, resolve_config(settings, config), settings.cache_dir).report


class Uploaded(BaseModel):
    dataset: store.DatasetInfo
    report: Report
    splits: dict[str, str] | None = Field(
        description="Project-relative paths of the train, val and test splits written, if a split was asked for."
    )
    split_rows: dict[str, int] | None = Field(description="Rows in each split.")


@router.post(
    "",
    response_model=Uploaded,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a JSONL dataset",
    responses=error_responses(
        e409="A dataset of that name, or the splits, exist; send overwrite=true",
        e411="No Content-Length header",
        e413="The upload is over FORGE_MAX_UPLOAD_BYTES or FORGE_MAX_UPLOAD_ROWS",
    ),
)
def upload(
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL in any supported format (see the README).")],
    name: Annotated[
        str | None, Form(max_length=200, description="File name under data/uploads/; default: the upload's.")
    ] = None,
    split: Annotated[
        str | None,
        Form(
            max_length=100,
            description="train,val,test shares, e.g. 0.8,0.1,0.1: also write data/splits/{train,val,test}.jsonl "
            "from the valid rows, shuffled with `seed`.",
        ),
    ] = None,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1, description="Shuffle seed of the split.")] = 3407,
    overwrite: Annotated[bool, Form(description="Replace an upload of the same name, and existing splits.")] = False,
    format: Annotated[
        Literal["auto", "sharegpt", "sharegpt-from-value", "openai", "alpaca"], Form(description="Row format.")
    ] = "auto",
    model: Annotated[str, Form(min_length=1, max_length=500, description="Model to measure lengths for.")] = (
        EMBEDDED_MODEL
    ),
    chat_template: Annotated[
        Literal["gemma-3", "llama-3.1", "mistral", "qwen-2.5"] | None, Form(description="Default: from the model.")
    ] = None,
    max_seq_length: Annotated[int, Form(ge=16, le=131072)] = 2048,
    invalid_rows: Annotated[Literal["reject", "drop"], Form()] = "reject",
    max_dropped_fraction: Annotated[float, Form(ge=0.0, le=1.0)] = 0.05,
) -> Uploaded:
    """Stores the file under data/uploads/ (streamed to disk, at most FORGE_MAX_UPLOAD_BYTES; sent with a
    Content-Length), validates it as a job would, and with `split` writes the three splits. A file that fails
    validation is not kept (422 with the report)."""
    project = settings.resolved_project_dir
    filename = store.upload_name(name or Path(file.filename or "").name or "upload.jsonl")
    target = project / store.UPLOADS / filename
    ratios = store.parse_ratios(split) if split is not None else None
    if target.exists() and not overwrite:
        raise Conflict(f"{target.relative_to(project)} exists; send overwrite=true to replace it", code="exists")
    if ratios and not overwrite and any((project / store.SPLITS / f"{n}.jsonl").exists() for n in store.SPLIT_NAMES):
        raise Conflict(
            f"{store.SPLITS}/ already holds splits; send overwrite=true to replace them", code="splits_exist"
        )
    config = TrainingConfig.model_validate(
        {
            "model": {"name": model, "max_seq_length": max_seq_length},
            "dataset": {
                "path": str(target.relative_to(project)),
                "val_path": None,
                "format": format,
                "chat_template": chat_template,
                "invalid_rows": invalid_rows,
                "max_dropped_fraction": max_dropped_fraction,
            },
        }
    )
    source = model_source(model, project, settings.model_dirs, param="model")  # the form field
    template = template_for(config, source).name
    model_dirs = list(settings.model_dirs)
    shown = str(target.relative_to(project))
    # Stored under a hidden name of its own first: a file that fails validation is never in data/ under its name.
    staging = store.stage(file.file, target)
    checked: job_data.UploadChecked | None = None
    try:
        lines = store.count_lines(staging)
        if lines > settings.max_upload_rows:
            raise TooLarge(
                f"the upload has {lines} lines, over the {settings.max_upload_rows}-row limit (FORGE_MAX_UPLOAD_ROWS); "
                "split it into smaller files",
                code="too_many_rows",
                param="file",
            )
        dirs = (project, model_dirs, settings.cache_dir)
        split_with = (ratios, seed) if ratios else None
        checked = job_data.in_child(
            job_data.upload, staging, shown, Rules.of(config), model, template, dirs, split_with
        )
        if not checked.report.ok:
            raise job_data.as_error(checked.report)
        store.publish(staging, target, overwrite)
        written = store.publish_splits(project, checked.splits) if checked.splits else None
    finally:
        staging.unlink(missing_ok=True)
        for leftover in (checked.splits or {}).values() if checked else ():
            leftover.unlink(missing_ok=True)
    report = checked.report
    stat = target.stat()
    return Uploaded(
        dataset=store.info(target, project, stat, report.files[0]),
        report=report,
        splits=written,
        split_rows=checked.split_rows,
    )


class DatasetList(BaseModel):
    items: list[store.DatasetInfo]
    chat_template: str | None = Field(description="The template token counts were measured with.")
    note: str | None = Field(description="Why token counts are missing, if they are.")


@router.get("", response_model=DatasetList, summary="List the project's JSONL datasets with row and token counts")
def list_datasets(
    settings: SettingsDep,
    model: Annotated[str, Query(min_length=1, max_length=500, description="Model to count tokens for.")] = (
        EMBEDDED_MODEL
    ),
    chat_template: Annotated[
        Literal["gemma-3", "llama-3.1", "mistral", "qwen-2.5"] | None, Query(description="Default: from the model.")
    ] = None,
) -> DatasetList:
    """Every .jsonl under data/ (uploads, splits, ...): format, rows, valid rows, and tokens after templating
    (untruncated) when the model's tokenizer is on this server. Counts are kept until a file changes."""
    project = settings.resolved_project_dir
    source = model_source(model, project, settings.model_dirs, param="query.model")  # as FastAPI names it
    name = chat_template or templates.infer(model, source.folder)
    template, lengths = None, None
    note: str | None = f"cannot tell model {model!r}'s chat template; pass chat_template"
    if name is not None:
        measured = job_data.measure(source, templates.TEMPLATES[name], settings.cache_dir)
        template, lengths, note = measured.template, measured.lengths, measured.note

    def count(path: Path, stat: Any) -> store.DatasetInfo:
        # Counting only: every row is looked at whatever the policy; lengths are not capped.
        rules = Rules(invalid_rows="drop", max_seq_length=1 << 30)
        with tokenizers.LOCK:
            report = validate_files([("dataset.path", path, path.name)], rules, template, lengths).report
        return store.info(path, project, stat, report.files[0])

    items = [
        store.cached(path, model if lengths else "", name if lengths else None, count)
        for path in store.jsonl_files(project)
    ]
    return DatasetList(items=items, chat_template=name if lengths else None, note=None if lengths else note)
