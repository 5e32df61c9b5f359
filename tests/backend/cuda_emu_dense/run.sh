#!/bin/sh
# tests/backend/cuda_emu_dense/run.sh [work-dir]: ops_cuda.cu's dense kernels
# on the CPU through tests/backend/cuda_emu's emulation of CUDA (one CTA at a
# time, threads as fibers, barriers and shuffles that yield); see dense.cc.
# The kernels are taken from ops_cuda.cu as they are: every top-level
# __global__/__device__ definition, its #defines and struct gemv_set, with
# the dynamic shared memory pointed at the emulation's. cuBLASLt, streams and
# the host side of ops_cuda.cu are not covered.
#
# Needs g++ (C++20), gcc, python3, x86-64 Linux; a few seconds. Exit status:
# the check's; 77 when a tool is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
emu=$src/tests/backend/cuda_emu
work=${1:-${TMPDIR:-/tmp}/cascade-cuda-emu-dense.$$}
for t in g++ gcc python3; do
    command -v $t >/dev/null 2>&1 || { echo "SKIP: $t not found"; exit 77; }
done
[ -f "$emu/emu.h" ] && [ -f "$emu/emu.cc" ] && [ -f "$emu/switch.S" ] ||
    { echo "FAIL: $emu (the emulation) is missing"; exit 1; }
mkdir -p "$work"
cd "$work"
python3 - "$src/engines/native/backend/cuda/ops_cuda.cu" "$emu/emu.cc" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
out = [l for l in src.split('\n') if l.startswith('#define ')]
i = src.index('struct gemv_set {')
out.append(src[i:src.index('};', i) + 2])
skip = ('split_bf16_kernel',)       # BF16 conversion for cuBLASLt: no emulated bf16 type
n = 0
for m in re.finditer(r'^(?:template <[^\n]*>\n)?(?:static )?(?:__global__|__device__)[^{;]*\{', src, re.M):
    k, depth = m.end() - 1, 0
    while True:
        depth += {'{': 1, '}': -1}.get(src[k], 0)
        if depth == 0:
            break
        k += 1
    d = src[m.start():k + 1]
    if any(s in d.split('{')[0] for s in skip):
        continue
    out.append(d)
    n += 1
body = '\n\n'.join(out)
assert 'extern __shared__ float sm[];' in body, 'attention kernel changed: update run.sh'
body = body.replace('extern __shared__ float sm[];', 'float *sm = emu_dyn_smem;')
open('kernels.inc', 'w').write(body)
# The emulation's runtime: emu.cc up to its emu-cuda backend.
e = open(sys.argv[2]).read()
cut = e.find('\nvoid cuda_report(')
assert cut > 0, 'emu.cc changed: update run.sh'
e = e[:cut].replace('#include "engines/native/backend/cuda/cuda_internal.h"', '#include "emu.h"')
e = re.sub(r'extern "C" \{\s*#include "engines/native/backend/cpu/ops_cpu.h"\s*\}', '', e)
open('emu_rt.cc', 'w').write(e)
sys.stderr.write('cuda_emu_dense: %d kernels and helpers from ops_cuda.cu\n' % n)
PY
flags=${CASCADE_EMU_FLAGS:-}
# -ffp-contract=off: a*b+c stays two roundings unless the kernel says fmaf.
g++ -std=c++20 -O1 -g -ffp-contract=off -Wall -Werror -Wno-unused-function -Wno-unknown-pragmas $flags \
    -I"$work" -I"$here" -I"$emu" -I"$src" -include "$here/shim.h" -c "$here/dense.cc" -o dense.o
g++ -std=c++20 -O1 -g $flags -I"$emu" -I"$src" -c emu_rt.cc -o emu_rt.o
gcc -std=c11 -D_GNU_SOURCE -O2 $flags -I"$src" -c "$src/engines/native/backend/dtype.c" -o dtype.o
gcc -c "$emu/switch.S" -o switch.o
g++ $flags -o dense_emu dense.o emu_rt.o switch.o dtype.o -lm
./dense_emu
