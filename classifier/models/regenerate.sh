#!/bin/sh
# Regenerate the shipped difficulty model and its routing-quality report:
#   classifier/models/regenerate.sh [BUILD_DIR]     (default: build)
# Trains difficulty.cdm on the train split of ../shared/data/routing with the
# options chosen by cross-validation (README.md), then evaluates it on the
# held-out split: eval.md, metrics.json, curve.tsv, curve.gp, curve.png (needs
# gnuplot) and the numbers block of README.md. Deterministic: the same data
# and build give the same model bytes. About a minute on 2 cores.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
DATA=${CASCADE_SHARED_DIR:-../shared}/data/routing/routellm_mmlu_gsm8k.train.jsonl
MODELS=classifier/models

"$BUILD/classifier/classifier-train" --data "$DATA" --out "$MODELS/difficulty.cdm" \
    --bits 18 --hidden 16 --ensemble 4 --l2-sparse 1e-3 --l2-dense 1e-3 --l2-hidden 3e-3 --iters 300 --seed 1
"$BUILD/classifier/classifier-eval" --data "$DATA" --model "$MODELS/difficulty.cdm" \
    --out "$MODELS" --readme "$MODELS/README.md"
