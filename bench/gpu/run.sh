#!/usr/bin/env bash
# bench/gpu/run.sh: issue 14's one GPU check. A person with a GPU machine runs
# it once; it runs every CUDA test and the GPU benchmarks in about five
# minutes on one H100/H200, and writes its results after each stage, so a run
# that is cut short still reports.
#
#   bench/gpu/run.sh [--out DIR] [--models DIR] [--bin DIR] [--build DIR]
#                    [--work DIR] [--budget SECONDS] [--no-bench]
#   bench/gpu/run.sh --prepare DIR     (here: build and assemble what to carry)
#
# Binaries: --bin DIR (the carried ones --prepare made), else the build in
#   --build DIR (default build-gpu), configured with CASCADE_NATIVE_ONLY and
#   built when missing (that needs cmake, gcc, nvcc and jansson's headers).
# Models: --models DIR (default: the carried one beside --bin, else
#   ../shared/models) holds stories260K/ and, optionally, v3-tiny-bf16/ and
#   v3-tiny-fp8/ (made with cascade-gen-v3 into --work when absent). The
#   DeepSeek-Coder-1.3B- and DeepSeek-LLM-7B-shaped random BF16 models (2.7
#   and 13.8 GB) are generated into --work (default $TMPDIR/cascade-gpu), in
#   the background while the tests run; they are kept for a second run.
# Results, in --out (default $OUT when set, else ./gpu-results):
#   results.jsonl  one JSON object per stage ("stage", "status", "seconds",
#                  ...) and per benchmark row ("bench": ...);
#   summary.txt    the same as a table, with the device, rewritten after
#                  every stage;
#   log.txt        every command and its output.
#
# Stages: probe (is there a GPU, and a CUDA build), build, test_backend_ops
# (every op of every backend against the reference), logprobs_* (cascade-score
# --device cuda:0 against cascade-score on the CPU, judged by
# tests/reference/compare_logprobs.py at the model's dtype tolerance), greedy_*
# (stories260K: each backend's top-1 at every position reproduces the golden
# greedy output, bench/gpu/check.py), then the benchmarks (bench_gpu_decode on
# the 1.3B and 7B shapes, bench_gpu_v3 on stacked V3 layers).
#
# Without a GPU it says so first (the probe's reason), runs the CPU side (the
# CPU backend's tests, the CPU reference runs, the greedy check on the CPU,
# smoke runs of the benchmark programs on tiny inputs) and exits 0 when that
# passed. With a GPU it exits 1 when any stage failed.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT_DIR=${OUT:-$PWD/gpu-results}
MODELS="" BIN="" BUILD="$ROOT/build-gpu" PREPARE="" NO_BENCH=0
WORK=${CASCADE_GPU_WORK:-${TMPDIR:-/tmp}/cascade-gpu}
BUDGET=${CASCADE_GPU_BUDGET_S:-290}
# Log-probability tolerances per dtype (compare_logprobs.py --tol); the FP8
# one allows for the tensor-core GEMM quantizing activations to FP8.
TOL_F32=${TOL_F32:-1e-3} TOL_BF16=${TOL_BF16:-2e-2} TOL_FP8=${TOL_FP8:-5e-2}

usage() {
    sed -n '5,7p' "$0" | sed 's/^# //' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --prepare) PREPARE=$2; shift 2 ;;
    --no-bench) NO_BENCH=1; shift ;;
    *) usage ;;
    esac
done
NPROC=$(nproc 2>/dev/null || echo 2)
T0=$(date +%s)

# ---- --prepare: build here (CASCADE_NATIVE_ONLY) and gather what a bare GPU
# machine needs into one folder of at most 64 MiB: bin/ (stripped), models/.
TOOLS="cascade-score cascade-gen-model cascade-gen-v3 cascade-convert-llama2c test_backend_ops"
BENCHES="bench_gpu_decode bench_gpu_v3"
if [ -n "$PREPARE" ]; then
    set -e
    cmake -S "$ROOT" -B "$BUILD" -DCASCADE_NATIVE_ONLY=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD" -j"$NPROC" --target $TOOLS $BENCHES
    rm -rf "$PREPARE"
    mkdir -p "$PREPARE/bin" "$PREPARE/models"
    for t in $TOOLS; do cp "$BUILD/engines/native/$t" "$PREPARE/bin/"; done
    for t in $BENCHES; do cp "$BUILD/bench/gpu/$t" "$PREPARE/bin/"; done
    strip "$PREPARE"/bin/* 2>/dev/null || true
    cp -r "$ROOT/../shared/models/stories260K" "$PREPARE/models/"
    chmod -R u+w "$PREPARE/models"
    "$PREPARE/bin/cascade-gen-v3" --out "$PREPARE/models/v3-tiny-bf16" --preset tiny --dtype bf16
    "$PREPARE/bin/cascade-gen-v3" --out "$PREPARE/models/v3-tiny-fp8" --preset tiny --dtype fp8
    echo "libraries the binaries need:"
    ldd "$PREPARE/bin/cascade-score" | sed 's/^/  /'
    du -sh "$PREPARE"
    size=$(du -sk "$PREPARE" | cut -f1)
    [ "$size" -le 65536 ] || { echo "run.sh: $PREPARE is over 64 MiB" >&2; exit 1; }
    echo "carry it: run(command=\"bash bench/gpu/run.sh --bin ${PREPARE#$ROOT/}/bin --out \$OUT\", carry=[\"${PREPARE#$ROOT/}\"])"
    exit 0
fi

mkdir -p "$OUT_DIR" "$WORK"
RES=$OUT_DIR/results.jsonl SUM=$OUT_DIR/summary.txt LOG=$OUT_DIR/log.txt
: >"$RES"
: >"$LOG"
SUMMARY_ROWS=()
DEVICE_LINE="(not probed yet)"
FAILED=0

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
elapsed() { echo $(($(date +%s) - T0)); }

# A JSON string literal of $1.
jstr() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

write_summary() {
    {
        echo "Cascade GPU check (bench/gpu/run.sh), $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo "device: $DEVICE_LINE"
        echo "elapsed: $(elapsed) s of a ${BUDGET} s budget"
        printf '%-36s %-8s %7s  %s\n' stage status seconds note
        for r in "${SUMMARY_ROWS[@]}"; do echo "$r"; done
    } >"$SUM"
}

# record STAGE STATUS SECONDS NOTE [EXTRA_JSON_FIELDS]
record() {
    local extra=${5:-}
    printf '{"stage":%s,"status":%s,"seconds":%s,"note":%s%s}\n' "$(jstr "$1")" "$(jstr "$2")" "$3" \
        "$(jstr "$4")" "${extra:+,$extra}" >>"$RES"
    SUMMARY_ROWS+=("$(printf '%-36s %-8s %7s  %s' "$1" "$2" "$3" "$4")")
    case "$2" in fail | error | timeout) FAILED=1 ;; esac
    write_summary
    log "== $1: $2 ($3 s) $4"
}

# Seconds left in the budget, at most $1.
budget_for() {
    local left=$((BUDGET - $(elapsed)))
    [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# run_to FILE LIMIT CMD...: run with a time limit, output to FILE and the log.
# Returns the command's status (124 on timeout).
run_to() {
    local file=$1 limit=$2
    shift 2
    log "\$ $*"
    if [ "$limit" -le 0 ]; then
        echo "out of time budget" >"$file"
        return 124
    fi
    timeout --kill-after=5 "$limit" "$@" >"$file" 2>"$file.err"
    local rc=$?
    cat "$file.err" >>"$LOG"
    head -c 4000 "$file" >>"$LOG"
    echo >>"$LOG"
    return $rc
}

bin() {
    if [ -n "$BIN" ]; then echo "$BIN/$1"
    elif [ -x "$BUILD/engines/native/$1" ]; then echo "$BUILD/engines/native/$1"
    else echo "$BUILD/bench/gpu/$1"; fi
}

# ---- Stage: build, or the carried binaries ----
t=$(date +%s)
if [ -n "$BIN" ]; then
    missing=""
    for b in $TOOLS $BENCHES; do [ -x "$BIN/$b" ] || missing="$missing $b"; done
    if [ -n "$missing" ]; then
        record build fail 0 "carried binaries missing in $BIN:$missing"
    else
        record build carried 0 "binaries from $BIN"
    fi
    [ -z "$MODELS" ] && [ -d "$BIN/../models" ] && MODELS=$(cd "$BIN/../models" && pwd)
else
    if [ ! -x "$BUILD/bench/gpu/bench_gpu_decode" ] || [ ! -x "$BUILD/engines/native/cascade-score" ]; then
        if run_to "$WORK/configure.out" "$(budget_for 120)" cmake -S "$ROOT" -B "$BUILD" \
            -DCASCADE_NATIVE_ONLY=ON -DCMAKE_BUILD_TYPE=Release &&
            run_to "$WORK/build.out" "$(budget_for 240)" cmake --build "$BUILD" -j"$NPROC" \
                --target $TOOLS $BENCHES; then
            record build pass $(($(date +%s) - t)) "CASCADE_NATIVE_ONLY in $BUILD"
        else
            record build fail $(($(date +%s) - t)) "$(tail -n 3 "$WORK/configure.out.err" "$WORK/build.out" "$WORK/build.out.err" 2>/dev/null | grep -v '^==>' | tr '\n' ' ' | cut -c1-300)"
        fi
    else
        record build reused 0 "the build in $BUILD"
    fi
fi
[ -z "$MODELS" ] && MODELS=$ROOT/../shared/models

# ---- Stage: probe (a GPU, and a build with CUDA) ----
# The shared CUDA libraries the binaries link (cuBLAS, cuBLASLt, the runtime,
# NCCL) may sit outside the loader's path on the GPU machine: look in CUDA's
# folders and in Python's nvidia-* packages.
if ldd "$(bin cascade-score)" 2>/dev/null | grep -q 'not found'; then
    for lib in $(ldd "$(bin cascade-score)" | awk '/not found/ {print $1}'); do
        d=$(find /usr/local/cuda/lib64 /usr/local/cuda/targets /usr/lib /usr/local/lib /opt \
            -name "$lib" 2>/dev/null | head -n 1)
        [ -n "$d" ] && LD_LIBRARY_PATH=$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    done
    export LD_LIBRARY_PATH
    log "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
fi
ldd "$(bin cascade-score)" >>"$LOG" 2>&1
HAVE_GPU=0
GPU_WHY=""
run_to "$WORK/probe.out" 30 "$(bin bench_gpu_decode)" --probe
prc=$?
probe=$(cat "$WORK/probe.out" "$WORK/probe.out.err" 2>/dev/null | head -n 3 | tr '\n' ' ')
smi=""
command -v nvidia-smi >/dev/null 2>&1 &&
    smi=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)
if [ $prc -eq 0 ]; then
    HAVE_GPU=1
    DEVICE_LINE="${smi:-$probe} ($probe)"
    record probe pass 0 "$DEVICE_LINE"
else
    case $prc in
    3) GPU_WHY=$probe ;;
    4) GPU_WHY="$probe${smi:+; nvidia-smi sees: $smi}" ;;
    *) GPU_WHY="the probe failed (status $prc): $probe" ;;
    esac
    DEVICE_LINE="NO GPU: $GPU_WHY"
    log "##"
    log "## NO GPU FOUND: $GPU_WHY"
    log "## Only the CPU side runs; every GPU stage is marked skip."
    log "##"
    record probe no-gpu 0 "$GPU_WHY"
fi

# ---- The large random models, in the background ----
gen_dense() {   # gen_dense PRESET: into $WORK/PRESET unless already there
    local dir=$WORK/$1
    if [ -f "$dir/done" ]; then return 0; fi
    rm -rf "$dir"
    "$(bin cascade-gen-model)" --out "$dir" --preset "$1" >"$WORK/gen-$1.out" 2>&1 && touch "$dir/done"
}
gen_dense deepseek-coder-1.3b &
PID_13=$!
PID_7=""
if [ $HAVE_GPU = 1 ] && [ $NO_BENCH = 0 ]; then
    gen_dense deepseek-llm-7b &
    PID_7=$!
fi
T_GEN=$(date +%s)

# ---- Stage: every op of every backend ----
t=$(date +%s)
run_to "$WORK/backend_ops.out" "$(budget_for 120)" "$(bin test_backend_ops)"
rc=$?
note=$(grep -iE 'skip|fail|pass|cuda' "$WORK/backend_ops.out" "$WORK/backend_ops.out.err" 2>/dev/null | tail -n 3 | cut -d: -f2- | tr '\n' ' ' | cut -c1-300)
case $rc in
0) st=pass ;;
77) st=skip ;;
124 | 137) st=timeout ;;
*) st=fail ;;
esac
if [ $HAVE_GPU = 0 ] && [ $rc = 0 ]; then st=pass-cpu; note="CPU backend only ($GPU_WHY) $note"; fi
record test_backend_ops "$st" $(($(date +%s) - t)) "$note"

# ---- Log-probabilities: CUDA against the CPU ----
# tokens N V: N deterministic ids below V
tokens() { awk -v n="$1" -v v="$2" 'BEGIN { for (i = 0; i < n; i++) printf "%s%d", i ? "," : "", (i * 7919 + 13) % v }'; }
GREEDY_IDS=$(grep -v '^#' "$ROOT/bench/gpu/stories260K_greedy_ids.txt" | tr -s ' \n' ' ')

# logprobs NAME MODEL TOL TOKENS [cascade-score options...]
logprobs() {
    local name=$1 model=$2 tol=$3 toks=$4
    shift 4
    local t=$(date +%s) cpu=$WORK/$name.cpu.json gpu=$WORK/$name.cuda.json
    if [ ! -e "$model" ]; then
        record "logprobs_$name" fail 0 "model missing: $model"
        return
    fi
    if ! run_to "$cpu" "$(budget_for 120)" "$(bin cascade-score)" --model "$model" --tokens "$toks" \
        --threads "$NPROC" "$@"; then
        record "logprobs_$name" fail $(($(date +%s) - t)) "CPU cascade-score: $(head -c 200 "$cpu.err")"
        return
    fi
    if [ $HAVE_GPU = 0 ]; then
        record "logprobs_$name" skip $(($(date +%s) - t)) "CPU reference ran ($(echo "$toks" | tr ',' '\n' | wc -l) positions); no GPU: $GPU_WHY"
        return
    fi
    if ! run_to "$gpu" "$(budget_for 120)" "$(bin cascade-score)" --model "$model" --tokens "$toks" \
        --device cuda:0 "$@"; then
        record "logprobs_$name" fail $(($(date +%s) - t)) "CUDA cascade-score: $(head -c 200 "$gpu.err")"
        return
    fi
    local cmp
    cmp=$(python3 "$ROOT/tests/reference/compare_logprobs.py" "$cpu" "$gpu" --tol "$tol" 2>&1)
    local rc=$?
    log "$cmp"
    local last
    last=$(echo "$cmp" | tail -n 1)
    record "logprobs_$name" "$([ $rc = 0 ] && echo pass || echo fail)" $(($(date +%s) - t)) "$last" \
        "\"tol\":$tol,\"options\":$(jstr "$*")"
}

S260=$MODELS/stories260K
S260_TOKS="1,$(echo $GREEDY_IDS | tr ' ' ',' | cut -d, -f1-31)"
logprobs stories260K "$S260/stories260K.bin" "$TOL_F32" "$S260_TOKS" --prefill 16
logprobs stories260K_batched "$S260/stories260K.bin" "$TOL_F32" "$S260_TOKS" --prefill 8 --batch-with 3

# ---- Greedy stories260K: each backend's top-1 reproduces the golden output ----
# Scored on BOS + every greedy id but the last: row i must put the greedy
# id i first, which is what greedy decoding would then produce.
greedy() {   # greedy DEVICE_NAME [--device ...]
    local name=$1
    shift
    local t=$(date +%s) out=$WORK/greedy.$name.json
    local ids n
    n=$(echo $GREEDY_IDS | wc -w)
    ids="1,$(echo $GREEDY_IDS | tr ' ' '\n' | head -n $((n - 1)) | paste -sd, -)"
    if ! run_to "$out" "$(budget_for 60)" "$(bin cascade-score)" --model "$S260/stories260K.bin" \
        --tokens "$ids" "$@"; then
        record "greedy_stories260K_$name" fail $(($(date +%s) - t)) "cascade-score: $(head -c 200 "$out.err")"
        return
    fi
    local res rc
    res=$(python3 "$ROOT/bench/gpu/check.py" greedy --ids "$ROOT/bench/gpu/stories260K_greedy_ids.txt" \
        --logprobs "$out" --tokenizer "$S260/tok512.bin" --golden "$S260/reference_greedy_empty_prompt.txt")
    rc=$?
    log "$res"
    echo "$res" >>"$RES"
    record "greedy_stories260K_$name" "$([ $rc = 0 ] && echo pass || echo fail)" $(($(date +%s) - t)) \
        "$(echo "$res" | head -c 200)"
}
if [ -f "$S260/stories260K.bin" ]; then
    greedy cpu --threads "$NPROC"
    if [ $HAVE_GPU = 1 ]; then greedy cuda --device cuda:0; else record greedy_stories260K_cuda skip 0 "no GPU: $GPU_WHY"; fi
else
    record greedy_stories260K fail 0 "model missing: $S260"
fi

# ---- Tiny DeepSeek-V3 checkpoints, BF16 and FP8, both MLA paths ----
for dt in bf16 fp8; do
    v3=$MODELS/v3-tiny-$dt
    if [ ! -f "$v3/config.json" ]; then
        v3=$WORK/v3-tiny-$dt
        [ -f "$v3/config.json" ] || run_to "$WORK/gen-v3-$dt.out" 60 "$(bin cascade-gen-v3)" --out "$v3" \
            --preset tiny --dtype "$dt"
    fi
    tol=$TOL_BF16
    [ $dt = fp8 ] && tol=$TOL_FP8
    logprobs "v3_tiny_${dt}" "$v3" "$tol" "$(tokens 24 512)" --prefill 12
    logprobs "v3_tiny_${dt}_naive_batched" "$v3" "$tol" "$(tokens 24 512)" --prefill 6 --mla naive \
        --batch-with 3
done

# ---- The 1.3B-shaped random model ----
t=$(date +%s)
wait $PID_13
log "deepseek-coder-1.3b generated (waited $(($(date +%s) - t)) s): $(cat "$WORK/gen-deepseek-coder-1.3b.out")"
logprobs coder_1.3b_bf16 "$WORK/deepseek-coder-1.3b" "$TOL_BF16" "$(tokens 16 32256)" --prefill 8

# ---- Benchmarks ----
# bench NAME LIMIT CMD...: each JSON line the program prints goes to results.
bench() {
    local name=$1 limit=$2
    shift 2
    local t=$(date +%s) out=$WORK/$name.out
    run_to "$out" "$(budget_for "$limit")" "$@"
    local rc=$?
    grep '^{' "$out" >>"$RES"
    local st
    case $rc in 0) st=pass ;; 124 | 137) st=timeout ;; *) st=fail ;; esac
    grep -q '^no GPU found\|^no CUDA backend built' "$out" && st=skip
    record "$name" "$st" $(($(date +%s) - t)) "$(grep -v '^{' "$out" "$out.err" 2>/dev/null | tail -n 2 | cut -d: -f2- | tr '\n' ' ' | cut -c1-200)$(grep -c '^{' "$out") rows"
}
if [ $NO_BENCH = 1 ]; then
    record benchmarks skip 0 "--no-bench"
elif [ $HAVE_GPU = 1 ]; then
    bench bench_decode_coder_1.3b 90 "$(bin bench_gpu_decode)" --model "$WORK/deepseek-coder-1.3b" \
        --name deepseek-coder-1.3b --device cuda:0 --batch 1 --steps 64
    t=$(date +%s)
    wait $PID_7
    log "deepseek-llm-7b generated (waited $(($(date +%s) - t)) s, $(($(date +%s) - T_GEN)) s since the start): $(cat "$WORK/gen-deepseek-llm-7b.out")"
    bench bench_decode_llm_7b 150 "$(bin bench_gpu_decode)" --model "$WORK/deepseek-llm-7b" \
        --name deepseek-llm-7b --device cuda:0 --batch 1,2,4,8,16,32,64,128,256
    bench bench_v3_layers 150 "$(bin bench_gpu_v3)" --device cuda:0 --layers 4 --batch 1,32,256 \
        --ctx 1024 --steps 10
else
    # No GPU: the programs still run, on the CPU backend and tiny inputs, so
    # their code is exercised; these rows are no figures of issue 14.
    tiny=$WORK/tiny
    [ -f "$tiny/config.json" ] || "$(bin cascade-gen-model)" --out "$tiny" --preset tiny >/dev/null 2>&1
    record benchmarks skip 0 "no GPU: $GPU_WHY; CPU smoke runs of the programs follow (not figures)"
    bench smoke_cpu_bench_gpu_decode 60 "$(bin bench_gpu_decode)" --model "$tiny" --name tiny \
        --device cpu --batch 1,4 --prompt 8 --steps 4
    bench smoke_cpu_bench_gpu_v3 120 "$(bin bench_gpu_v3)" --device cpu --experts 16 --layers 1 \
        --batch 1,2 --ctx 16 --steps 2
fi

record done "$([ $FAILED = 0 ] && echo pass || echo fail)" "$(elapsed)" \
    "$([ $HAVE_GPU = 1 ] && echo "GPU run" || echo "NO GPU FOUND ($GPU_WHY): CPU side only")"
cat "$SUM"
[ $HAVE_GPU = 0 ] && [ $FAILED = 0 ] && exit 0
exit $FAILED
