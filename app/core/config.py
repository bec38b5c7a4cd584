"""One Settings object for the API and the worker, read from FORGE_* environment variables."""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_", env_file=".env", extra="ignore")

    project_dir: Path = Field(
        default_factory=Path.cwd,
        description="Data Factory project root holding data/, runs/ and .factory/.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job queue; default sqlite:///<project_dir>/.factory/forge.db.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every /api route needs `Authorization: Bearer <token>`.",
    )
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description='More accepted tokens, as a JSON list (FORGE_API_TOKENS=\'["a", "b"]\'), e.g. while rotating.',
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Origins allowed to call the API from a browser, e.g. ["http://localhost:5173"] for the Forge UI.',
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders besides the project where local models (model.name as a path) may live.",
    )
    max_request_bytes: int = Field(
        default=1 << 20, gt=0, description="Request bodies larger than this are refused with 413."
    )
    max_upload_bytes: int = Field(
        default=512 << 20, gt=0, description="Dataset uploads (POST /api/training/datasets) larger than this get 413."
    )
    max_upload_rows: int = Field(
        default=500_000, gt=0, description="Dataset uploads with more lines than this get 413 before validation."
    )
    host: str = Field(default="127.0.0.1", description="Where `python -m app` listens (0.0.0.0: every interface).")
    port: int = Field(default=8000, ge=1, le=65535, description="The port `python -m app` listens on.")
    allow_no_auth: bool = Field(
        default=False,
        description="Let `python -m app` listen beyond this machine without FORGE_API_TOKEN (anyone reaching the "
        "port can train and read every artifact).",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "forge-trainer",
        description="Where the embedded model is converted once and kept.",
    )
    worker_poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for jobs.")
    worker_keep_warm_seconds: float = Field(
        default=600.0,
        ge=0,
        description="Keep the training process (imports, compiled kernels, the loaded model) for the next job this "
        "long; 0: a new one per job.",
    )
    worker_preload: str | None = Field(
        default=None,
        description="Load and LoRA-wrap this model when the worker starts and keep one ready while idle: a model "
        "name as in model.name, or a job config file (.json/.yaml) whose model and lora sections jobs use.",
    )
    worker_start_ahead: bool | None = Field(
        default=None,
        description="Start the training process and its imports (Unsloth or transformers, about 25 s on a GPU "
        "worker) when the worker starts, not when its first job comes; kept like a warm process. Default: on where "
        "the 'auto' backend is Unsloth (the gpu extra and an NVIDIA GPU).",
    )
    torch_logs: str | None = Field(
        default=None,
        description="torch's TORCH_LOGS for the training process (e.g. recompiles,graph_breaks: why Unsloth's "
        "compiled layers compile again), applied after the backend's import: Unsloth silences torch's logs.",
    )
    llama_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads llama.cpp quantizes and checks GGUF files with; null: the cores the worker may "
        "use that are idle when the step starts (llama.cpp's threads wait for each other by spinning, and 2 threads "
        "on 2 cores with one busy ran 1.8x slower than 1: docs/benchmarks.md).",
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="A running job whose worker stops renewing it this long is failed."
    )
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="How often a worker renews its lease and looks for a cancel request."
    )
    worker_id: str | None = Field(
        default=None,
        max_length=128,
        description="This worker's name in GET /api/training/workers and on the jobs it claims; default <host>:<pid>.",
    )
    worker_gpus: Annotated[list[int] | None, NoDecode] = Field(
        default=None,
        description="The GPUs this worker trains on, e.g. 0,1 (several workers on one host split them); default "
        "every GPU it sees, none on a CPU.",
    )
    cancel_grace_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a cancelled job may take to finish its step before it is killed.",
    )
    events_keepalive_seconds: float = Field(
        default=15.0, gt=0, description="An event stream with nothing new sends a keep-alive comment this often."
    )

    @field_validator("worker_gpus", mode="before")
    @classmethod
    def _gpu_list(cls, value: object) -> object:
        """FORGE_WORKER_GPUS=0,1 as the CUDA_VISIBLE_DEVICES form is written (a JSON list works too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> Settings:
        # A worker must renew several times per lease: one late heartbeat (a slow disk, a busy database) must not
        # hand its job to another worker while it still trains.
        if self.heartbeat_seconds > self.lease_seconds / 3:
            raise ValueError(
                f"FORGE_HEARTBEAT_SECONDS={self.heartbeat_seconds:g} must be at most a third of "
                f"FORGE_LEASE_SECONDS={self.lease_seconds:g}, so a worker renews its lease at least 3 times before it "
                f"expires; lower the heartbeat or raise the lease to {3 * self.heartbeat_seconds:g} s or more"
            )
        return self

    def check_serving(self) -> None:
        """Refuse to serve beyond loopback with auth off (an empty FORGE_API_TOKEN is off) unless told to."""
        if self.tokens or self.allow_no_auth:
            return
        try:
            loopback = ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback:
            raise ValueError(
                f"FORGE_HOST={self.host} serves the API beyond this machine with no FORGE_API_TOKEN, so anyone who "
                "reaches the port could train and download every artifact; set FORGE_API_TOKEN, listen on "
                "127.0.0.1, or set FORGE_ALLOW_NO_AUTH=1 if something in front of it authenticates"
            )

    @property
    def tokens(self) -> list[bytes]:
        every = ([self.api_token] if self.api_token else []) + list(self.api_tokens)
        return [token.get_secret_value().encode() for token in every if token.get_secret_value()]

    @property
    def resolved_project_dir(self) -> Path:
        return self.project_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_project_dir / '.factory' / 'forge.db'}"

    @property
    def runs_dir(self) -> Path:
        return self.resolved_project_dir / "runs"

    @property
    def status_file(self) -> Path:
        return self.resolved_project_dir / ".factory" / "training-status.json"


@lru_cache
def get_settings() -> Settings:
    return Settings()
