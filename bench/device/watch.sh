#!/usr/bin/env bash
# Wait up to $1 seconds for /tmp/run/DONE, then bring back the logs and the jobs' metrics in one tarball.
end=$((SECONDS+${1:-500})); while [ $SECONDS -lt $end ] && [ ! -e /tmp/run/DONE ]; do sleep 10; done
cd /tmp && tar czf "$OUT/back.tgz" run/*.log run/*.json run/log phases*/*.log phases*/project/runs/*/metrics/*.json \
  phases*/project/runs/*/logs/training.log 2>/dev/null
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
[ -e /tmp/run/DONE ] && echo "=== DONE"
grep -h "JOB PHASES" /tmp/run/*.log 2>/dev/null | cut -c1-700
grep -h "^SUMMARY\|^PROFILE" /tmp/run/decode*.log 2>/dev/null | cut -c1-700
grep -h '"ratios"' /tmp/run/throughput*.log 2>/dev/null | cut -c1-700
tail -qn 2 /tmp/run/gpu*.log 2>/dev/null
