#!/usr/bin/env bash
# One GPU session's measurements, ONE AT A TIME: run side by side, the compiles and llama.cpp's spinning threads
# fight over the CPU and no figure is clean (docs/benchmarks.md, 2026-12-06). Start it detached and watch it:
#   bash bench/device/start.sh bash bench/device/session.sh && bash bench/device/watch.sh 540   # carry .device
#   bash bench/device/watch.sh 540                                                             # every next call
set -x
python -m pytest -m gpu -p no:cacheprovider -q -s tests/e2e/test_unsloth_gpu.py \
  -k "trains_with_unsloth or exports_lora" > /tmp/run/gpu.log 2>&1
python bench/job_phases.py --shape gemma3-4b --test-rows 40,200 --jobs cold,restarted,warm --prune \
  --work /tmp/phases4b --port 8767 --json /tmp/run/4b.json > /tmp/run/4b.log 2>&1
python bench/job_phases.py --shape gemma3-270m --test-rows 40,200 --jobs cold,restarted,warm --prune \
  --work /tmp/phases270m --port 8768 --json /tmp/run/270m.json > /tmp/run/270m.log 2>&1
