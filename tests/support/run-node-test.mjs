// run-node-test.mjs FILE: runs one node:test file for CTest, so that a test
// that did not run can never read as Passed.
//
// `node --test` exits 0 when tests are skipped, and when a file registers no
// test at all (a describe() skipped as a whole). CTest would call that
// Passed. This wrapper runs the file with the spec reporter on stdout (what a
// reader sees) and the TAP reporter into a temporary file (what we count),
// then exits:
//   - with node's own status when a test failed (a failure never hides
//     behind a SKIP);
//   - 77 (SKIP_RETURN_CODE, reported by CTest as skipped) when any test was
//     skipped or none ran, naming the skipped tests and their reasons;
//   - 1 instead of 77 under CI=true, where .ci/run installs every
//     dependency, so a skip means the suite is not testing what it claims;
//   - 0 otherwise.
// `todo` tests count as neither: they are reported by node as known gaps.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const file = process.argv[2];
if (!file) {
  console.error('usage: run-node-test.mjs FILE.test.mjs');
  process.exit(2);
}

const dir = mkdtempSync(path.join(tmpdir(), 'cascade-node-test-'));
const tap = path.join(dir, 'report.tap');
const run = spawnSync(process.execPath, [
  '--test',
  '--test-reporter=spec', '--test-reporter-destination=stdout',
  '--test-reporter=tap', `--test-reporter-destination=${tap}`,
  file,
], { stdio: 'inherit' });

let report = '';
try {
  report = readFileSync(tap, 'utf8');
} catch {
  // no report: node itself failed to start; its status says so below
}
rmSync(dir, { recursive: true, force: true });

// The TAP summary: "# tests N", "# pass N", "# fail N", "# skipped N", ...
function count(name) {
  const m = report.match(new RegExp(`^# ${name} (\\d+)$`, 'm'));
  return m ? Number(m[1]) : null;
}
const tests = count('tests');
const failed = count('fail');
const skipped = count('skipped') ?? count('skip') ?? 0;

if (run.status !== 0 || run.signal || tests === null || failed) {
  if (tests === null) console.error(`run-node-test: no TAP summary from ${file}`);
  process.exit(run.status || 1);
}

if (tests > 0 && skipped === 0) process.exit(0);

// Name what did not run: "ok N - name # SKIP reason" lines.
const reasons = report.split('\n').filter((l) => /# SKIP/.test(l)).map((l) => l.trim());
const why = tests === 0 ? 'no test ran' : `${skipped} of ${tests} tests skipped`;
console.log(`SKIP: ${path.basename(file)}: ${why}`);
for (const r of reasons) console.log(`  ${r}`);
if (process.env.CI === 'true') {
  console.error('FAIL: skipped under CI=true, where every dependency is installed');
  process.exit(1);
}
process.exit(77);
