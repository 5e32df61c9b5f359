#!/bin/sh
# Regenerate the shipped difficulty model and its routing-quality report:
#   classifier/models/regenerate.sh [BUILD_DIR]     (default: build)
# Trains difficulty.cdm (format 2: the v2 recipe with its shipped options,
# trainer_recipe_default(2), chosen by grouped cross-validation, README.md) on
# every row of ../shared/data/routing except the held-out subjects, with the
# route-score distribution of 5 subject-grouped out-of-fold fits, then
# evaluates: eval.md, metrics.json, curve.tsv, curve.gp, curve.png (needs
# gnuplot) and the numbers block of README.md. Deterministic: the same data
# and build give the same model bytes.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
DATA=${CASCADE_SHARED_DIR:-../shared}/data/routing/routellm_mmlu_gsm8k.train.jsonl
MODELS=classifier/models

"$BUILD/classifier/classifier-train" --data "$DATA" --out "$MODELS/difficulty.cdm" \
    --recipe 2 --oof-folds 5 --quantiles 1001
"$BUILD/classifier/classifier-eval" --data "$DATA" --repeats 3 --folds 5 --jobs "${JOBS:-1}" \
    --out "$MODELS" --readme "$MODELS/README.md"
