#!/usr/bin/env bash
# Step 4: release the newest checkpoint as a Hugging Face directory and ONNX, checked against MXNet.
set -euo pipefail

WORK=${WORK:-/shared/kobert}
RUN=${RUN:-$WORK/runs/base}
RELEASE=${RELEASE:-$WORK/release}
KOBERT=${KOBERT:-kobert-pretrain}

"$KOBERT" convert "$RUN" --out "$RELEASE" --onnx --vocab "$WORK/vocab"
