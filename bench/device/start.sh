#!/usr/bin/env bash
# The GPU machine (the device tool): the package kit .device/site.tgz from
# `../shared/device/make-site.sh .device/site.tgz psutil==7.2.2` (llama.cpp's thread count reads idle cores) and the
# embedded tokenizer .device/cache.tgz travel as carried paths; see ../shared/device/README.md.
# Unpack the kit and start "$@" detached; its log goes to /tmp/run/log, /tmp/run/DONE marks its end.
set -e
mkdir -p /tmp/site /tmp/fc /tmp/run
[ -e /tmp/site/.unpacked ] || { tar xzf .device/site.tgz -C /tmp/site && touch /tmp/site/.unpacked; }
tar xzf .device/cache.tgz -C /tmp/fc
cat > /tmp/run/env.sh <<ENV
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FORGE_CACHE_DIR=/tmp/fc
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor TRITON_CACHE_DIR=/tmp/triton PATH=/opt/torch/.venv/bin:\$PATH
cd $PWD
ENV
rm -f /tmp/run/DONE
setsid nohup bash -c "source /tmp/run/env.sh; $* > /tmp/run/log 2>&1; touch /tmp/run/DONE" > /dev/null 2>&1 < /dev/null &
echo started
