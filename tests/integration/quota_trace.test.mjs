// quota_trace.test.mjs: budget rejections a client need not retry, W3C trace
// context across the gateway, and what the access log says about each
// request (issue 15). Real redis-server, real cascaded, scripted peers, the
// openai SDK.
//
// - A budget 429 carries `x-should-retry: false` and a Retry-After no shorter
//   than the time until the budget's window resets, so the openai SDK (with
//   its default two retries) gives up at once: the gateway sees one request.
//   Rate-limit 429s (RPM, TPM) are retryable, with a Retry-After no shorter
//   than their window's reset.
// - A client's `traceparent` reaches the upstream with the same trace id (and
//   `tracestate` unchanged); without one, or with an invalid one, the upstream
//   gets a fresh valid traceparent.
// - Every access-log line carries the key's id (its configured "id", or
//   "<tenant>#<index>" for a plain hash), the trace id, the error code on
//   failures, and whether the request escalated or fell back.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  SOURCE_DIR, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const CLASSIFIER = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const ymd = (d = new Date()) => d.toISOString().slice(0, 10).replace(/-/g, '');
const ym = (d = new Date()) => d.toISOString().slice(0, 7).replace(/-/g, '');

// Seconds from now to the next UTC midnight, and to the first of next month.
function toNextDay() {
  const now = new Date();
  return (Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000;
}
function toNextMonth() {
  const now = new Date();
  return (Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1) - now.getTime()) / 1000;
}

const KEYS = {
  daily: 'sk-quota-daily', monthly: 'sk-quota-monthly', rpm: 'sk-quota-rpm', tpm: 'sk-quota-tpm',
  named: 'sk-trace-named', plain0: 'sk-trace-plain-0', plain1: 'sk-trace-plain-1', zone: 'sk-trace-zone',
};

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`;
const TRACEPARENT_RE = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

async function call(gw, body, key, headers = {}) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: { ...authHeaders(key), ...headers }, body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // a stream
  }
  return { status: res.status, headers: res.headers, text, json };
}

const accessLines = (gw, tenant) => gw.logLines().filter((l) => l.msg === 'access' && l.tenant === tenant);

// The access lines of `tenant` after the first `from`, once there are `n` of
// them (a background thread writes the log, a moment after the answer).
async function newAccess(gw, tenant, from, n = 1) {
  await gw.waitForLog(() => accessLines(gw, tenant).length >= from + n, 5000);
  return accessLines(gw, tenant).slice(from);
}

describe('budget rejections and trace context', () => {
  let redis;
  let small;
  let large;
  let gw;

  before(async () => {
    redis = await startRedis();
    small = await startPeer({ name: 'small' });
    large = await startPeer({ name: 'large' });
    const cascade = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', model: 'small-model', urls: small.url, price: { input_per_1m: 1, output_per_1m: 2 } }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: { input_per_1m: 10, output_per_1m: 20 } }),
      ],
      tenants: [
        { id: 'daily', keys: [sha256hex(KEYS.daily)], allowed_tiers: ['small'],
          budget: { usd_per_day: 0.001, on_exhausted: 'reject' } },
        { id: 'monthly', keys: [sha256hex(KEYS.monthly)], allowed_tiers: ['small'],
          budget: { usd_per_month: 0.001, on_exhausted: 'reject' } },
        { id: 'rpm', keys: [sha256hex(KEYS.rpm)], allowed_tiers: ['small'], limits: { rpm: 1 } },
        // room for one request of max_tokens 25 in flight, not two
        { id: 'tpm', keys: [sha256hex(KEYS.tpm)], allowed_tiers: ['small'], limits: { tpm: 60 } },
        { id: 'trace', keys: [{ id: 'ci-runner', sha256: sha256hex(KEYS.named) }, sha256hex(KEYS.plain0),
          sha256hex(KEYS.plain1)], allowed_tiers: ['small'], cache: { mode: 'off' } },
        // the cascade zone: a short answer is kept, a long one escalates (as in routing.test.mjs)
        { id: 'zone', keys: [sha256hex(KEYS.zone)], allowed_tiers: ['small', 'large'], cache: { mode: 'off' },
          routing: { t_low: 0, t_high: 1, cascade } },
      ],
      classifier: { model: CLASSIFIER },
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
    // both budgets spent before the tests start
    redis.cli('SET', `cascade:{daily}:spend:${ymd()}`, '1000000');
    redis.cli('SET', `cascade:{monthly}:spend:${ym()}`, '1000000');
  });
  after(async () => {
    await gw?.stop();
    await redis?.stop();
  });

  test('a spent daily budget: 429, x-should-retry false, Retry-After until UTC midnight', async () => {
    const r = await call(gw, chatBody('over budget', { model: 'small' }), KEYS.daily);
    const reset = toNextDay();
    assert.equal(r.status, 429, r.text);
    assert.equal(r.json.error.code, 'budget_exceeded');
    assert.equal(r.headers.get('x-should-retry'), 'false');
    const ra = Number(r.headers.get('retry-after'));
    assert.ok(Number.isInteger(ra), `Retry-After ${r.headers.get('retry-after')}`);
    assert.ok(ra >= Math.floor(reset) - 2, `Retry-After ${ra} s, but the day resets in ${reset.toFixed(0)} s`);
    assert.ok(ra <= Math.ceil(reset) + 60, `Retry-After ${ra} s, long after the reset in ${reset.toFixed(0)} s`);
  });

  test('a spent monthly budget: Retry-After until the first of next month', async () => {
    const r = await call(gw, chatBody('over budget', { model: 'small' }), KEYS.monthly);
    const reset = toNextMonth();
    assert.equal(r.status, 429, r.text);
    assert.equal(r.headers.get('x-should-retry'), 'false');
    const ra = Number(r.headers.get('retry-after'));
    assert.ok(ra >= Math.floor(reset) - 2, `Retry-After ${ra} s, but the month resets in ${reset.toFixed(0)} s`);
    assert.ok(ra <= Math.ceil(reset) + 60, `Retry-After ${ra} s, long after the reset in ${reset.toFixed(0)} s`);
  });

  test('the openai SDK with its default retries gives up on a budget 429 at once', async () => {
    // The SDK runs in a child process: without x-should-retry: false it
    // would sleep for the whole Retry-After (hours) before retrying, and a
    // test must fail then, not hang. The child reports what it saw.
    const script = `
      import OpenAI from 'openai';
      let fetches = 0;
      const client = new OpenAI({ baseURL: process.env.GW + '/v1', apiKey: process.env.KEY, timeout: 20000,
        defaultHeaders: { 'x-request-id': process.env.RID },
        fetch: (url, init) => { fetches++; return fetch(url, init); } });
      const t0 = Date.now();
      const out = { maxRetries: client.maxRetries };
      try {
        await client.chat.completions.create({ model: 'small', messages: [{ role: 'user', content: 'please?' }] });
        out.resolved = true;
      } catch (err) {
        Object.assign(out, { cls: err?.constructor?.name, rateLimit: err instanceof OpenAI.RateLimitError,
          status: err.status, code: err.code });
      }
      out.ms = Date.now() - t0;
      out.fetches = fetches;
      console.log(JSON.stringify(out));
    `;
    // Counted by its own request id: the earlier tests' access lines for this
    // tenant come through the asynchronous log writer and may land later.
    const rid = `sdk-once-${process.pid}-${Date.now()}`;
    const mine = () => accessLines(gw, 'daily').filter((l) => l.request_id === rid).length;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: SOURCE_DIR, env: { ...process.env, GW: gw.url, KEY: KEYS.daily, RID: rid }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (out += d));
    const exited = await Promise.race([
      new Promise((r) => child.once('exit', () => r(true))),
      sleep(5000).then(() => false),
    ]);
    if (!exited) child.kill('SIGKILL');
    await gw.waitForLog(() => mine() >= 1, 5000);
    await sleep(300);
    const seenAtGateway = mine();
    assert.ok(exited, `the SDK had not given up after 5 s (it is waiting to retry); the gateway saw ${seenAtGateway} ` +
      `request(s); child output: ${out}`);
    const r = JSON.parse(out.trim().split('\n').at(-1));
    assert.equal(r.maxRetries, 2, 'the SDK default this test relies on');
    assert.ok(r.rateLimit, `got ${r.cls}: ${out}`);
    assert.equal(r.status, 429);
    assert.equal(r.code, 'budget_exceeded');
    assert.equal(r.fetches, 1, 'the SDK sent the request once, no retry');
    assert.equal(seenAtGateway, 1, 'the gateway saw one request');
    assert.ok(r.ms < 2000, `gave up after ${r.ms} ms`);
  });

  test('a rate-limit 429: Retry-After no shorter than the window\'s reset', async () => {
    const first = await call(gw, chatBody('one', { model: 'small' }), KEYS.rpm);
    assert.equal(first.status, 200, first.text);
    const r = await call(gw, chatBody('two', { model: 'small' }), KEYS.rpm);
    assert.equal(r.status, 429, r.text);
    assert.equal(r.json.error.code, 'rate_limit_exceeded');
    const reset = Number.parseFloat(r.headers.get('x-ratelimit-reset-requests'));
    const ra = Number(r.headers.get('retry-after'));
    assert.ok(reset > 50, `reset ${reset} s for an RPM of 1 just used`);
    assert.ok(ra >= Math.floor(reset), `Retry-After ${ra} s, but the window resets in ${reset} s`);
    // a rate limit is worth retrying later: no x-should-retry: false
    assert.notEqual(r.headers.get('x-should-retry'), 'false');
    // tokens per minute, the same: two requests in flight at once reserve
    // twice their estimate, more than 60 (once one has settled, Redis
    // counts its real tokens instead)
    const ask = () => call(gw, chatBody('one [[peer:delay_ms=300]]', { model: 'small', max_tokens: 25 }), KEYS.tpm);
    const both = await Promise.all([ask(), ask()]);
    assert.deepEqual(both.map((x) => x.status).sort(), [200, 429], both.map((x) => x.text).join('\n'));
    const t2 = both.find((x) => x.status === 429);
    assert.equal(t2.json.error.code, 'rate_limit_exceeded');
    const treset = Number.parseFloat(t2.headers.get('x-ratelimit-reset-tokens'));
    const tra = Number(t2.headers.get('retry-after'));
    assert.ok(treset > 0, `x-ratelimit-reset-tokens ${t2.headers.get('x-ratelimit-reset-tokens')}`);
    assert.ok(tra >= Math.floor(treset), `Retry-After ${tra} s, but the token window resets in ${treset} s`);
  });

  test('a client traceparent reaches the upstream with the same trace id; tracestate unchanged', async () => {
    await small.reset();
    const r = await call(gw, chatBody('traced', { model: 'small' }), KEYS.named,
      { traceparent: TRACEPARENT, tracestate: 'vendor1=opaque,vendor2=x' });
    assert.equal(r.status, 200, r.text);
    const h = (await small.stats()).last_headers;
    const m = TRACEPARENT_RE.exec(h.traceparent || '');
    assert.ok(m, `upstream traceparent: ${h.traceparent}`);
    assert.equal(m[1], TRACE_ID);
    assert.notEqual(m[2], '0000000000000000');
    assert.equal(h.tracestate, 'vendor1=opaque,vendor2=x');
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'trace' && l.trace_id === TRACE_ID);
    assert.equal(accessLines(gw, 'trace').filter((l) => l.trace_id === TRACE_ID).length, 1);
    assert.equal(line.key_id, 'ci-runner', JSON.stringify(line));
    assert.equal(line.status, 200);
    // a stream carries it too
    const s = await call(gw, chatBody('traced stream', { model: 'small', stream: true }), KEYS.named,
      { traceparent: TRACEPARENT });
    assert.equal(s.status, 200);
    const sm = TRACEPARENT_RE.exec((await small.stats()).last_headers.traceparent || '');
    assert.ok(sm && sm[1] === TRACE_ID, `streamed request's upstream traceparent: ${sm}`);
    // Its access line is written after the last byte of the stream, through
    // the asynchronous log writer: wait for it, or the next test counts it.
    await gw.waitForLog(() => accessLines(gw, 'trace').filter((l) => l.trace_id === TRACE_ID).length === 2, 5000);
  });

  test('without a traceparent (or with an invalid one) the upstream gets a fresh valid one', async () => {
    await small.reset();
    const invalid = [
      undefined,
      'garbage',
      `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`,   // all-zero trace id
      `00-${TRACE_ID}-${'0'.repeat(16)}-01`,        // all-zero parent id
      `ff-${TRACE_ID}-00f067aa0ba902b7-01`,         // version ff is invalid
      `00-${TRACE_ID.toUpperCase()}-00f067aa0ba902b7-01`, // upper-case hex is invalid
    ];
    const ids = [];
    const from = accessLines(gw, 'trace').length;
    for (const tp of invalid) {
      const r = await call(gw, chatBody(`fresh ${ids.length}`, { model: 'small' }), KEYS.plain1,
        tp === undefined ? {} : { traceparent: tp });
      assert.equal(r.status, 200, r.text);
      const h = (await small.stats()).last_headers;
      const m = TRACEPARENT_RE.exec(h.traceparent || '');
      assert.ok(m, `sent ${tp}, upstream got traceparent ${h.traceparent}`);
      assert.notEqual(m[1], '0'.repeat(32));
      assert.notEqual(m[2], '0'.repeat(16));
      if (tp !== undefined && tp.length === 55) assert.notEqual(m[1], TRACE_ID, `sent ${tp}`);
      ids.push(m[1]);
    }
    assert.equal(new Set(ids).size, ids.length, `trace ids repeat: ${ids}`);
    // the access log carries the trace id the upstream saw, and the plain key's id
    const lines = await newAccess(gw, 'trace', from, ids.length);
    assert.deepEqual(lines.map((l) => l.trace_id), ids);
    for (const l of lines) assert.equal(l.key_id, 'trace#2', JSON.stringify(l));
  });

  test('the access log: key ids, the error code on failures, escalated and fallback fields', async () => {
    // the plain hash at index 1 of tenant "trace"'s keys (index 0 is the named key)
    let from = accessLines(gw, 'trace').length;
    const ok = await call(gw, chatBody('key zero', { model: 'small' }), KEYS.plain0);
    assert.equal(ok.status, 200);
    let [line] = await newAccess(gw, 'trace', from);
    assert.equal(line.key_id, 'trace#1', JSON.stringify(line));
    assert.ok(!line.escalated, JSON.stringify(line));
    assert.ok(!line.fallback, `no fallback: ${JSON.stringify(line)}`);
    assert.ok(!line.error_code, `no error: ${JSON.stringify(line)}`);
    // an upstream failure: the line carries the code the client got
    from = accessLines(gw, 'trace').length;
    const bad = await call(gw, chatBody('fail [[peer:status=503]]', { model: 'small' }), KEYS.named);
    assert.ok(bad.status >= 500, bad.text);
    [line] = await newAccess(gw, 'trace', from);
    assert.equal(line.status, bad.status);
    assert.equal(line.error_code, bad.json.error.code, JSON.stringify(line));
    assert.equal(line.key_id, 'ci-runner');
    // a budget refusal too
    from = accessLines(gw, 'daily').length;
    await call(gw, chatBody('over budget', { model: 'small' }), KEYS.daily);
    [line] = await newAccess(gw, 'daily', from);
    assert.equal(line.status, 429);
    assert.equal(line.error_code, 'budget_exceeded', JSON.stringify(line));
    assert.equal(line.key_id, 'daily#0');
    // escalated: a long answer in the cascade zone goes to the large tier
    from = accessLines(gw, 'zone').length;
    const esc = await call(gw, chatBody('one two three four five six', { model: 'auto' }), KEYS.zone);
    assert.equal(esc.status, 200, esc.text);
    assert.equal(esc.headers.get('x-cascade-escalated'), 'true');
    [line] = await newAccess(gw, 'zone', from);
    assert.equal(line.escalated, true, JSON.stringify(line));
    assert.equal(line.tier, 'large');
    from = accessLines(gw, 'zone').length;
    const kept = await call(gw, chatBody('hi', { model: 'auto' }), KEYS.zone);
    assert.equal(kept.headers.get('x-cascade-escalated'), 'false');
    [line] = await newAccess(gw, 'zone', from);
    assert.ok(!line.escalated, JSON.stringify(line));
  });

  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});
