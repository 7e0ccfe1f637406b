#!/usr/bin/env bash
# `make demo`: the whole pipeline on the Korean demo corpus that ships with konlpy,
# using the tiny configs/debug.toml. Each stage is the command a user would type.
set -euo pipefail

KOBERT=${KOBERT:-kobert-pretrain}
DEMO_DIR=${DEMO_DIR:-runs/demo}
CONFIG=${CONFIG:-configs/debug.toml}

# A fresh demo every time: the stages refuse to overwrite earlier output.
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"

echo "== corpus: konlpy's constitution and bills, one sentence per line"
"$KOBERT" demo-corpus --out "$DEMO_DIR/raw.txt"

echo "== stage 0: clean, deduplicate and sentence-split the raw documents (kiwipiepy), with a data report"
"$KOBERT" prepare --config "$CONFIG" --input "$DEMO_DIR/raw.txt" --out "$DEMO_DIR/prepared" 2>&1 \
    | grep -E '^(prepare|kobert-pretrain)'
echo "   data report: $DEMO_DIR/prepared/report.html (open it in a browser)"
CORPUS="$DEMO_DIR/prepared/text"  # the parts, as --input of vocab and shards

echo "== stage 1: SentencePiece vocabulary"
"$KOBERT" vocab --config "$CONFIG" --input "$CORPUS" --out "$DEMO_DIR/vocab"
python_bin=$(dirname "$(command -v "$KOBERT")")/python  # the venv's interpreter
"$python_bin" - "$DEMO_DIR/vocab/spm.model" <<'PY'
import sys
import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
text = "대한민국의 주권은 국민에게 있다."
print(f"   {text} -> {sp.encode(text, out_type=str)}")
PY

echo "== stage 2: masked-LM / next-sentence shards (2 worker processes)"
"$KOBERT" shards --config "$CONFIG" --input "$CORPUS" --vocab "$DEMO_DIR/vocab" \
    --out "$DEMO_DIR/shards" --workers 2
"$KOBERT" inspect "$DEMO_DIR/shards" --num 1

echo "== stage 3: BERT pretraining, 2 Horovod processes (Gloo), debug model, under the restarting supervisor"
TRAIN_ARGS=(train --config "$CONFIG" --shards "$DEMO_DIR/shards" --out "$DEMO_DIR/run" --max-steps 60
            --train.lr=1e-2 --checkpoint.interval=10)
"$KOBERT" launch -np 2 -H localhost:2 --backoff 1 -- "${TRAIN_ARGS[@]}" > "$DEMO_DIR/launch.log" 2>&1 &
launcher=$!
# Kill one rank with SIGKILL once step 25 is logged: the supervisor restarts the job from its last checkpoint.
logged() {
    local n
    n=$(grep -c '"kind": "train"' "$DEMO_DIR/run/metrics.jsonl" 2>/dev/null || true)
    echo "${n:-0}"
}
until [ "$(logged)" -ge 5 ]; do
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.5
done
victim=$(pgrep -f -- "-m kobert_pretrain train --config $CONFIG --shards $DEMO_DIR/shards" | tail -1 || true)
if [ -n "$victim" ]; then
    echo "   killing rank process $victim with SIGKILL"
    kill -9 "$victim"
fi
wait "$launcher"
grep -E '^launch: (job|attempt [0-9]+:)' "$DEMO_DIR/launch.log" | cut -c1-120
sed -n 's/^\[0\]<stderr>://p' "$DEMO_DIR/launch.log" | grep -E '^(train:|step (20|30|60)/|checkpoint: .*(20|30|60)$)'

echo "== stage 4: Hugging Face + ONNX release, checked against the MXNet model"
"$KOBERT" convert "$DEMO_DIR/run" --out "$DEMO_DIR/release" --onnx 2>&1 | grep -E '^(convert|kobert-pretrain)'
"$python_bin" - "$DEMO_DIR/release" 2>/dev/null <<'PY'
import sys

from transformers import pipeline

fill = pipeline("fill-mask", model=sys.argv[1])
text = "대한민국의 주권은 [MASK]에게 있다."
top = ", ".join(f"{p['token_str']!r} {p['score']:.3f}" for p in fill(text)[:3])
print(f"   fill-mask: {text} -> {top}")
PY

echo "== stage 5: fine-tune the release on a labelled task made from the demo corpus, beside the same model from scratch"
# Which chapter of the Constitution is a sentence from (rights, assembly, executive, courts)? 162 / 55 / 55 sentences.
"$KOBERT" demo-task --out "$DEMO_DIR/task"
# The recipe is [finetune] of the config: 3 seeds, 8 epochs, batch 16, lr 1e-3, one torch thread.
"$KOBERT" finetune --config "$CONFIG" "$DEMO_DIR/release" --train "$DEMO_DIR/task/train.tsv" \
    --dev "$DEMO_DIR/task/dev.tsv" --test "$DEMO_DIR/task/test.tsv" --out "$DEMO_DIR/finetune" --from-scratch \
    2>&1 | grep -E '^(finetune|kobert-pretrain):'

echo "== done: outputs under $DEMO_DIR"
