// run.mjs: how much Redis memory Cascade's state takes, per cached answer,
// per request and per tenant (issue 17: the sizing in docs/deploy.md).
//
// Real pieces: one redis-server (no persistence, started here), one scripted
// upstream (tests/support/peer.mjs, which answers "echo: " + the prompt, so
// the answer's size is set by the prompt's) and one cascaded with the Redis
// cache and Redis policies. Redis's own accounting is read with
// INFO memory (used_memory: what the allocator holds for data, keys, TTLs and
// the main dictionary) before and after each step, and MEMORY USAGE (SAMPLES
// 0: every element) on the keys each step wrote.
//
// Steps, each repeated REPEATS times on fresh keys:
//   requests  N non-cached requests (x-cascade-cache: bypass) of one tenant
//             with no limits: what every request leaves behind whatever the
//             cache does (the settlement's idempotency marker, 48 h).
//   cache     for each answer size, N distinct deterministic requests
//             (temperature 0) of that tenant: one cached entry each, plus
//             the per-request state above; bytes per entry = the step's
//             growth / N minus the per-request figure of the same repeat.
//   tenants   M tenants not seen before, each with RPM/TPM/concurrency
//             limits and day/month budgets, one non-cached request each:
//             the state a tenant holds once it is active; then, for 100 of
//             them, a miss and a hit (the savings hashes a hit writes), and
//             the breakdown by key class of those 100 tenants, with each
//             class's TTL as Redis reports it.
// A step waits until Redis holds every key it expects (cache writes and
// settlements are fire-and-forget after the answer) and the stats flush
// (once a second) has run, then reads used_memory.
//
//   cmake --build build --target cascaded
//   CASCADE_BUILD_DIR=build node bench/redis-memory/run.mjs [--n 1000] [--m 1000] [--repeats 3]
//       [--sizes 256,1024,4096,16384] [--json out.json]
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  freePort, makeConfig, sha256hex, sleep, startGateway, startPeer, stopAll, tier, variedText,
} from '../../tests/support/harness.mjs';

const { values: opt } = parseArgs({
  options: {
    n: { type: 'string', default: '1000' },
    m: { type: 'string', default: '1000' },
    repeats: { type: 'string', default: '3' },
    sizes: { type: 'string', default: '256,1024,4096,16384' },
    concurrency: { type: 'string', default: '8' },
    json: { type: 'string' },
  },
});
const N = Number(opt.n), M = Number(opt.m), REPEATS = Number(opt.repeats), CONC = Number(opt.concurrency);
const SIZES = opt.sizes.split(',').map(Number);

// ---- redis -----------------------------------------------------------------
const rport = await freePort();
const redis = spawn('redis-server', ['--port', String(rport), '--bind', '127.0.0.1', '--save', '',
  '--appendonly', 'no', '--protected-mode', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
let redisOut = '';
redis.stdout.setEncoding('utf8').on('data', (d) => (redisOut += d));
const stopRedis = () => { if (redis.exitCode === null) redis.kill('SIGTERM'); };
process.on('exit', stopRedis);
for (let i = 0; !/Ready to accept/.test(redisOut); i++) {
  if (i > 200 || redis.exitCode !== null) throw new Error(`redis-server did not start:\n${redisOut}`);
  await sleep(50);
}
const cli = (args, input) =>
  execFileSync('redis-cli', ['-p', String(rport), ...args], { encoding: 'utf8', input, maxBuffer: 1 << 28 }).trim();
const usedMemory = () => Number(/used_memory:(\d+)/.exec(cli(['INFO', 'memory']))[1]);
const scan = (pattern) => {
  const out = cli(['--scan', '--pattern', pattern]);
  return out ? out.split('\n') : [];
};
// One command per key through one redis-cli (quoted: keys hold braces).
const perKey = (cmd, keys) => (keys.length ? cli([], keys.map((k) => `${cmd} "${k}"${cmd === 'MEMORY USAGE' ? ' SAMPLES 0' : ''}`).join('\n') + '\n')
  .split('\n').map(Number) : []);

// ---- upstream and gateway ---------------------------------------------------
const tenantIds = [];
for (let r = 0; r < REPEATS; r++) for (let i = 0; i < M; i++) tenantIds.push(`r${r}t${String(i).padStart(5, '0')}`);
const keyOf = (id) => `sk-mem-${id}`;
let peer, gw;
try {
peer = await startPeer({ name: 'mem' });
const config = makeConfig({
  tiers: [tier({ name: 'small', urls: peer.url })],
  tenants: [
    // The cache and per-request steps: no limits, no budget (admission
    // skips Redis; settlement still records spend).
    { id: 'fill', keys: [sha256hex(keyOf('fill'))], allowed_tiers: ['small'], cache: { mode: 'deterministic', ttl_s: 86400 } },
    ...tenantIds.map((id) => ({
      id, keys: [sha256hex(keyOf(id))], allowed_tiers: ['small'],
      limits: { rpm: 600, tpm: 1000000, max_concurrent: 16 },
      budget: { usd_per_day: 10, usd_per_month: 200, on_exhausted: 'reject' },
    })),
  ],
  redis: { url: `redis://127.0.0.1:${rport}/0`, timeout_ms: 500 },
  // Keep-alive connections sit idle while a step reads Redis; a longer idle
  // time than the default 10 s keeps the client from racing their close.
  limits: { max_body_bytes: 1 << 20, header_timeout_ms: 600000 },
});
gw = await startGateway({ config });

async function send(tenant, content, { bypass = false } = {}) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${keyOf(tenant)}` };
  if (bypass) headers['x-cascade-cache'] = 'bypass';
  const r = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers,
    body: JSON.stringify({ model: 'small', temperature: 0, messages: [{ role: 'user', content }] }),
  });
  const text = await r.text();
  if (r.status !== 200) throw new Error(`${tenant}: HTTP ${r.status}: ${text}`);
  return r.headers.get('x-cascade-cache');
}
async function pool(items, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: CONC }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  }));
}
async function waitKeys(pattern, want, what) {
  for (let i = 0; ; i++) {
    const n = scan(pattern).length;
    if (n >= want) return;
    if (i > 200) throw new Error(`${what}: ${n} keys matching ${pattern}, expected ${want}`);
    await sleep(50);
  }
}
// The settlements and the once-a-second stats flush run after the answers.
const settle = () => sleep(2500);
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const range = (a) => [Math.min(...a), Math.max(...a)];

// Warm up: the Lua scripts are loaded, the connections and their buffers
// exist, and the fill tenant's spend/stats keys are there before anything is
// measured.
await send('fill', 'warm up', { bypass: true });
await send(tenantIds[0], 'warm up', { bypass: true }); // (its tenant is excluded below)
await settle();

const results = { redis: cli(['INFO', 'server']).match(/redis_version:\S+/)[0], n: N, m: M, repeats: REPEATS,
  per_request: [], cache: {}, tenants: [] };
let seq = 0;
const uniq = () => `#${seq++} `;

for (let rep = 0; rep < REPEATS; rep++) {
  // ---- per request ----
  const markers0 = scan('cascade:{fill}:settled:*').length;
  let m0 = usedMemory();
  await pool(Array.from({ length: N }), async () => send('fill', uniq() + 'short question', { bypass: true }));
  await waitKeys('cascade:{fill}:settled:*', markers0 + N, 'per-request markers');
  await settle();
  let m1 = usedMemory();
  const perReq = (m1 - m0) / N;
  const markerKeys = scan('cascade:{fill}:settled:*').slice(0, 200);
  const markerUsage = median(perKey('MEMORY USAGE', markerKeys));
  results.per_request.push({ used_memory_per_request: perReq, marker_memory_usage: markerUsage,
    marker_ttl_s: Number(cli(['TTL', markerKeys[0]])), marker_key_bytes: markerKeys[0].length });
  console.log(`repeat ${rep + 1}: per request ${perReq.toFixed(1)} B (used_memory), settled marker MEMORY USAGE ${markerUsage} B`);

  // ---- cache entries by answer size ----
  for (const size of SIZES) {
    const before = new Set(scan('cascade:{fill}:resp:*'));
    const mk = scan('cascade:{fill}:settled:*').length;
    const body = variedText(size);
    m0 = usedMemory();
    const states = [];
    await pool(Array.from({ length: N }), async () => states.push(await send('fill', uniq() + body)));
    if (states.some((s) => s !== 'miss')) throw new Error(`cache step: expected misses, got ${[...new Set(states)]}`);
    await waitKeys('cascade:{fill}:resp:*', before.size + N, `cache ${size}`);
    await waitKeys('cascade:{fill}:settled:*', mk + N, `cache ${size} markers`);
    await settle();
    m1 = usedMemory();
    const fresh = scan('cascade:{fill}:resp:*').filter((k) => !before.has(k));
    const sample = fresh.slice(0, 200);
    const usage = perKey('MEMORY USAGE', sample);
    const strlen = perKey('STRLEN', sample);
    const entry = JSON.parse(cli(['GET', sample[0]]));
    const row = {
      answer_bytes: Buffer.byteLength(entry.content), value_bytes: median(strlen),
      used_memory_per_entry: (m1 - m0) / N - perReq, memory_usage: median(usage),
      ttl_s: Number(cli(['TTL', sample[0]])),
    };
    (results.cache[size] ||= []).push(row);
    console.log(`repeat ${rep + 1}: answer ${row.answer_bytes} B, entry value ${row.value_bytes} B: ` +
      `${row.used_memory_per_entry.toFixed(1)} B per entry (used_memory, per-request state taken off), ` +
      `MEMORY USAGE ${row.memory_usage} B`);
  }

  // ---- tenants ----
  const ids = tenantIds.slice(rep * M, (rep + 1) * M).filter((id) => id !== tenantIds[0]);
  const mk = scan('cascade:{r*}:settled:*').length;
  m0 = usedMemory();
  await pool(ids, async (id) => send(id, uniq() + 'short question', { bypass: true }));
  await waitKeys('cascade:{r*}:settled:*', mk + ids.length, 'tenant markers');
  await settle();
  m1 = usedMemory();
  const perTenant = (m1 - m0) / ids.length;
  // A cache hit records savings: the saved:<day|month> hashes. For a
  // sample of these tenants (after the figure above), a miss then a hit.
  for (const id of ids.slice(0, 100)) {
    const q = uniq() + 'cached question';
    await send(id, q);
    if ((await send(id, q)) !== 'hit') throw new Error(`${id}: the second request was not a hit`);
  }
  await settle();
  // Key classes of these tenants: count per tenant, MEMORY USAGE, TTL.
  const classes = {};
  for (const id of ids.slice(0, 100)) {
    for (const k of scan(`cascade:{${id}}:*`)) {
      const cls = k.slice(`cascade:{${id}}:`.length).replace(/^settled:.*/, 'settled:<request id>')
        .replace(/^(spend|saved):(\d{8})$/, '$1:<yyyymmdd>').replace(/^(spend|saved):(\d{6})$/, '$1:<yyyymm>')
        .replace(/^stats:\d+$/, 'stats:<minute>').replace(/^resp:[0-9a-f]{64}$/, 'resp:<sha256>').replace(/^statsack:.*/, 'statsack:<instance>:<worker>');
      (classes[cls] ||= []).push(k);
    }
  }
  const breakdown = {};
  for (const [cls, keys] of Object.entries(classes)) {
    breakdown[cls] = { keys_per_tenant: keys.length / Math.min(100, ids.length),
      memory_usage: median(perKey('MEMORY USAGE', keys)), ttl_s: Number(cli(['TTL', keys[0]])),
      fields: cli(['TYPE', keys[0]]) === 'hash' ? median(perKey('HLEN', keys)) : undefined };
  }
  results.tenants.push({ used_memory_per_tenant: perTenant, per_request: perReq, breakdown });
  console.log(`repeat ${rep + 1}: ${perTenant.toFixed(1)} B per active tenant (used_memory, one request each, ` +
    `its settled marker included)`);
  for (const [cls, b] of Object.entries(breakdown))
    console.log(`    ${cls.padEnd(32)} ${b.keys_per_tenant} key(s)/tenant, MEMORY USAGE ${b.memory_usage} B, TTL ${b.ttl_s} s` +
      (b.fields !== undefined ? `, ${b.fields} fields` : ''));
}

// ---- summary ------------------------------------------------------------------
const fmt = (a) => { const [lo, hi] = range(a); return `${median(a).toFixed(0)} [${lo.toFixed(0)}..${hi.toFixed(0)}]`; };
console.log('\nsummary: median [min..max] over repeats');
console.log(`per request (settled marker): used_memory ${fmt(results.per_request.map((r) => r.used_memory_per_request))} B, ` +
  `MEMORY USAGE ${fmt(results.per_request.map((r) => r.marker_memory_usage))} B`);
for (const size of SIZES) {
  const rows = results.cache[size];
  console.log(`cache entry, answer ${rows[0].answer_bytes} B (value ${rows[0].value_bytes} B): used_memory ` +
    `${fmt(rows.map((r) => r.used_memory_per_entry))} B, MEMORY USAGE ${fmt(rows.map((r) => r.memory_usage))} B`);
}
console.log(`active tenant (first request): used_memory ${fmt(results.tenants.map((r) => r.used_memory_per_tenant))} B`);
if (opt.json) writeFileSync(opt.json, JSON.stringify(results, null, 2));
} finally {
  await stopAll();
  stopRedis();
}
