// money.test.mjs: the money path against a real redis-server, real cascaded
// and a scripted upstream: budgets that hold whatever max_tokens says,
// arithmetic that cannot wrap into a credit, and charges and savings only
// for what was really produced.
//
// Each test names the defect it guards (issue 12):
//   - max_tokens 1e17 from a tenant whose budget is spent got 200, and the
//     fleet stats showed a cost of minus nine billion dollars;
//   - max_tokens 1e10 from a tenant with no budget broke its Redis admission
//     (a reservation member in exponent form) so its RPM stopped holding;
//   - a 502 upstream_unreachable was charged the prompt estimate, and failed
//     requests recorded routing savings.
// And what the fix promises: the tier's max_output_tokens is the default and
// the ceiling of the output bound (larger values are clamped, and the client
// sees the bound in x-cascade-max-tokens), the upstream receives the clamped
// bound, and the Lua scripts refuse a negative or non-integer amount.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, BUILD_DIR, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, freePort, makeConfig, sha256hex,
  spawnReady, startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The gateway's own admit and settle calls, caught with MONITOR while one
// request of the tenant of `key` goes through, to replay with other values.
// A MONITOR line: <time> [db addr] "EVALSHA" "<sha>" "<numkeys>" keys... args...
// so in a parsed call c: c[2] numkeys, KEYS[j] = c[2 + j], ARGV[i] = c[2 + n + i].
async function captureScripts(gw, redis, key) {
  const mon = spawn('redis-cli', ['-p', String(redis.port), 'monitor'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let seen = '';
  mon.stdout.setEncoding('utf8').on('data', (d) => (seen += d));
  await sleep(200);
  const ok = await call(gw, chatBody('lua probe', { model: 'small' }), key);
  assert.equal(ok.status, 200);
  await sleep(300);
  mon.kill();
  const calls = seen.split('\n').filter((l) => l.includes('"EVALSHA"'))
    .map((l) => [...l.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]));
  const admit = calls.find((c) => c[2] === '6'); // KEYS 6: resv:sum
  const settle = calls.find((c) => c[2] === '8' && c.length === 3 + 8 + 7); // KEYS 8: resv:sum; ARGV 7: routing loss
  assert.ok(admit && settle, `EVALSHA calls seen:\n${seen}`);
  return { admit, settle };
}
const day = () => new Date().toISOString().slice(0, 10).replace(/-/g, '');
const PRICES = { small: { input_per_1m: 10, output_per_1m: 100 }, large: { input_per_1m: 30, output_per_1m: 300 } };
const SMALL_MAX = 50;       // tiers[small].max_output_tokens
const LARGE_MAX = 80;
const HUGE = 100000000000000000; // 1e17, an exact double: JSON.stringify writes it as an integer
const KEYS = {
  spent: 'sk-money-spent', room: 'sk-money-room', rpm: 'sk-money-rpm', capped: 'sk-money-capped',
  dead: 'sk-money-dead', fail: 'sk-money-fail', lua: 'sk-money-lua',
};

function post(gw, body, key) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(key), body: JSON.stringify(body) });
}

async function call(gw, body, key = TEST_KEY) {
  const res = await post(gw, body, key);
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // a stream: keep the text
  }
  return { status: res.status, headers: res.headers, json, text };
}

// Every spend value in Redis: an integer (digits only), never negative.
function assertSpendIntegers(redis) {
  const keys = redis.cli('--scan', '--pattern', 'cascade:*:spend:*').split('\n').filter(Boolean);
  for (const k of keys) {
    const v = redis.cli('GET', k);
    assert.match(v, /^\d+$/, `${k} holds ${v}`);
  }
  for (const k of redis.cli('--scan', '--pattern', 'cascade:*:saved:*').split('\n').filter(Boolean)) {
    const h = redis.cli('HGETALL', k).split('\n');
    for (let i = 1; i < h.length; i += 2) assert.match(h[i], /^\d+$/, `${k} ${h[i - 1]} holds ${h[i]}`);
  }
  return keys.length;
}

function accessLines(gw, tenant) {
  return gw.logLines().filter((l) => l.msg === 'access' && l.tenant === tenant);
}

describe('the money path', () => {
  let redis;
  let peer;
  let gw;
  let deadPort;

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'money' });
    deadPort = await freePort(); // nothing listens there: connection refused
    const tenants = [
      // Budget spent before the test starts (the spend key is set below).
      { id: 'spent', keys: [sha256hex(KEYS.spent)], allowed_tiers: ['small', 'large'], default_tier: 'small',
        budget: { usd_per_day: 0.001, on_exhausted: 'reject' } },
      { id: 'room', keys: [sha256hex(KEYS.room)], allowed_tiers: ['small', 'large'], default_tier: 'small',
        budget: { usd_per_day: 100 } },
      { id: 'rpm', keys: [sha256hex(KEYS.rpm)], allowed_tiers: ['small'], limits: { rpm: 3 } },
      { id: 'capped', keys: [sha256hex(KEYS.capped)], allowed_tiers: ['small'], limits: { max_tokens: 20 } },
      { id: 'dead', keys: [sha256hex(KEYS.dead)], allowed_tiers: ['dead', 'large'], default_tier: 'dead' },
      { id: 'fail', keys: [sha256hex(KEYS.fail)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
      { id: 'lua', keys: [sha256hex(KEYS.lua)], allowed_tiers: ['small'], limits: { rpm: 1000 } },
    ];
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url, price: PRICES.small, max_output_tokens: SMALL_MAX, timeoutMs: 1500 }),
        tier({ name: 'large', model: 'big-model', urls: peer.url, price: PRICES.large, max_output_tokens: LARGE_MAX }),
        tier({ name: 'dead', model: 'dead-model', urls: `http://127.0.0.1:${deadPort}`, price: PRICES.small }),
      ],
      tenants,
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
    redis.cli('SET', `cascade:{spent}:spend:${day()}`, '1000000'); // the whole $0.001
  });
  after(async () => {
    await gw?.stop();
    await redis?.stop();
  });

  test('a spent budget refuses max_tokens 1e17 with 429 budget_exceeded, and nothing reaches the upstream', async () => {
    await peer.reset();
    for (const field of ['max_tokens', 'max_completion_tokens']) {
      const r = await call(gw, chatBody('free lunch?', { model: 'small', [field]: HUGE }), KEYS.spent);
      assert.equal(r.status, 429, `${field}: ${r.text}`);
      assert.equal(r.json.error.code, 'budget_exceeded');
      assert.equal(r.json.error.type, 'insufficient_quota');
    }
    assert.equal((await peer.stats()).requests, 0);
    assert.equal(redis.cli('GET', `cascade:{spent}:spend:${day()}`), '1000000');
    assertSpendIntegers(redis);
  });

  test('max_tokens 1e17 with budget left is clamped to the tier ceiling, charged honestly, never credited', async () => {
    await peer.reset();
    const r = await call(gw, chatBody('one two three', { model: 'small', max_tokens: HUGE }), KEYS.room);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-cascade-max-tokens'), String(SMALL_MAX));
    assert.equal((await peer.stats()).last_request.max_tokens, SMALL_MAX);
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'room');
    const want = Math.round(r.json.usage.prompt_tokens * 10 * 1000) + Math.round(r.json.usage.completion_tokens * 100 * 1000);
    assert.equal(line.cost_nano, want);
    await sleep(200);
    assert.equal(redis.cli('GET', `cascade:{room}:spend:${day()}`), String(want));
    assertSpendIntegers(redis);
  });

  test('a tenant with no budget keeps its RPM after sending max_tokens 1e10', async () => {
    await peer.reset();
    const first = await call(gw, chatBody('big ask', { model: 'small', max_tokens: 10000000000 }), KEYS.rpm);
    assert.equal(first.status, 200, first.text);
    const rest = [];
    for (let i = 0; i < 4; i++) rest.push((await call(gw, chatBody(`then ${i}`, { model: 'small' }), KEYS.rpm)).status);
    // rpm 3: the big request and two more, then 429s, decided by Redis.
    assert.deepEqual(rest, [200, 200, 429, 429]);
    assert.equal((await peer.stats()).requests, 3);
    assert.ok(!gw.logs().includes('admit script failed'), 'the admission script failed:\n' + gw.logs());
    assert.equal(first.headers.get('x-cascade-max-tokens'), String(SMALL_MAX));
    // No reservation member outside "<id>:<digits>".
    for (const m of redis.cli('ZRANGE', 'cascade:{rpm}:resv', '0', '-1').split('\n').filter(Boolean)) {
      assert.match(m, /^[^:]+:\d+$/);
    }
    assertSpendIntegers(redis);
  });

  test('the output bound: the tier ceiling by default and at most, the tenant cap, and what the upstream receives', async () => {
    await peer.reset();
    const cases = [
      [{}, 'small', null, SMALL_MAX],
      [{ max_tokens: 10 }, 'small', null, 10],
      [{ max_tokens: 1000 }, 'small', null, SMALL_MAX],
      [{ max_completion_tokens: 1000 }, 'small', null, SMALL_MAX],
      [{ max_tokens: 1000 }, 'large', null, LARGE_MAX],
      [{ max_tokens: 1000 }, 'small', KEYS.capped, 20],
      [{ max_tokens: 5 }, 'small', KEYS.capped, 5],
    ];
    for (const [extra, model, key, bound] of cases) {
      const r = await call(gw, chatBody('a b c d e f g h i j k l', { model, ...extra }), key || KEYS.room);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('x-cascade-max-tokens'), String(bound), JSON.stringify(extra));
      const got = (await peer.stats()).last_request;
      if ('max_completion_tokens' in extra) {
        assert.equal(got.max_completion_tokens, bound);
        assert.ok(!('max_tokens' in got), 'only the key the client used');
      } else {
        assert.equal(got.max_tokens, bound, JSON.stringify(extra));
      }
    }
    // A stream says it too.
    const s = await post(gw, chatBody('streamed', { model: 'small', stream: true, max_tokens: 999 }), KEYS.room);
    assert.equal(s.status, 200);
    assert.equal(s.headers.get('x-cascade-max-tokens'), String(SMALL_MAX));
    await s.text();
    // Values below 1 and non-integers stay a 400 naming the parameter.
    for (const [k, v] of [['max_tokens', 0], ['max_tokens', -5], ['max_tokens', 1.5], ['max_tokens', '10'],
      ['max_completion_tokens', 0]]) {
      const r = await call(gw, chatBody('bad', { model: 'small', [k]: v }), KEYS.room);
      assert.equal(r.status, 400, `${k}=${v}: ${r.text}`);
      assert.equal(r.json.error.param, k);
    }
    // The JSON real 1e17 (not an integer), written as such.
    const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(KEYS.room),
      body: '{"model":"small","max_tokens":1e17,"messages":[{"role":"user","content":"x"}]}' });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.param, 'max_tokens');
  });

  test('a request that no upstream accepted costs nothing and saves nothing', async () => {
    const r = await call(gw, chatBody('anyone there?', { model: 'dead' }), KEYS.dead);
    assert.equal(r.status, 502, r.text);
    assert.equal(r.json.error.code, 'upstream_unreachable');
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'dead');
    assert.equal(line.cost_nano, 0);
    assert.equal(line.saved_nano, 0);
    await sleep(200);
    assert.equal(Number(redis.cli('GET', `cascade:{dead}:spend:${day()}`) || 0), 0);
    assert.equal(redis.cli('HGETALL', `cascade:{dead}:saved:${day()}`), '');
  });

  test('failed requests (upstream 500, 400, timeout) cost nothing and record no savings', async () => {
    const before = accessLines(gw, 'fail').length;
    const outcomes = [];
    for (const d of ['[[peer:status=500]]', '[[peer:status=400]]', '[[peer:hang]]']) {
      const r = await call(gw, chatBody(`doomed ${d}`, { model: 'small' }), KEYS.fail);
      outcomes.push(r.status);
    }
    assert.deepEqual(outcomes.map((s) => s >= 400), [true, true, true], JSON.stringify(outcomes));
    await gw.waitForLog(() => accessLines(gw, 'fail').length >= before + 3, 5000);
    for (const l of accessLines(gw, 'fail').slice(before)) {
      assert.equal(l.cost_nano, 0, JSON.stringify(l));
      assert.equal(l.saved_nano, 0, JSON.stringify(l));
    }
    await sleep(200);
    assert.equal(Number(redis.cli('GET', `cascade:{fail}:spend:${day()}`) || 0), 0);
    assert.equal(redis.cli('HGETALL', `cascade:{fail}:saved:${day()}`), '');
  });

  test('a stream that breaks mid-answer is charged for the tokens received, and saves nothing', async () => {
    const before = accessLines(gw, 'fail').length;
    const res = await post(gw, chatBody('w1 w2 w3 w4 w5 w6 [[peer:close_after=3]]', { model: 'small', stream: true }),
      KEYS.fail);
    const text = await res.text();
    assert.match(text, /"error"/);
    await gw.waitForLog(() => accessLines(gw, 'fail').length > before, 5000);
    const l = accessLines(gw, 'fail').at(-1);
    // Our prompt count at $10 per 1M (10,000 nano a token) plus the three
    // pieces received at $100 per 1M (100,000 nano a token).
    assert.ok(l.cost_nano >= 3 * 100000, JSON.stringify(l));
    assert.equal((l.cost_nano - 3 * 100000) % 10000, 0, JSON.stringify(l));
    assert.equal(l.saved_nano, 0);
    await sleep(200);
    assert.equal(Number(redis.cli('GET', `cascade:{fail}:spend:${day()}`)), l.cost_nano);
    assert.equal(redis.cli('HGETALL', `cascade:{fail}:saved:${day()}`), '');
  });

  test('the fleet stats show no negative cost or savings, and the cost the access log shows', async () => {
    // The case once more, on its own: it showed a fleet cost of
    // minus nine billion dollars.
    const n = accessLines(gw, 'spent').length;
    const r = await call(gw, chatBody('free lunch again?', { model: 'small', max_tokens: HUGE }), KEYS.spent);
    await gw.waitForLog(() => accessLines(gw, 'spent').length > n);
    const now = Math.floor(Date.now() / 1000);
    const q = new URLSearchParams({ from: now - 600, to: now + 120, step: 60 });
    const lines = gw.logLines().filter((l) => l.msg === 'access' && l.path === '/v1/chat/completions');
    assert.ok(lines.length > 0);
    let t;
    for (let i = 0; i < 50; i++) {
      const res = await fetch(`${gw.url}/admin/v1/stats?${q}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(res.status, 200);
      t = (await res.json()).totals;
      if (t.requests >= lines.length) break;
      await sleep(100);
    }
    assert.equal(t.requests, lines.length, JSON.stringify(t));
    assert.ok(t.cost_usd >= 0, `cost ${t.cost_usd}`);
    assert.ok(t.saved_cache_usd >= 0 && t.saved_routing_usd >= 0, JSON.stringify(t));
    const logged = lines.reduce((a, l) => a + l.cost_nano, 0);
    assert.ok(Math.abs(t.cost_usd - logged / 1e9) < 1e-9, `stats ${t.cost_usd} USD, access log ${logged} nano-USD`);
    assert.equal(r.status, 429, r.text);
    // The tenant whose requests failed: its tokens are the ones it was
    // charged for, the three pieces of the broken stream, and no savings.
    const f = await fetch(`${gw.url}/admin/v1/stats?${q}&tenant=fail`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const ft = (await f.json()).totals;
    assert.equal(ft.tokens_out, 3, JSON.stringify(ft));
    assert.equal(ft.saved_routing_usd, 0);
    assert.equal(ft.saved_cache_usd, 0);
  });

  test('the Lua scripts refuse negative, fractional and exponent-form amounts before writing', async () => {
    const { admit, settle } = await captureScripts(gw, redis, KEYS.lua);
    const KEY = (c, j) => 2 + j;
    const ARG = (c, i) => 2 + Number(c[2]) + i;
    const run = (c) => {
      try {
        return redis.cli(...c);
      } catch (e) {
        return String(e.stdout || e.message);
      }
    };
    const spendKey = settle[KEY(settle, 2)];
    const spendBefore = redis.cli('GET', spendKey);
    // A fresh request id in the idempotency key, so each probe is a new settle.
    const probe = (id) => {
      const c = [...settle];
      c[KEY(c, 7)] = c[KEY(c, 7)].replace(/[^:]+$/, id);
      return c;
    };
    const bad = ['-5', '1.5', '1e5', ' 12', '0x10', '99999999999999999999', ''];
    bad.forEach((amount, i) => {
      const c = probe(`probe-${i}`);
      c[ARG(c, 2)] = amount; // the cost
      assert.match(run(c), /CASCADE_REFUSED/, `settle cost ${JSON.stringify(amount)}`);
      assert.equal(redis.cli('EXISTS', c[KEY(c, 7)]), '0', 'refused before marking the request settled');
    });
    assert.equal(redis.cli('GET', spendKey), spendBefore);
    const neg = probe('probe-neg');
    neg[ARG(neg, 6)] = '-100'; // a negative routing saving
    assert.match(run(neg), /CASCADE_REFUSED/);
    const negLoss = probe('probe-neg-loss');
    negLoss[ARG(negLoss, 7)] = '-100'; // a negative routing loss: a loss is never a credit
    assert.match(run(negLoss), /CASCADE_REFUSED/);
    // A good amount as a plain decimal string goes through, exactly.
    const good = probe('probe-good');
    good[ARG(good, 2)] = '7';
    assert.equal(run(good), '1');
    assert.equal(BigInt(redis.cli('GET', spendKey)), BigInt(spendBefore) + 7n);
    // Admission: an estimate in exponent form, a negative or fractional
    // cost, a bad alternative cost: refused, not misread.
    for (const [argi, v] of [[4, '1e+15'], [5, '-1'], [5, '1.0'], [10, '-2']]) {
      const c = [...admit];
      c[ARG(c, argi)] = v;
      c[ARG(c, 8)] = `probe-admit-${argi}`;
      assert.match(run(c), /CASCADE_REFUSED/, `admit ARGV[${argi}]=${v}`);
    }
    assert.equal(redis.cli('ZCARD', 'cascade:{lua}:resv'), '0');
    assertSpendIntegers(redis);
  });
  test('reservations in flight: their sum is kept with the set, expired ones leave it, a missing one is counted again', async () => {
    // The admit and settle scripts replayed on a tenant of their own, with a
    // budget, so that the sum decides: ARGV of admit: 5 cost, 6 day budget,
    // 8 request id, 9 ttl ms; returned [12] the sum reserved before this one.
    const { admit, settle } = await captureScripts(gw, redis, KEYS.lua);
    const T = (c) => c.map((x) => x.replaceAll('{lua}', '{sum}'));
    const argAt = (c, i) => 2 + Number(c[2]) + i;
    const admitOne = (id, cost, { ttl = '600000', budget = '1000000' } = {}) => {
      const c = T(admit);
      Object.assign(c, { [argAt(c, 5)]: String(cost), [argAt(c, 6)]: budget, [argAt(c, 8)]: id, [argAt(c, 9)]: ttl });
      const r = redis.cli(...c).split('\n');
      return { status: Number(r[0]), reserved: Number(r[11]) };
    };
    const settleOne = (id, cost) => {
      const c = T(settle);
      c[2 + 7] = c[2 + 7].replace(/[^:]+$/, id); // settled:<id>
      Object.assign(c, { [argAt(c, 1)]: `${id}:${cost}`, [argAt(c, 2)]: '0', [argAt(c, 3)]: '0' });
      return redis.cli(...c);
    };
    const sum = () => redis.cli('GET', 'cascade:{sum}:resv:sum');
    const open = () => Number(redis.cli('ZCARD', 'cascade:{sum}:resv'));
    assert.deepEqual(admitOne('a', 100), { status: 0, reserved: 0 });
    assert.deepEqual(admitOne('b', 200), { status: 0, reserved: 100 });
    assert.equal(sum(), '300');
    assert.equal(settleOne('a', 100), '1');
    assert.equal(sum(), '200');
    assert.equal(settleOne('a', 100), '0', 'settled twice: no change');
    assert.equal(sum(), '200');
    // A set without its sum (an older gateway wrote it): counted once.
    redis.cli('DEL', 'cascade:{sum}:resv:sum');
    assert.deepEqual(admitOne('c', 50), { status: 0, reserved: 200 });
    assert.equal(sum(), '250');
    // A sum that is not ours to trust: counted again.
    redis.cli('SET', 'cascade:{sum}:resv:sum', 'abc');
    assert.deepEqual(admitOne('d', 1), { status: 0, reserved: 250 });
    assert.equal(sum(), '251');
    // One that expires leaves the sum at the next admission; settling it later changes nothing.
    assert.deepEqual(admitOne('e', 1000, { ttl: '1' }), { status: 0, reserved: 251 });
    assert.equal(sum(), '1251');
    await sleep(20);
    assert.deepEqual(admitOne('f', 2), { status: 0, reserved: 251 });
    assert.equal(sum(), '253');
    assert.equal(settleOne('e', 1000), '1', 'settled (its spend counts), though its reservation expired');
    assert.equal(sum(), '253');
    assert.equal(open(), 4); // b c d f
    // The budget sees the sum: 1,000,000 less 253 reserved leaves room for 999,747 and no more.
    assert.equal(admitOne('g', 999748).status, 5);
    assert.equal(admitOne('h', 999747).status, 0);
    assert.equal(sum(), '1000000');
    // All settled: an empty set is a sum of 0, and the next admission starts from there.
    for (const [id, cost] of [['b', 200], ['c', 50], ['d', 1], ['f', 2], ['h', 999747]]) settleOne(id, cost);
    assert.equal(open(), 0);
    assert.equal(sum(), '0');
    assert.deepEqual(admitOne('i', 7), { status: 0, reserved: 0 });
    assert.equal(sum(), '7');
    assert.ok(Number(redis.cli('PTTL', 'cascade:{sum}:resv:sum')) > 0, 'the sum expires with its set');
  });
});

// The native engine reads the typed bound, in-process and behind
// cascade-engine, and a bound near INT64_MAX is a clean 400, not an overflow.
const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL = path.join(SHARED, 'models', 'stories260K', 'stories260K.bin');
const ENGINE = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
const noModel = existsSync(MODEL) ? false : `no model at ${MODEL}`;

describe('the bound on real native engines', { skip: noModel }, () => {
  test('cascade-engine: max_tokens 2^63-1 is 400 context_length_exceeded; a small bound is obeyed', async () => {
    const engine = await spawnReady(ENGINE, ['--model', MODEL, '--listen', '127.0.0.1:0', '--threads', '1'],
      /ENGINE_PORT=(\d+)/, { name: 'cascade-engine', timeoutMs: 20000 });
    const url = `http://127.0.0.1:${engine.match[1]}`;
    const ask = (raw) => fetch(`${url}/v1/chat/completions`, { method: 'POST',
      headers: { 'content-type': 'application/json' }, body: raw });
    const huge = await ask('{"model":"m","max_tokens":9223372036854775807,"messages":[{"role":"user","content":"hi"}]}');
    const body = await huge.json();
    assert.equal(huge.status, 400, JSON.stringify(body));
    assert.equal(body.error.code, 'context_length_exceeded');
    const small = await ask(JSON.stringify({ model: 'm', temperature: 0, max_tokens: 5,
      messages: [{ role: 'user', content: 'Once' }] }));
    const sj = await small.json();
    assert.equal(small.status, 200, JSON.stringify(sj));
    assert.equal(sj.usage.completion_tokens, 5);
    assert.equal((await fetch(`${url}/health`)).status, 200);
    await engine.stop();
  });

  test('an in-process tier: max_tokens 1e17 is clamped to its max_output_tokens and generates no more', async () => {
    const config = makeConfig({ tiers: [{ name: 'small', model: 'stories-small', price: PRICES.small,
      max_output_tokens: 12, engine: { kind: 'native', model: MODEL, name: 'stories-small', threads: 1 } }] });
    const g = await startGateway({ config });
    const r = await call(g, { model: 'small', temperature: 0, max_tokens: HUGE,
      messages: [{ role: 'user', content: '' }] });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-cascade-max-tokens'), '12');
    assert.equal(r.json.usage.completion_tokens, 12);
    assert.equal(r.json.choices[0].finish_reason, 'length');
    await g.stop();
  });
});
