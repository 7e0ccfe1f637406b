#!/usr/bin/env bash
# Step 3: BERT-base pretraining on every GPU of the hostfile, under the restarting supervisor.
# A crashed rank or lost node restarts the job from its newest checkpoint; SIGTERM checkpoints and stops.
set -euo pipefail

WORK=${WORK:-/shared/kobert}
RUN=${RUN:-$WORK/runs/base}
CONFIG=${CONFIG:-configs/cluster-base.toml} # BERT-base, global batch 4096 on any number of GPUs, fp16, LAMB
HOSTFILE=${HOSTFILE:-hostfile}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}           # ranks per host
MAX_RESTARTS=${MAX_RESTARTS:-10}
PHASE2=${PHASE2:-}                          # set to 1 to switch to $WORK/shards-512 (configs/cluster-base-phase2.toml)
EXTRA_ARGS=${EXTRA_ARGS:-}                  # more --section.field=value overrides
KOBERT=${KOBERT:-kobert-pretrain}

# Horovod's fusion buffer and cycle time stay at Horovod's defaults until measured otherwise
# (scripts/gpu_check.sh). HOROVOD_HIERARCHICAL_ALLREDUCE is not set: Horovod only has a hierarchical
# NCCL allreduce when its controller is MPI, and `launch` runs Gloo. The trainer itself sets
# MXNET_SAFE_ACCUMULATION=1 (float32 accumulation in float16 reductions) and the GPU memory pool for
# float16 runs; settings given here win.

nodes=$("$KOBERT" hostfile "$HOSTFILE" | grep -c .)
args=(train --config "$CONFIG" --shards "$WORK/shards-128" --out "$RUN")
if [ -d "$WORK/shards-eval" ]; then
    args+=(--eval-shards "$WORK/shards-eval")
fi
if [ -n "$PHASE2" ]; then
    args+=(--train.phase2_shards="$WORK/shards-512")
fi
# shellcheck disable=SC2206  # EXTRA_ARGS is a list of words on purpose
args+=($EXTRA_ARGS)

"$KOBERT" launch -np $((nodes * GPUS_PER_NODE)) --hostfile "$HOSTFILE" --max-restarts "$MAX_RESTARTS" -- "${args[@]}"
