import re, sys
src = open(sys.argv[1]).read()
src = src.replace('extern __shared__ float smem[];', 'float *smem = emu_dyn_smem;')
pat = re.compile(r'([A-Za-z_][A-Za-z_0-9]*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);', re.S)
n = len(pat.findall(src))
src = pat.sub(lambda m: 'emu_launch(%s, [=]() { %s(%s); });' % (m.group(2), m.group(1), m.group(3)), src)
sys.stderr.write('%s: %d launches\n' % (sys.argv[1], n))
open(sys.argv[2], 'w').write(src)
