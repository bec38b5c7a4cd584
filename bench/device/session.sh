#!/usr/bin/env bash
# One GPU session's measurements, ONE AT A TIME: run side by side, the compiles and llama.cpp's spinning threads
# fight over the CPU and no figure is clean (docs/benchmarks.md, 2026-12-06). Name the parts, in order; gpu is
# the training and export tests, gpu-rest the other GPU tests, decode the generation's paths and a profile of its
# decode steps (270M), decode-4b the decoding ratio (the evaluate step's path, the old one, Unsloth's
# eager decode; about 12 minutes), throughput-270m and throughput-4b the worker's training tokens/s against Unsloth
# called directly (interleaved, 3 repeats each);
# the 4B bench alone takes about 25 minutes of a session's 30. Start it detached and watch it:
#   bash bench/device/start.sh bash bench/device/session.sh gpu 270m && bash bench/device/watch.sh 530  # carry .device
#   bash bench/device/watch.sh 540                                                                    # every next call
# Each bench starts from empty compile caches of its own (its cold job is cold after the tests); the 270M bench
# logs Dynamo's recompiles (FORGE_TORCH_LOGS=recompiles) into its worker.log.
set -x
cold_caches() {
  export TORCHINDUCTOR_CACHE_DIR=/tmp/cc-$1/inductor TRITON_CACHE_DIR=/tmp/cc-$1/triton
  rm -rf unsloth_compiled_cache
}
parts=("$@"); [ $# -gt 0 ] || parts=(gpu gpu-rest 4b 270m)
for part in "${parts[@]}"; do
  case $part in
    gpu) python -m pytest -m gpu -p no:cacheprovider -q -s tests/e2e/test_unsloth_gpu.py \
           -k "trains_with_unsloth or exports_lora" > /tmp/run/gpu.log 2>&1 ;;
    gpu-rest) python -m pytest -m gpu -p no:cacheprovider -q -s tests/e2e/test_unsloth_gpu.py \
           -k "not trains_with_unsloth and not exports_lora" > /tmp/run/gpu-rest.log 2>&1 ;;
    4b) (cold_caches 4b; python bench/job_phases.py --shape gemma3-4b --test-rows 40,200 \
          --jobs cold,restarted,warm --prune --work /tmp/phases4b --port 8767 --json /tmp/run/4b.json \
          > /tmp/run/4b.log 2>&1) ;;
    270m) (cold_caches 270m; FORGE_TORCH_LOGS=recompiles python bench/job_phases.py --shape gemma3-270m \
            --test-rows 40,200 --jobs cold,restarted,warm --prune --work /tmp/phases270m --port 8768 \
            --json /tmp/run/270m.json > /tmp/run/270m.log 2>&1) ;;
    decode) (cold_caches decode; python bench/eval_speed.py --shape gemma3-270m --variants after,eager --first eager \
              --repeats 2 --profile /tmp/decode-trace.json --json /tmp/run/decode.json > /tmp/run/decode.log 2>&1) ;;
    decode-4b) (cold_caches decode4b; python bench/eval_speed.py --shape gemma3-4b --first after \
              --variants after,before,eager --repeats 2 --json /tmp/run/decode-4b.json > /tmp/run/decode-4b.log 2>&1) ;;
    throughput-270m) python bench/train_throughput.py --shape gemma3-270m --stacks unsloth worker --jobs 1 \
              --repeats 3 --work /tmp/tp270m --json /tmp/run/throughput-270m.json > /tmp/run/throughput-270m.log 2>&1 ;;
    throughput-4b) python bench/train_throughput.py --shape gemma3-4b --batch 4 --tokens 1200 --stacks unsloth worker \
              --jobs 1 --repeats 3 --work /tmp/tp4b --json /tmp/run/throughput-4b.json > /tmp/run/throughput-4b.log 2>&1 ;;
    *) echo "unknown part $part (gpu, gpu-rest, 4b, 270m, decode, decode-4b, throughput-270m, throughput-4b)" ;;
  esac
done
