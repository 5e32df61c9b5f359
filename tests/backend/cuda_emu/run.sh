#!/bin/sh
# tests/backend/cuda_emu/run.sh [work-dir]: the CUDA backend's DeepSeek-V3
# kernels (ops_cuda_fp8.cu, ops_cuda_mla.cu, ops_cuda_moe.cu and
# cuda_rows.cuh), run unchanged on the CPU through an emulation of CUDA's
# execution model, against every case of tests/backend/test_backend_ops.c.
#
# Why: a machine without a GPU cannot run the kernels, yet their index
# arithmetic, tiling, barriers and shuffles can still be checked. Each CTA
# runs its threads as cooperative fibers on one OS thread (emu.cc; switch.S
# is the x86-64 context switch); __syncthreads, __syncwarp and
# __shfl_xor_sync are barriers that yield until every participant arrives;
# shared memory starts as garbage (0xff). pre.py turns each <<<...>>> launch
# into a call to emu_launch(). include/ stands in for cuda_internal.h and
# cuda_fp16.h (host memory plays device memory). The test program is
# test_backend_ops.c with its registry cut to "cpu" and "emu-cuda", a backend
# whose FP8 matmul, MLA, MoE gate/experts/combine are those kernels and whose
# other ops are the CPU's.
#
# What it cannot see: nvcc's code generation, the memory model (a missing
# __syncthreads that only reorders a write after a read, warp-synchronous
# code without a barrier), performance, and the rest of ops_cuda.cu. It is a
# check of the kernels' logic, not a GPU run.
#
# Needs gcc/g++ (C++20), python3, x86-64 Linux; about 20 s. Exit status is the
# test's. CASCADE_EMU_FLAGS adds compiler flags (e.g. -fsanitize=address).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
work=${1:-${TMPDIR:-/tmp}/cascade-cuda-emu}
mkdir -p "$work/obj"
cd "$work"
python3 - "$src/tests/backend/test_backend_ops.c" t.c <<'PY'
import sys
s = open(sys.argv[1]).read()
reg = '''    {"cpu-avx2", cpu_avx2, 0},
    {"cpu-portable", cpu_portable, 0},
    {"cpu-1thread", cpu_one_thread, 0},'''
assert reg in s, "test_backend_ops.c's registry changed: update run.sh"
s = s.replace(reg, '    {"emu-cuda", emu_cuda_new, 0},')
s = s.replace('/* ---- The registry ---- */', '/* ---- The registry ---- */\nstruct native_backend *emu_cuda_new(void);\n')
open(sys.argv[2], 'w').write(s)
PY
flags=${CASCADE_EMU_FLAGS:-}
for f in fp8 mla moe; do
    python3 "$here/pre.py" "$src/engines/native/backend/cuda/ops_cuda_$f.cu" "k_$f.cc"
done
for f in backend/dtype.c backend/cpu/threadpool.c backend/cpu/ops_cpu.c backend/cpu/ops_cpu_fp8.c \
         backend/cpu/ops_cpu_mla.c backend/cpu/ops_cpu_moe.c; do
    gcc -std=c11 -D_GNU_SOURCE -O2 -g $flags -I"$src" -c "$src/engines/native/$f" -o "obj/$(basename "$f").o"
done
gcc -std=c11 -D_GNU_SOURCE -O2 -g $flags -I"$src" -c t.c -o obj/t.o
# The emulated kernels: -ffp-contract=off, so a*b+c is never fused behind the
# kernels' back (they say __fmaf_rn where they mean a fused multiply-add).
for f in "$here/emu.cc" k_fp8.cc k_mla.cc k_moe.cc; do
    g++ -std=c++20 -O1 -g -ffp-contract=off -Wall -Wno-unused-function -Wno-unknown-pragmas $flags \
        -I"$here/include" -I"$here" -I"$src" -c "$f" -o "obj/$(basename "$f").o"
done
gcc -c "$here/switch.S" -o obj/switch.o
g++ $flags -o emu_test obj/*.o -lm
./emu_test
