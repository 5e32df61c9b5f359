// remote_failover.test.mjs: the remote engine's transport (issue 15).
//
// Real cascaded, real scripted upstreams (peer.mjs), real TLS made with the
// openssl CLI. What a client and an operator would notice:
//   - retries: a replica that answers 5xx, 429 or nothing at all costs an
//     attempt, not the request: the other replica answers, the client gets
//     ONE answer (JSON or SSE), and /metrics counts every attempt by outcome;
//   - a lone replica failing every attempt: 502, 503 (with the upstream's
//     Retry-After) or 504 in OpenAI's error format, after exactly
//     retry.attempts tries; an upstream 400 passes through, tried once;
//   - outlier ejection: a replica that keeps failing stops getting requests
//     (the peer's counters say so) and comes back once it is healthy, through
//     the prober or through one trial request;
//   - HTTPS: a private CA (tls.ca_file), host name and IP address checks,
//     keep-alive connections reused, a connection the server closed replaced
//     without a failed attempt; a wrong host name or an untrusted CA is a
//     clear 502, and the gateway lives on;
//   - API keys from api_key_env and api_key_file reach the upstream as Bearer,
//     and --check-config reads no secret.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, BUILD_DIR, PEER_SCRIPT, authHeaders, chatBody, cleanupAfterAll, makeConfig, peerReply, runToEnd,
  sleep, spawnReady, sseParse, startGateway, startPeer, tier, until,
} from '../support/harness.mjs';

cleanupAfterAll();

let seq = 0;
// A text no earlier request used, so no cache answers it.
const fresh = (extra = '') => `question ${++seq} ${Date.now()} ${extra}`.trim();

// Stop a gateway and check it went cleanly: exit 0 on SIGTERM, and nothing
// from a sanitizer (ASan builds report leaks and errors on their way out).
async function stopClean(gw) {
  if (!gw) return;
  const r = await gw.stop();
  assert.equal(r.code, 0, `cascaded exited with ${JSON.stringify(r)}:\n${gw.logs()}`);
  assert.doesNotMatch(gw.logs(), /Sanitizer|runtime error:/);
}

function post(gw, body) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: JSON.stringify(body) });
}

function assertOpenAIError(obj, what) {
  assert.ok(obj && typeof obj.error === 'object', `${what}: ${JSON.stringify(obj)}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in obj.error, `${what}: no error.${k}`);
}

// The samples of /metrics as [{name, labels, value}].
async function metrics(gw) {
  const res = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  const out = [];
  for (const line of (await res.text()).split('\n')) {
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// The sum of name's samples whose labels include `match`.
function metric(samples, name, match = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

// One chat answer's text, from JSON or from an SSE stream; fails on an error.
async function answerText(res, stream) {
  const text = await res.text();
  assert.equal(res.status, 200, text);
  if (!stream) return JSON.parse(text).choices[0].message.content;
  const events = sseParse(text); // objects, and '[DONE]'
  assert.equal(events.filter((e) => e === '[DONE]').length, 1, `one [DONE] in ${text}`);
  assert.equal(events.at(-1), '[DONE]');
  let content = '';
  for (const e of events) {
    if (e === '[DONE]') continue;
    assert.ok(!e.error, `an error event in ${text}`);
    content += e.choices?.[0]?.delta?.content ?? '';
  }
  return content;
}

// A peer with extra command-line arguments (TLS, keep-alive), and control
// requests over https when it serves TLS (its certificate may be the wrong
// one on purpose, so the control client does not check it).
async function startPeerWith(name, args, { tls = false } = {}) {
  const h = await spawnReady(process.execPath, [PEER_SCRIPT, '--port', '0', '--name', name, ...args], /PEER_PORT=(\d+)/,
    { name: `peer ${name}` });
  const port = Number(h.match[1]);
  const control = (method, p, body) => new Promise((resolve, reject) => {
    const opts = { host: '127.0.0.1', port, method, path: p, rejectUnauthorized: false,
      headers: body ? { 'content-type': 'application/json' } : {} };
    const req = (tls ? https : http).request(opts, (res) => {
      let data = '';
      res.setEncoding('utf8').on('data', (d) => (data += d)).on('end', () => resolve(JSON.parse(data)));
    });
    req.on('error', reject);
    req.end(body ? JSON.stringify(body) : undefined);
  });
  return {
    name, port, stop: () => h.stop(),
    stats: () => control('GET', '/_stats'),
    requests: () => control('GET', '/_requests'),
    reset: () => control('POST', '/_reset'),
    script: (o) => control('POST', '/_script', o),
  };
}

describe('retries over replicas', () => {
  let a, b, gw;
  before(async () => {
    a = await startPeer({ name: 'a' });
    b = await startPeer({ name: 'b' });
    const t = tier({ urls: [a.url, b.url], chunkTimeoutMs: 300, timeoutMs: 10000, retry: { attempts: 2, backoff_ms: 10 } });
    t.engine.eject_after = 0; // this suite looks at retries alone; ejection has its own
    gw = await startGateway({ config: makeConfig({ tiers: [t] }) });
  });
  after(async () => {
    await stopClean(gw);
    await a?.stop();
    await b?.stop();
  });

  // n requests, each failing on a in the way `directive` says; b answers
  // every one, once; a's failures are counted under `outcome`.
  async function failover(directive, outcome, stream) {
    await a.reset();
    await b.reset();
    const before = await metrics(gw);
    const n = 6;
    for (let i = 0; i < n; i++) {
      const text = fresh(directive);
      const t0 = Date.now();
      const res = await post(gw, chatBody(text, { model: 'small', stream }));
      const got = await answerText(res, stream);
      assert.equal(got, peerReply(chatBody(text), 'b').content, 'the answer is b\'s, whole and once');
      assert.ok(Date.now() - t0 < 5000, 'no request waited for the whole timeout');
    }
    const [sa, sb, m] = [await a.stats(), await b.stats(), await metrics(gw)];
    assert.equal(sb.requests, n, 'b answered each request exactly once');
    assert.ok(sa.requests >= 1, `a was tried (${sa.requests} times)`);
    const d = (name, match) => metric(m, name, match) - metric(before, name, match);
    assert.equal(d('cascade_upstream_attempts_total', { replica: a.url, outcome }), sa.requests);
    assert.equal(d('cascade_upstream_retries_total', { replica: a.url }), sa.requests);
    assert.equal(d('cascade_upstream_attempts_total', { replica: b.url, outcome: 'ok' }), n);
    assert.equal(d('cascade_upstream_attempts_total', { replica: b.url }), n);
    assert.equal(d('cascade_requests_total', { code: '200' }), n, 'every client got 200');
    const tiers = new Set(m.filter((s) => s.name === 'cascade_upstream_attempts_total').map((s) => s.labels.tier));
    assert.deepEqual([...tiers], ['small']);
  }

  test('a 5xx is retried on the other replica (JSON and SSE)', async () => {
    await failover('[[peer@a:status=500]]', 'http_5xx', false);
    await failover('[[peer@a:status=502]]', 'http_5xx', true);
  });

  test('a 429 is retried on the other replica', async () => {
    await failover('[[peer@a:status=429]] [[peer@a:retry_after=7]]', 'http_429', false);
  });

  test('a replica that never answers costs chunk_timeout_ms, not the request', async () => {
    await failover('[[peer@a:hang]]', 'timeout', true);
  });

  test('a connection closed before any answer is retried', async () => {
    await failover('[[peer@a:close]]', 'connect_error', false);
  });

  test('a stream cut after output reached the client is not retried: it ends with one error event', async () => {
    await a.reset();
    await b.reset();
    const res = await post(gw, chatBody(fresh('[[peer:close_after=2]]'), { model: 'small', stream: true }));
    assert.equal(res.status, 200);
    const events = sseParse(await res.text());
    assert.ok(!events.includes('[DONE]'));
    const errors = events.filter((e) => e !== '[DONE]' && e.error);
    assert.equal(errors.length, 1, JSON.stringify(events));
    assert.equal(errors[0].error.code, 'upstream_disconnected');
    const content = events.filter((e) => e !== '[DONE]' && !e.error).map((e) => e.choices?.[0]?.delta?.content ?? '').join('');
    assert.equal(content, 'echo: question ', 'the two pieces sent, and nothing of a second answer');
    assert.equal((await a.stats()).requests + (await b.stats()).requests, 1, 'one upstream request');
  });
});

describe('a lone replica that keeps failing', () => {
  let p, gw;
  before(async () => {
    p = await startPeer({ name: 'lone' });
    gw = await startGateway({
      config: makeConfig({
        tiers: [tier({ urls: [p.url], chunkTimeoutMs: 250, timeoutMs: 20000,
          retry: { attempts: 3, backoff_ms: 20 } })],
      }),
    });
  });
  after(async () => {
    await stopClean(gw);
    await p?.stop();
  });

  async function exhausted(directive, status, code, stream = false) {
    await p.reset();
    const t0 = Date.now();
    const res = await post(gw, chatBody(fresh(directive), { model: 'small', stream }));
    const body = await res.json();
    assert.equal(res.status, status, JSON.stringify(body));
    assertOpenAIError(body, directive);
    assert.equal(body.error.code, code);
    assert.equal((await p.stats()).requests, 3, 'retry.attempts tries, on the one replica');
    assert.ok(Date.now() - t0 < 10000);
    return { res, body };
  }

  test('5xx every time: 502 after 3 attempts', async () => {
    await exhausted('[[peer:status=500]]', 502, 'upstream_error');
  });

  test('429 every time: 503 with the upstream\'s Retry-After', async () => {
    const { res, body } = await exhausted('[[peer:status=429]] [[peer:retry_after=7]]', 503, 'upstream_overloaded');
    assert.equal(res.headers.get('retry-after'), '7');
    assert.match(body.error.message, /429/);
  });

  test('503 with an HTTP-date Retry-After: 503, the date as seconds', async () => {
    const date = new Date(Date.now() + 30000).toUTCString();
    const { res } = await exhausted(`[[peer:status=503]] [[peer:retry_after=${date}]]`, 503, 'upstream_unavailable');
    const ra = Number(res.headers.get('retry-after'));
    assert.ok(ra >= 25 && ra <= 31, `Retry-After ${ra}`);
  });

  test('no answer at all: 504 after 3 attempts, well within timeout_ms', async () => {
    await exhausted('[[peer:hang]]', 504, 'upstream_timeout', true);
  });

  test('an upstream 400 is the client\'s: passed through, tried once', async () => {
    await p.reset();
    const res = await post(gw, chatBody(fresh('[[peer:status=400]]'), { model: 'small' }));
    const body = await res.json();
    assert.equal(res.status, 400);
    assertOpenAIError(body, '400');
    assert.equal((await p.stats()).requests, 1);
  });
});

describe('a kept-alive connection the upstream closed as we sent', () => {
  let p, gw;
  before(async () => {
    p = await startPeer({ name: 'ka' });
    const t = tier({ urls: [p.url], chunkTimeoutMs: 2000, timeoutMs: 10000, retry: { attempts: 1, backoff_ms: 0 } });
    t.engine.eject_after = 1;
    // one worker: the second request surely goes out on the first one's connection
    gw = await startGateway({ config: makeConfig({ tiers: [t], workers: 1 }) });
  });
  after(async () => {
    await stopClean(gw);
    await p?.stop();
  });

  test('is forgiven once: a fresh connection, no attempt used, no blame', async () => {
    await answerText(await post(gw, chatBody(fresh(), { model: 'small' })), false);
    await p.script({ directives: { close: true }, count: 1 }); // the next request finds its connection closed
    const text = fresh();
    assert.equal(await answerText(await post(gw, chatBody(text, { model: 'small' })), false),
      peerReply(chatBody(text), 'ka').content);
    const m = await metrics(gw);
    assert.equal(metric(m, 'cascade_upstream_attempts_total', { replica: p.url, outcome: 'connect_error' }), 1);
    assert.equal(metric(m, 'cascade_upstream_ejected', { replica: p.url }), 0, 'eject_after 1, yet not ejected');
    // twice in one request: the second is a failure like any other
    await p.script({ directives: { close: true }, count: 2 });
    const res = await post(gw, chatBody(fresh(), { model: 'small' }));
    const body = await res.json();
    assert.equal(res.status, 502, JSON.stringify(body));
    assert.equal(body.error.code, 'upstream_unreachable');
    assert.equal(metric(await metrics(gw), 'cascade_upstream_ejected', { replica: p.url }), 1);
  });
});

describe('outlier ejection', () => {
  let a, b;
  before(async () => {
    a = await startPeer({ name: 'ea' });
    b = await startPeer({ name: 'eb' });
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
  });

  // A gateway over a and b that ejects after 2 failures in a row, for
  // ejectMs at first; the prober asks /health every healthMs.
  function gateway(healthMs, ejectMs) {
    const t = tier({ name: 'small', urls: [a.url, b.url], chunkTimeoutMs: 2000, timeoutMs: 10000,
      retry: { attempts: 2, backoff_ms: 0 } });
    Object.assign(t.engine, { eject_after: 2, eject_ms: ejectMs, health_interval_ms: healthMs, health_path: '/health' });
    return startGateway({ config: makeConfig({ tiers: [t] }) });
  }

  const ejected = async (gw) => metric(await metrics(gw), 'cascade_upstream_ejected', { replica: a.url });

  // n requests, one at a time; every one must be answered.
  async function send(gw, n) {
    for (let i = 0; i < n; i++) {
      const res = await post(gw, chatBody(fresh(), { model: 'small' }));
      assert.equal(res.status, 200, await res.text());
    }
  }

  const logged = (gw, re) => gw.waitForLog((l) => re.test(l.msg ?? '') && l.msg.includes(a.url), 5000);

  test('a failing replica is ejected, then the prober brings it back', async () => {
    const gw = await gateway(100, 1500);
    try {
      await a.reset();
      await b.reset();
      await a.script({ directives: { status: '500' }, count: 1000 });
      await send(gw, 8);
      assert.equal((await a.stats()).requests, 2, 'two failures in a row, then no more requests');
      assert.equal((await b.stats()).requests, 8);
      assert.equal(await ejected(gw), 1);
      await logged(gw, /ejected for 1500 ms/);
      // healthy again: the prober sees /health answer once the ejection is over
      await a.reset();
      await until(async () => (await ejected(gw)) === 0, 5000, 'the return');
      await logged(gw, /is back from ejection/);
      await b.reset();
      await send(gw, 10);
      assert.ok((await a.stats()).requests >= 3, 'a takes its share again');
    } finally {
      await stopClean(gw);
    }
  });

  test('without the prober, one trial request at a time; a failed trial ejects for twice as long', async () => {
    // The prober looks once, at start: only trial requests can bring a back.
    const gw = await gateway(3600000, 1000);
    try {
      await a.reset();
      await b.reset();
      await a.script({ directives: { status: '500' }, count: 3 }); // 2 to eject, then the first trial
      await send(gw, 6);
      assert.equal((await a.stats()).requests, 2);
      await logged(gw, /ejected for 1000 ms/);
      await sleep(1200);
      // probation: requests go on as usual until one of them is a's trial
      await until(async () => {
        await send(gw, 1);
        return (await a.stats()).requests === 3;
      }, 5000, 'a trial request');
      await logged(gw, /ejected for 2000 ms/);
      assert.equal(await ejected(gw), 1);
      await send(gw, 6);
      assert.equal((await a.stats()).requests, 3, 'no request while ejected');
      await sleep(2200);
      await until(async () => {
        await send(gw, 1);
        return (await ejected(gw)) === 0;
      }, 5000, 'a successful trial');
      assert.equal((await a.stats()).requests, 4, 'one trial, and it brought a back');
      await logged(gw, /is back from ejection/);
    } finally {
      await stopClean(gw);
    }
  });
});

// ---- HTTPS ------------------------------------------------------------------

// Where a peer reached as "localhost" should listen: "::" (both families) when
// this machine has IPv6, since the resolver may give ::1 before 127.0.0.1.
function localhostListen() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve('127.0.0.1'));
    s.listen(0, '::', () => s.close(() => resolve('::')));
  });
}

// A throwaway CA and certificates from the openssl CLI.
function makePki(dir) {
  const ossl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ca = (name) => {
    ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`,
      '-days', '2', '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  };
  const leaf = (name, caName, san) => {
    ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.pem`, '-CAkey', `${caName}.key`, '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
  };
  ca('ca');
  ca('other-ca');
  leaf('server', 'ca', 'DNS:localhost,IP:127.0.0.1');
  leaf('wrong', 'ca', 'DNS:wrong.example');
  return (f) => path.join(dir, f);
}

describe('https upstreams', () => {
  let dir, file, good, wrong, gw;
  before(async () => {
    try {
      execFileSync('openssl', ['version'], { stdio: 'pipe' });
    } catch (e) {
      throw new Error(`the openssl CLI is needed to make the test CA: ${e.message}`);
    }
    dir = mkdtempSync(path.join(tmpdir(), 'cascade-tls-'));
    file = makePki(dir);
    const host = await localhostListen();
    good = await startPeerWith('tls', ['--host', host, '--tls-cert', file('server.pem'), '--tls-key', file('server.key'),
      '--keep-alive-ms', '400'], { tls: true });
    wrong = await startPeerWith('wrong', ['--host', host, '--tls-cert', file('wrong.pem'), '--tls-key', file('wrong.key')],
      { tls: true });
    const t = (name, url, ca, extra = {}) => {
      const x = tier({ name, model: `m-${name}`, urls: [url], chunkTimeoutMs: 2000, timeoutMs: 10000,
        retry: { attempts: 1, backoff_ms: 0 } });
      x.engine.tls = { ca_file: ca };
      Object.assign(x.engine, extra);
      return x;
    };
    const tiers = [
      t('secure', `https://localhost:${good.port}`, file('ca.pem'), { health_interval_ms: 100 }),
      t('byip', `https://127.0.0.1:${good.port}/v1`, file('ca.pem')),
      t('wronghost', `https://localhost:${wrong.port}`, file('ca.pem'), { eject_after: 0 }),
      t('untrusted', `https://localhost:${good.port}`, file('other-ca.pem'), { eject_after: 0 }),
      t('bulk', `https://127.0.0.1:${good.port}`, file('ca.pem'), { max_response_bytes: 1 << 30 }),
      t('nopool', `https://localhost:${good.port}`, file('ca.pem'), { max_idle_per_replica: 0 }),
    ];
    tiers.find((x) => x.name === 'bulk').max_output_tokens = 1 << 24;
    gw = await startGateway({ config: makeConfig({ tiers }) });
  });
  after(async () => {
    await stopClean(gw);
    await good?.stop();
    await wrong?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a private CA: stream and JSON answers, keep-alive connections reused', async () => {
    await good.reset();
    for (let i = 0; i < 8; i++) {
      const text = fresh();
      const stream = i % 2 === 1;
      const got = await answerText(await post(gw, chatBody(text, { model: 'm-secure', stream })), stream);
      assert.equal(got, peerReply(chatBody(text), 'tls').content);
    }
    const st = await good.stats();
    assert.equal(st.requests, 8);
    // one pool per worker (2): at most one connection each for sequential requests
    assert.ok(st.connections <= 2, `${st.connections} connections for 8 sequential requests`);
  });

  test('a kept-alive TLS connection adds no delayed-ACK stall (TCP_NODELAY)', async () => {
    // Without TCP_NODELAY, a request's second TLS record waited for the
    // upstream's delayed ACK: 40 ms each, on a connection from the pool.
    // Every request on a pooled connection paid it, so even the fastest one
    // of several shows it (a busy machine slows some, never all).
    for (let i = 0; i < 4; i++) await answerText(await post(gw, chatBody(fresh(), { model: 'm-secure' })), false);
    const ms = [];
    for (let i = 0; i < 11; i++) {
      const t0 = Date.now();
      await answerText(await post(gw, chatBody(fresh(), { model: 'm-secure' })), false);
      ms.push(Date.now() - t0);
    }
    ms.sort((x, y) => x - y);
    assert.ok(ms[0] < 25, `the fastest of 11 requests took ${ms[0]} ms: ${ms}`);
  });

  test('a new connection resumes the replica\'s TLS session', async () => {
    await good.reset();
    for (let i = 0; i < 6; i++) await answerText(await post(gw, chatBody(fresh(), { model: 'm-nopool' })), false);
    const st = await good.stats();
    assert.equal(st.connections, 6, 'max_idle_per_replica 0: a connection per request');
    // the first connection of each worker may have nothing to resume yet
    assert.ok(st.resumed >= 4, `${st.resumed} of 6 connections resumed a session`);
  });

  test('an IP literal is checked against the certificate\'s IP addresses', async () => {
    const text = fresh();
    assert.equal(await answerText(await post(gw, chatBody(text, { model: 'm-byip' })), false),
      peerReply(chatBody(text), 'tls').content);
  });

  test('a connection the server closed while idle is replaced, not reused', async () => {
    await answerText(await post(gw, chatBody(fresh(), { model: 'm-secure' })), false);
    await sleep(900); // the peer closes idle connections after 400 ms
    const before = await metrics(gw);
    for (let i = 0; i < 4; i++) await answerText(await post(gw, chatBody(fresh(), { model: 'm-secure', stream: true })), true);
    const m = await metrics(gw);
    const url = `https://localhost:${good.port}`;
    const d = (o) => metric(m, 'cascade_upstream_attempts_total', { replica: url, tier: 'secure', outcome: o }) -
      metric(before, 'cascade_upstream_attempts_total', { replica: url, tier: 'secure', outcome: o });
    assert.equal(d('ok'), 4);
    assert.equal(d('connect_error'), 0, 'no attempt went out on a dead connection');
  });

  test('a certificate for another host name is refused: 502, a clear message', async () => {
    const res = await post(gw, chatBody(fresh(), { model: 'm-wronghost' }));
    const body = await res.json();
    assert.equal(res.status, 502, JSON.stringify(body));
    assertOpenAIError(body, 'wrong host');
    assert.match(body.error.message, /certificate verify failed: hostname mismatch/i);
    assert.equal((await wrong.stats()).requests, 0, 'no request crossed the refused connection');
  });

  test('an untrusted CA is refused; the gateway lives on', async () => {
    const res = await post(gw, chatBody(fresh(), { model: 'm-untrusted' }));
    const body = await res.json();
    assert.equal(res.status, 502, JSON.stringify(body));
    assert.match(body.error.message, /certificate verify failed/);
    const text = fresh();
    assert.equal(await answerText(await post(gw, chatBody(text, { model: 'm-secure' })), false),
      peerReply(chatBody(text), 'tls').content);
  });

  test('a client that stops reading holds the TLS upstream back too', async () => {
    await good.reset();
    const payload = JSON.stringify(chatBody('flood [[peer:endless]] [[peer:piece_bytes=8000]]',
      { model: 'm-bulk', stream: true, max_tokens: 10000000 }));
    const sock = net.connect(gw.port, '127.0.0.1');
    sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${authHeaders().authorization}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
    const head = await new Promise((resolve, reject) => {
      sock.once('data', (d) => {
        sock.pause(); // from here on the client reads nothing
        resolve(d.toString('latin1'));
      });
      sock.on('error', reject);
    });
    assert.match(head, /^HTTP\/1\.1 200/);
    await sleep(2500);
    const sent = (await good.stats()).bytes_sent;
    sock.destroy();
    // Unchecked, the peer pushes tens of MB a second; held back, only the
    // socket buffers on both hops fill.
    assert.ok(sent < 32 * 1024 * 1024, `the peer sent ${(sent / 1048576).toFixed(1)} MiB to a client that reads nothing`);
    await until(async () => (await good.stats()).aborted === 1, 5000, 'the upstream request is cancelled');
  });

  test('the prober checks https replicas over TLS, with the same verification', async () => {
    // a tier's entry: "ready"/"down", or {"state": "up"|"down", ...}
    const up = (body, name) => ['up', 'ready'].includes(body.tiers?.[name]?.state ?? body.tiers?.[name]);
    await until(async () => {
      const body = await (await fetch(`${gw.url}/readyz`)).json();
      return up(body, 'secure') && up(body, 'byip');
    }, 5000, 'secure and byip up');
    await sleep(500); // a few more probes of the refused ones
    const body = await (await fetch(`${gw.url}/readyz`)).json();
    assert.ok(!up(body, 'wronghost'), JSON.stringify(body));
    assert.ok(!up(body, 'untrusted'), JSON.stringify(body));
  });
});

// ---- secrets ----------------------------------------------------------------

describe('API keys out of the config', () => {
  let dir, envPeer, filePeer, gw;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'cascade-secret-'));
    writeFileSync(path.join(dir, 'key.txt'), 'sk-from-file\n');
    envPeer = await startPeer({ name: 'envp', apiKey: 'sk-from-env' });
    filePeer = await startPeer({ name: 'filep', apiKey: 'sk-from-file' });
    const a = tier({ name: 'fromenv', model: 'm-env', urls: envPeer.url });
    a.engine.api_key_env = 'H6_TEST_UPSTREAM_KEY';
    const b = tier({ name: 'fromfile', model: 'm-file', urls: filePeer.url });
    b.engine.api_key_file = path.join(dir, 'key.txt');
    gw = await startGateway({ config: makeConfig({ tiers: [a, b] }), env: { H6_TEST_UPSTREAM_KEY: 'sk-from-env' } });
  });
  after(async () => {
    await stopClean(gw);
    await envPeer?.stop();
    await filePeer?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('api_key_env and api_key_file reach the upstream as Bearer', async () => {
    for (const [model, peer, key] of [['m-env', envPeer, 'sk-from-env'], ['m-file', filePeer, 'sk-from-file']]) {
      const res = await post(gw, chatBody(fresh(), { model }));
      assert.equal(res.status, 200, await res.text());
      assert.equal((await peer.stats()).last_headers.authorization, `Bearer ${key}`);
    }
    assert.ok(!gw.logs().includes('sk-from-'), 'no secret in the log');
  });

  test('--check-config reads no secret; two key sources are a config error', async () => {
    const bin = path.join(BUILD_DIR, 'gateway', 'cascaded');
    const check = async (engineExtra) => {
      const t = tier({ urls: 'http://127.0.0.1:9' });
      Object.assign(t.engine, engineExtra);
      const f = path.join(dir, `c${++seq}.json`);
      writeFileSync(f, JSON.stringify(makeConfig({ tiers: [t] })));
      return runToEnd(bin, ['-c', f, '--check-config'], { timeoutMs: 10000 });
    };
    const ok = await check({ api_key_env: 'H6_UNSET_VARIABLE', tls: { ca_file: 'no-such-ca.pem' } });
    assert.equal(ok.code, 0, ok.stderr);
    const bad = await check({ api_key: 'x', api_key_env: 'Y' });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr + bad.stdout, /tiers\[0\]\.engine\.api_key_env: give only one of/);
  });
});
