# One image for both services: `api` serves HTTP, `worker` trains (see docker-compose.yml).
# The GPU build (default) installs the `gpu` extra (Unsloth, bitsandbytes) on a CUDA base image.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG EXTRAS=gpu
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FORGE_PROJECT_DIR=/project \
    FORGE_CACHE_DIR=/cache \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton \
    HF_HOME=/cache/huggingface

WORKDIR /srv/forge
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
COPY worker ./worker
# Versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]"

VOLUME ["/project", "/cache"]
EXPOSE 8000
CMD ["uvicorn", "--factory", "app.main:app_factory", "--host", "0.0.0.0", "--port", "8000"]
