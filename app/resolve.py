"""What a validated training config points at: the model (embedded, a local folder or a hub id), the dataset,
validation, test and glossary files, and the chat template.

One resolver, used by the API when a job is submitted and by the worker when it sets the job up, so the two
can never disagree about a path. Every path stays inside the project (models also inside FORGE_MODEL_DIRS),
symlinks followed; whatever is wrong is an InvalidInput naming the config key.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.core.errors import InvalidInput
from app.datasets import templates
from app.datasets.templates import ChatTemplate
from app.files import expand_home
from app.training_config import EMBEDDED_MODEL, TrainingConfig


def is_path(name: str) -> bool:
    """Whether a model name is written as a path rather than a hub id (`name` or `owner/name`).

    The one rule: a name starting with `/`, `.` or `~`, or with a backslash or more than one `/`, can only be a
    path; a missing path is an error, never a hub id to download.
    """
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


@dataclass(frozen=True)
class ModelSource:
    """Where a job's base model comes from."""

    name: str  # model.name as configured
    kind: Literal["embedded", "folder", "hub"]
    folder: Path | None = None  # kind folder: the model folder (config.json inside)
    hub_id: str | None = None  # kind hub: loaded from this machine's Hugging Face cache

    def load_path(self, cache_dir: Path) -> str:
        """What transformers/Unsloth load: the folder, the hub id, or the embedded model converted once."""
        if self.kind == "embedded":
            from app import embedded

            return str(embedded.model_dir(cache_dir))
        return str(self.folder) if self.folder is not None else str(self.hub_id)


@dataclass(frozen=True)
class Resolved:
    """Everything a config points at, checked to exist."""

    project: Path
    model: ModelSource
    dataset: Path
    val: Path | None  # the validation file ("auto" resolved); None: no evaluation loss
    test: Path | None  # the test split, when the baseline or evaluate step or a GGUF check scores it
    glossary: Path | None
    template: ChatTemplate

    def data_files(self) -> list[tuple[str, Path, str]]:
        """(config key, path, project-relative name) of the training file and of the validation file, if any."""
        chosen = [("dataset.path", self.dataset, self.shown(self.dataset))]
        if self.val is not None:
            chosen.append(("dataset.val_path", self.val, self.shown(self.val)))
        return chosen

    def shown(self, path: Path) -> str:
        """A path as people see it: relative to the project."""
        return str(path.relative_to(self.project)) if path.is_relative_to(self.project) else str(path)


def roots(project: Path, model_dirs: Sequence[Path] = ()) -> list[Path]:
    """The project, then FORGE_MODEL_DIRS: the folders a job's model may be read from."""
    return [project.resolve(), *(expand_home(str(d)).resolve() for d in model_dirs)]


def _invalid_path(param: str, value: str, exc: OSError) -> InvalidInput:
    reason = "a name in it is too long" if exc.errno == errno.ENAMETOOLONG else exc.strerror or type(exc).__name__
    return InvalidInput(
        f"{param} {value[:200]!r}{'...' if len(value) > 200 else ''} is not a usable path ({reason}); "
        "give a shorter path relative to the project",
        code="path_invalid",
        param=param,
    )


NAME_MAX, PATH_MAX = 255, 4096  # Linux's longest file name and path, in bytes


def _fits(value: str, param: str) -> None:
    """Refuse a name no filesystem here can hold, whether or not its folders exist (a missing `models/` must not
    let a 300-character name through as a hub id)."""
    parts = value.replace("\\", "/").split("/")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= PATH_MAX or any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in parts):
        raise _invalid_path(param, value, OSError(errno.ENAMETOOLONG, "File name too long"))


def confined(value: str, param: str, inside: Sequence[Path], base: Path | None = None) -> Path:
    """`value` resolved (symlinks followed) against `base` (default: the first root); it must land inside one
    of the roots `inside`."""
    if "\x00" in value:
        raise InvalidInput(f"{param} contains a NUL character; give a plain path", code="path_invalid", param=param)
    _fits(value, param)
    path = expand_home(value)
    try:
        resolved = (path if path.is_absolute() else (base or inside[0]) / path).resolve()
        resolved.exists()  # an over-long name fails here, not later in a caller's is_file()
    except OSError as exc:
        raise _invalid_path(param, value, exc) from None
    if not any(resolved.is_relative_to(root) for root in inside):
        where = "the project directory" if len(inside) == 1 else "the project and FORGE_MODEL_DIRS"
        raise InvalidInput(
            f"{param} {value!r} resolves to {resolved}, outside {where} ({', '.join(map(str, inside))}); "
            "use a path inside it",
            code="path_outside_project",
            param=param,
        )
    return resolved


def file_path(value: str, param: str, project: Path) -> Path:
    """Where a file the config names is, inside the project; it may not exist.

    The name is judged as written, before pathlib drops a trailing `/` or `/.`: the system would open
    `train.jsonl/` as a folder, so it is refused rather than read as `train.jsonl`.
    """
    if value.replace("\\", "/").rsplit("/", 1)[-1] in ("", ".", ".."):
        raise InvalidInput(
            f"{param} {value!r} ends with a slash (or a `.` or `..` part), so it names a folder; give the file's "
            "path without it",
            code="path_invalid",
            param=param,
        )
    return confined(value, param, [project])


def existing_file(value: str, param: str, project: Path, code: str, advice: str) -> Path:
    """A file the config names, inside the project; `code` and `advice` say what to do when it is missing."""
    path = file_path(value, param, project)
    if not path.is_file():
        raise InvalidInput(f"{param} {value!r} does not exist (looked for {path}); {advice}", code=code, param=param)
    return path


def model_source(name: str, project: Path, model_dirs: Sequence[Path] = (), param: str = "model.name") -> ModelSource:
    """The embedded model, a model folder (absolute, or relative to the project or to a FORGE_MODEL_DIRS
    folder), or a hub id. `param` names the input in errors: `model.name` in a config, a route's own parameter
    (the datasets listing's and upload's `model`) elsewhere."""
    if name.startswith("embedded:"):
        if name != EMBEDDED_MODEL:
            raise InvalidInput(
                f"{param} {name!r}: the only embedded model is {EMBEDDED_MODEL!r}",
                code="model_not_found",
                param=param,
            )
        return ModelSource(name, "embedded")
    _fits(name, param)
    allowed = roots(project, model_dirs)
    path = expand_home(name)
    bases = [allowed[0]] if path.is_absolute() else allowed
    for base in bases:
        try:
            candidate = (path if path.is_absolute() else base / path).resolve()
            found = candidate.exists()
        except OSError as exc:
            raise _invalid_path(param, name, exc) from None
        if found:
            folder = confined(name, param, allowed, base)
            if not (folder / "config.json").is_file():
                raise InvalidInput(
                    f"{param} {name!r} is not a model folder (no config.json in {folder})",
                    code="model_not_found",
                    param=param,
                )
            return ModelSource(name, "folder", folder=folder)
    if is_path(name):
        raise InvalidInput(
            f"{param} {name!r} looks like a path but there is no such folder in the project or FORGE_MODEL_DIRS "
            f"({', '.join(map(str, allowed))}); give an existing model folder, a hub id, or {EMBEDDED_MODEL!r}",
            code="model_not_found",
            param=param,
        )
    return ModelSource(name, "hub", hub_id=name)


def template_for(config: TrainingConfig, model: ModelSource) -> ChatTemplate:
    """dataset.chat_template, or the one the model's name or folder tells."""
    name = config.dataset.chat_template or templates.infer(config.model.name, model.folder)
    if name is None:
        raise InvalidInput(
            f"cannot tell which chat template model {config.model.name!r} uses; set dataset.chat_template to one "
            f"of {', '.join(templates.NAMES)}",
            code="chat_template_unknown",
            param="dataset.chat_template",
        )
    return templates.TEMPLATES[name]


def _val_file(config: TrainingConfig, project: Path, train: Path) -> Path | None:
    val_path = config.dataset.val_path
    if val_path is None:
        return None
    if val_path == "auto":
        beside = train.parent / "val.jsonl"
        return beside if beside.is_file() and beside != train else None
    return existing_file(
        val_path,
        "dataset.val_path",
        project,
        "dataset_not_found",
        'give an existing JSONL, "auto" (the val.jsonl beside dataset.path, if any) or null for no evaluation',
    )


def _test_file(config: TrainingConfig, project: Path) -> Path | None:
    settings = config.evaluation
    if settings.baseline or settings.evaluate:
        return existing_file(
            settings.test_path,
            "evaluation.test_path",
            project,
            "test_set_not_found",
            "run Phase 3 (split) first, or set evaluation.baseline and evaluation.evaluate to false",
        )
    if config.save.gguf_types:  # the GGUF check scores the test split when there is one
        path = file_path(settings.test_path, "evaluation.test_path", project)
        return path if path.is_file() else None
    return None


def data_files(config: TrainingConfig, project: Path) -> list[tuple[str, Path, str]]:
    """Only the training and validation files: (config key, path, project-relative name) of each."""
    project = project.resolve()
    train = _train_file(config, project)
    val = _val_file(config, project, train)
    shown = [
        (key, path, str(path.relative_to(project)))
        for key, path in (("dataset.path", train), ("dataset.val_path", val))
        if path
    ]
    return shown


def _train_file(config: TrainingConfig, project: Path) -> Path:
    return existing_file(
        config.dataset.path,
        "dataset.path",
        project,
        "dataset_not_found",
        "run Phase 3 (split) first, upload a file with POST /api/training/datasets, or give a JSONL path "
        "relative to the project",
    )


def resolve(config: TrainingConfig, *, project: Path, model_dirs: Sequence[Path] = ()) -> Resolved:
    """Everything `config` points at, or InvalidInput naming the first key at fault."""
    project = project.resolve()
    dataset = _train_file(config, project)
    val = _val_file(config, project, dataset)
    if config.training.select_checkpoint == "best" and val is None:
        raise InvalidInput(
            "training.select_checkpoint 'best' scores checkpoints on the validation split, and this job has none: "
            "set dataset.val_path to a validation JSONL (or 'auto' with a val.jsonl beside dataset.path), or set "
            "training.select_checkpoint to 'last'",
            code="validation_split_missing",
            param="training.select_checkpoint",
        )
    test = _test_file(config, project)
    glossary_path = config.evaluation.glossary_path
    glossary = (
        existing_file(glossary_path, "evaluation.glossary_path", project, "glossary_not_found", "or set it to null")
        if glossary_path is not None
        else None
    )
    model = model_source(config.model.name, project, model_dirs)
    template = template_for(config, model)
    return Resolved(project, model, dataset, val, test, glossary, template)
