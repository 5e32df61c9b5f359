// httpd_hardening.test.mjs: the HTTP front door (common/httpd.c, common/http1.c)
// of both binaries, attacked the way a hostile client would, with real
// processes: cascaded (and cascade-engine on the stories260K model).
//
// What a user would notice: one bad packet does not take a server down; bad
// framing gets 400 and the server keeps serving; pipelined requests are
// answered in order and never wedge a connection; at the fd limit the
// gateway neither spins nor floods its log, and serves again afterwards;
// connections past max_connections_per_worker are closed at once; a client
// is told "100 Continue" only once its key is good; /metrics can require a
// token; a slow-loris head is cut while others are served; 10,000 idle
// keep-alive connections do not stop normal requests.

import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  ADMIN_TOKEN, BUILD_DIR, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig,
  rawHttp, sha256hex, spawnReady, startGateway, startPeer,
} from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL = path.join(SHARED, 'models', 'stories260K', 'stories260K.bin');
const ENGINE = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
const CASCADED = path.join(BUILD_DIR, 'gateway', 'cascaded');

// ---- helpers ---------------------------------------------------------------

// A raw client socket: write bytes, read what comes back as it comes.
function openSock(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    let closed = false;
    const waiters = [];
    const check = () => {
      for (const w of [...waiters]) {
        if (w.pred()) {
          waiters.splice(waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(data);
        }
      }
    };
    sock.on('data', (d) => {
      data += d.toString('latin1');
      check();
    });
    sock.on('close', () => {
      closed = true;
      check();
    });
    sock.on('error', () => {});
    const h = {
      sock,
      data: () => data,
      closed: () => closed,
      // until(pred, ms): resolves with the data once pred() holds; rejects after ms.
      until: (pred, ms = 5000, what = 'condition') =>
        new Promise((res, rej) => {
          if (pred()) return res(data);
          const w = { pred, resolve: res };
          w.timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(w), 1);
            rej(new Error(`${what} not met in ${ms} ms; got ${JSON.stringify(data.slice(0, 400))} closed=${closed}`));
          }, ms);
          waiters.push(w);
        }),
    };
    sock.once('connect', () => resolve(h));
    sock.once('error', reject);
  });
}

const count = (s, re) => (s.match(re) || []).length;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

// Sockets in CLOSE-WAIT on a local port: the peer closed, we never did.
function closeWaitCount(port) {
  let n = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4) continue;
      if (parseInt(f[1].split(':')[1], 16) === port && f[3] === '08') n++;
    }
  }
  return n;
}

// A shell wrapper that runs cascaded under a given fd limit (exec keeps the pid).
function limitedCascaded(nofile) {
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-ulimit-'));
  const file = path.join(dir, 'cascaded.sh');
  writeFileSync(file, `#!/bin/sh\nulimit -n ${nofile} || exit 3\nexec "${CASCADED}" "$@"\n`);
  chmodSync(file, 0o755);
  return file;
}

async function healthz(gw) {
  const r = await fetch(`${gw.url}/healthz`);
  return r.status;
}

let peer;
async function getPeer() {
  if (!peer) peer = await startPeer({ name: 'up' });
  return peer;
}

// ---- bad bytes -------------------------------------------------------------

test('a NUL byte in the head gets 400 and cascaded keeps serving', async () => {
  const gw = await startGateway({ config: makeConfig({ upstream: (await getPeer()).url }) });
  const attacks = [
    '\0\r\n\r\n',
    'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n',
    'GET /heal\0thz HTTP/1.1\r\nHost: a\r\n\r\n',
    '\0',
    'GET /healthz HTTP/1.1\r\nHost: a\r\n\0\r\n\r\n',
  ];
  for (const a of attacks) {
    const r = await rawHttp(gw.port, Buffer.from(a, 'latin1'), { timeoutMs: 3000 });
    if (a !== '\0') assert.match(r.data, /^HTTP\/1\.1 400 /, `answer to ${JSON.stringify(a)}`);
    assert.equal(await healthz(gw), 200, `healthz after ${JSON.stringify(a)}`);
  }
  assert.equal(gw.proc.exitCode, null, 'cascaded still running');
  await gw.stop();
});

test('a NUL byte in the head gets 400 and cascade-engine keeps serving', async () => {
  assert.ok(existsSync(ENGINE), `${ENGINE} missing: build cascade-engine (or set CASCADE_BUILD_DIR)`);
  assert.ok(existsSync(MODEL), `model missing at ${MODEL}: the shared stories260K model is needed`);
  const eng = await spawnReady(ENGINE, ['--listen', '127.0.0.1:0', '--model', MODEL, '--threads', '1'],
    /ENGINE_PORT=(\d+)/, { name: 'cascade-engine', timeoutMs: 20000 });
  const port = Number(eng.match[1]);
  for (const a of ['\0\r\n\r\n', 'GET /health HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n']) {
    const r = await rawHttp(port, Buffer.from(a, 'latin1'), { timeoutMs: 3000 });
    assert.match(r.data, /^HTTP\/1\.1 400 /);
    const h = await fetch(`http://127.0.0.1:${port}/health`);
    assert.equal(h.status, 200);
  }
  assert.equal(eng.proc.exitCode, null, 'cascade-engine still running');
  await eng.stop();
});

test('ambiguous framing gets 400 (or 501/505) and the connection closes; the server keeps serving', async () => {
  const gw = await startGateway({ config: makeConfig({ upstream: (await getPeer()).url }) });
  const post = (headers, body = '') =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\n${headers}\r\n${body}`;
  const cases = [
    ['control char in a value', 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n', 400],
    ['bare LF in a value line', 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\nX-B: b\r\n\r\n', 400],
    ['bare LF line endings', 'GET /healthz HTTP/1.1\nHost: a\n\n', 400],
    ['chunk size +25', post('Transfer-Encoding: chunked\r\n', '+25\r\n' + 'x'.repeat(37) + '\r\n0\r\n\r\n'), 400],
    ['chunk size " 25"', post('Transfer-Encoding: chunked\r\n', ' 25\r\n' + 'x'.repeat(37) + '\r\n0\r\n\r\n'), 400],
    ['chunk size 0x25', post('Transfer-Encoding: chunked\r\n', '0x25\r\n' + 'x'.repeat(37) + '\r\n0\r\n\r\n'), 400],
    ['chunk line bare LF', post('Transfer-Encoding: chunked\r\n', '5\nhello\r\n0\r\n\r\n'), 400],
    ['two Transfer-Encoding', post('Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n', '0\r\n\r\n'), 400],
    ['TE in HTTP/1.0', 'POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
    ['TE and CL', post('Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', '0\r\n\r\n'), 400],
    ['two Content-Length', post('Content-Length: 2\r\nContent-Length: 2\r\n', 'ok'), 400],
    ['no Host in 1.1', 'GET /healthz HTTP/1.1\r\n\r\n', 400],
    ['two Hosts', 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
    ['obs-fold', 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n', 400],
    ['TE gzip', post('Transfer-Encoding: gzip\r\n', ''), 501],
    ['HTTP/2.0 in 1.1 syntax', 'GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n', 505],
  ];
  for (const [name, bytes, status] of cases) {
    const r = await rawHttp(gw.port, Buffer.from(bytes, 'latin1'), { timeoutMs: 3000 });
    assert.match(r.data, new RegExp(`^HTTP/1\\.1 ${status} `), `${name}: ${JSON.stringify(r.data.slice(0, 120))}`);
    assert.match(r.data, /"error":\{"message"/, `${name}: an OpenAI error body`);
    assert.ok(r.closed, `${name}: the connection closes`);
    assert.equal(await healthz(gw), 200, `healthz after ${name}`);
  }
  await gw.stop();
});

// ---- pipelining --------------------------------------------------------------

test('a pipelined request behind one in flight is answered in order; no CLOSE-WAIT; SIGTERM exits promptly', async () => {
  const up = await getPeer();
  const gw = await startGateway({
    config: makeConfig({ upstream: up.url, workers: 1, limits: { drain_timeout_ms: 10000 } }),
  });
  const chat = (text) => {
    const body = JSON.stringify(chatBody(text));
    return `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  };
  for (let round = 0; round < 3; round++) {
    const c = await openSock(gw.port);
    // The first waits at the upstream; the second (with a body larger than the
    // header limit) arrives meanwhile -- the case that wedged the connection.
    c.sock.write(chat(`[[peer:delay_ms=300]] first ${round}`) + chat(`second ${round} ${'x'.repeat(20000)}`) +
      'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
    const data = await c.until(() => count(c.data(), /HTTP\/1\.1 \d{3} /g) >= 3 && c.data().includes('"status":"ok"'),
      8000, 'three answers');
    const first = data.indexOf(`echo: first ${round}`), second = data.indexOf(`echo: second ${round}`);
    assert.ok(first > 0 && second > first, 'answers in request order');
    assert.ok(data.indexOf('"status":"ok"') > second, 'the third after the second');
    c.sock.end();
    await c.until(() => c.closed(), 3000, 'server closes after the client');
  }
  await sleep(300);
  assert.equal(closeWaitCount(gw.port), 0, 'no server socket left in CLOSE-WAIT');
  // A keep-alive connection with a request still in flight at SIGTERM.
  const idle = await openSock(gw.port);
  idle.sock.write('GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
  await idle.until(() => idle.data().includes('"status":"ok"'), 3000, 'keep-alive answer');
  const t0 = Date.now();
  const r = await gw.stop('SIGTERM', 15000);
  const ms = Date.now() - t0;
  assert.equal(r.code, 0, 'clean exit');
  assert.ok(ms < 3000, `SIGTERM exit took ${ms} ms (drain timeout 10 s)`);
});

test('max_pipelined: many pipelined requests are all answered, in order', async () => {
  const gw = await startGateway({
    config: makeConfig({ upstream: (await getPeer()).url, workers: 1, limits: { max_pipelined: 4 } }),
  });
  const c = await openSock(gw.port);
  const n = 50;
  // The first waits at the upstream, so the GETs behind it queue up: four
  // wait, then reading pauses until answers drain.
  const body = JSON.stringify(chatBody('[[peer:delay_ms=300]] first'));
  let req = `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  for (let i = 0; i < n; i++) req += `GET /healthz?i=${i} HTTP/1.1\r\nHost: a\r\n\r\n`;
  req += 'GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';
  c.sock.write(req);
  await c.until(() => c.closed(), 8000, 'all answered and closed');
  assert.equal(count(c.data(), /HTTP\/1\.1 200 /g), n + 1, c.data().slice(0, 600));
  assert.ok(c.data().indexOf('echo: first') < c.data().indexOf('"status":"ok"'), 'the chat answer first');
  assert.match(c.data(), /HTTP\/1\.1 404 [^]*$/, 'the last answer is the 404, after all 200s');
  await gw.stop();
});

test('HEAD gets headers without a body, and HTTP/1.0 keep-alive is acknowledged', async () => {
  const gw = await startGateway({ config: makeConfig({ upstream: (await getPeer()).url }) });
  const c = await openSock(gw.port);
  c.sock.write('HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
  await c.until(() => c.data().includes('"status":"ok"'), 3000, 'the GET answer');
  const [first, rest] = [c.data().slice(0, c.data().indexOf('\r\n\r\n') + 4), c.data().slice(c.data().indexOf('\r\n\r\n') + 4)];
  assert.match(first, /^HTTP\/1\.1 405 /, 'HEAD on a GET-only probe'); // the probe answers GET only
  assert.match(rest, /^HTTP\/1\.1 200 /, 'the next response starts right after the HEAD response\'s headers');
  c.sock.destroy();
  const old = await openSock(gw.port);
  old.sock.write('GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
  await old.until(() => old.data().includes('"status":"ok"'), 3000, 'the 1.0 answer');
  assert.match(old.data(), /\r\nConnection: keep-alive\r\n/i);
  // The idle time, header_timeout_ms (10000 here), in whole seconds.
  assert.match(old.data(), /\r\nKeep-Alive: timeout=10\r\n/);
  old.sock.write('GET /healthz HTTP/1.0\r\n\r\n');
  await old.until(() => old.closed(), 3000, 'closed after a plain 1.0 request');
  assert.equal(count(old.data(), /HTTP\/1\.1 200 /g), 2);
  await gw.stop();
});

// Resident memory of a process, in bytes, from /proc/<pid>/status.
function rssBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) * 1024;
}

test('a client that pipelines without reading answers gets backpressure, not a growing buffer', async () => {
  // Under ASan, freed memory sits in a quarantine (256 MB by default) and
  // shows in RSS: keep it small so RSS reflects live buffers.
  const asan = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=4'].filter(Boolean).join(':');
  const gw = await startGateway({
    config: makeConfig({ upstream: (await getPeer()).url, workers: 1 }),
    env: { ASAN_OPTIONS: asan },
  });
  const rss0 = rssBytes(gw.proc.pid);
  const c = await openSock(gw.port);
  c.sock.pause(); // never read: the answers pile up on the server's side
  const one = Buffer.from('GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
  const block = Buffer.concat(Array.from({ length: 2000 }, () => one));
  let sent = 0;
  const t0 = Date.now();
  while (Date.now() - t0 < 2000) {
    if (c.sock.writableLength < 4 << 20) {
      c.sock.write(block);
      sent += block.length;
    }
    await sleep(5);
  }
  const grown = rssBytes(gw.proc.pid) - rss0;
  process.stdout.write(`# non-reading pipeliner: ${(sent / 1e6).toFixed(1)} MB of requests offered, ` +
    `${(c.sock.writableLength / 1e6).toFixed(1)} MB still queued in the client, server RSS +${(grown / 1e6).toFixed(1)} MB\n`);
  assert.ok(c.sock.writableLength > 0, 'the server stopped reading: the client\'s writes back up');
  assert.ok(grown < 32 << 20, `server RSS grew by ${(grown / 1e6).toFixed(1)} MB`);
  c.sock.destroy();
  assert.equal(await healthz(gw), 200);
  await gw.stop();
});

// ---- connections ---------------------------------------------------------------

test('at the fd limit accept backs off: low CPU, a small log, and service resumes', async () => {
  const gw = await startGateway({
    binary: limitedCascaded(64),
    config: makeConfig({ upstream: (await getPeer()).url, workers: 1 }),
  });
  const pid = gw.proc.pid;
  const logBefore = gw.logs().length;
  const cpu0 = cpuSeconds(pid);
  const socks = [];
  for (let i = 0; i < 150; i++) {
    try {
      socks.push(await openSock(gw.port)); // the kernel completes the handshake from the backlog
    } catch {
      break;
    }
  }
  const t0 = Date.now();
  await sleep(2000);
  const cpu = cpuSeconds(pid) - cpu0;
  const wall = (Date.now() - t0) / 1000;
  const logged = gw.logs().length - logBefore;
  for (const s of socks) s.sock.destroy();
  process.stdout.write(`# at the fd limit (${socks.length} connections, limit 64 fds): ${cpu.toFixed(2)} s CPU ` +
    `and ${logged} log bytes in ${wall.toFixed(1)} s\n`);
  assert.ok(cpu < 0.5 * wall, `cascaded used ${cpu.toFixed(2)} s CPU in ${wall.toFixed(1)} s at the fd limit`);
  assert.ok(logged < 20000, `cascaded logged ${logged} bytes in ${wall.toFixed(1)} s at the fd limit`);
  assert.match(gw.logs(), /accept failed/, 'the fd exhaustion is logged');
  // Once the flood is gone, a normal request is served.
  let status = 0;
  for (let i = 0; i < 20 && status !== 200; i++) {
    await sleep(200);
    status = await healthz(gw).catch(() => 0);
  }
  assert.equal(status, 200);
  await gw.stop();
});

test('max_connections_per_worker: connections past it are closed at once', async () => {
  const gw = await startGateway({
    config: makeConfig({ upstream: (await getPeer()).url, workers: 1, limits: { max_connections_per_worker: 5 } }),
  });
  const socks = [];
  for (let i = 0; i < 5; i++) socks.push(await openSock(gw.port));
  await sleep(100);
  const extra = await openSock(gw.port);
  await extra.until(() => extra.closed(), 2000, 'the sixth connection closed at once');
  assert.ok(socks.every((s) => !s.closed()), 'the first five stay open');
  for (const s of socks) s.sock.destroy();
  await sleep(200);
  assert.equal(await healthz(gw), 200);
  await gw.stop();
});

// ---- 100-continue and /metrics ------------------------------------------------

test('100 Continue only after the key is checked', async () => {
  const gw = await startGateway({ config: makeConfig({ upstream: (await getPeer()).url }) });
  const body = JSON.stringify(chatBody('hello'));
  const head = (auth) => `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n${auth}Content-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\n\r\n`;

  const bad = await openSock(gw.port);
  bad.sock.write(head('Authorization: Bearer sk-wrong\r\n'));
  await bad.until(() => /\r\n\r\n\{.*\}\}/s.test(bad.data()), 3000, 'a 401 answer');
  assert.match(bad.data(), /^HTTP\/1\.1 401 /, 'the first thing said is 401');
  assert.doesNotMatch(bad.data(), /100 Continue/);
  assert.match(bad.data(), /"code":"invalid_api_key"/);
  await bad.until(() => bad.closed(), 3000, 'closed: the body was never read');

  const none = await openSock(gw.port);
  none.sock.write(head(''));
  await none.until(() => none.closed(), 3000, 'closed');
  assert.match(none.data(), /^HTTP\/1\.1 401 /);
  assert.doesNotMatch(none.data(), /100 Continue/);

  const good = await openSock(gw.port);
  good.sock.write(head(`Authorization: Bearer ${TEST_KEY}\r\n`));
  await good.until(() => good.data().includes('100 Continue'), 3000, '100 Continue');
  assert.match(good.data(), /^HTTP\/1\.1 100 Continue\r\n\r\n$/);
  good.sock.write(body);
  await good.until(() => /HTTP\/1\.1 200 /.test(good.data()) && good.data().includes('echo: hello'), 5000, 'the answer');
  good.sock.destroy();
  await gw.stop();
});

test('/metrics wants its token when metrics.token_sha256 is set; open by default', async () => {
  const up = await getPeer();
  const open = await startGateway({ config: makeConfig({ upstream: up.url }) });
  assert.equal((await fetch(`${open.url}/metrics`)).status, 200, 'open by default');
  await open.stop();

  const TOKEN = 'metrics-scrape-token';
  const gw = await startGateway({ config: makeConfig({ upstream: up.url, metrics: { token_sha256: sha256hex(TOKEN) } }) });
  const get = (auth) => fetch(`${gw.url}/metrics`, auth ? { headers: { authorization: `Bearer ${auth}` } } : {});
  const noToken = await get(null);
  assert.equal(noToken.status, 401);
  assert.equal(noToken.headers.get('www-authenticate'), 'Bearer');
  const err = await noToken.json();
  assert.equal(err.error.type, 'invalid_request_error');
  assert.equal(err.error.code, 'invalid_api_key');
  assert.ok('param' in err.error && 'message' in err.error);
  assert.equal((await get('wrong')).status, 401);
  assert.equal((await get(TEST_KEY)).status, 401, 'a tenant key is not a metrics token');
  const ok = await get(TOKEN);
  assert.equal(ok.status, 200);
  assert.match(await ok.text(), /cascade_requests_total/);
  assert.equal((await get(ADMIN_TOKEN)).status, 200, 'the admin token works too');
  await gw.stop();
});

// ---- slow clients and many connections ------------------------------------------

test('slowloris: a head trickled byte by byte is cut at header_timeout while others are served', async () => {
  const gw = await startGateway({
    config: makeConfig({ upstream: (await getPeer()).url, workers: 1, limits: { header_timeout_ms: 1000 } }),
  });
  const slow = await openSock(gw.port);
  const head = 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ' + 'a'.repeat(200);
  let i = 0;
  const drip = setInterval(() => {
    if (!slow.closed() && i < head.length) slow.sock.write(head[i++]);
  }, 50);
  const t0 = Date.now();
  try {
    for (let k = 0; k < 5; k++) {
      assert.equal(await healthz(gw), 200, 'others are served meanwhile');
      await sleep(100);
    }
    await slow.until(() => slow.closed(), 3000, 'the slow client is cut');
  } finally {
    clearInterval(drip);
  }
  const ms = Date.now() - t0;
  assert.ok(ms >= 800 && ms < 2500, `cut after ${ms} ms (header_timeout 1000 ms)`);
  assert.equal(slow.data(), '', 'closed without an answer');
  await gw.stop();
});

test('10,000 idle keep-alive connections, and normal requests still succeed', async () => {
  const up = await getPeer();
  const gw = await startGateway({
    binary: limitedCascaded(16384),
    config: makeConfig({ upstream: up.url, workers: 2, limits: { header_timeout_ms: 60000 } }),
  });
  const N = 10000;
  const socks = [];
  const t0 = Date.now();
  try {
    // Open them in waves, each with one keep-alive request answered.
    for (let i = 0; i < N; i += 500) {
      const wave = await Promise.all(Array.from({ length: Math.min(500, N - i) }, () => openSock(gw.port)));
      for (const s of wave) s.sock.write('GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n');
      await Promise.all(wave.map((s) => s.until(() => s.data().includes('"status":"ok"'), 10000, 'keep-alive answer')));
      socks.push(...wave);
    }
    assert.equal(socks.filter((s) => !s.closed()).length, N, 'all held open');
    const chat = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(), body: JSON.stringify(chatBody('still here')),
    });
    assert.equal(chat.status, 200);
    assert.match((await chat.json()).choices[0].message.content, /still here/);
    assert.equal(await healthz(gw), 200);
    assert.equal(socks.filter((s) => !s.closed()).length, N, 'still all open');
  } finally {
    for (const s of socks) s.sock.destroy();
  }
  process.stdout.write(`# ${N} keep-alive connections in ${Date.now() - t0} ms\n`);
  await gw.stop();
});

// ---- random bytes, split at random points ------------------------------------------

test('mutated and split requests never take cascaded down, and it exits cleanly', async () => {
  const gw = await startGateway({
    config: makeConfig({ upstream: (await getPeer()).url, workers: 2, limits: { header_timeout_ms: 2000, read_timeout_ms: 2000 } }),
  });
  const body = JSON.stringify(chatBody('hi'));
  const seeds = [
    `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nExpect: 100-continue\r\n\r\n${body}GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n`,
    `POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${TEST_KEY}\r\nContent-Type: application/json\r\n` +
      `Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)};x="y"\r\n${body}\r\n0\r\nX-T: v\r\n\r\n`,
    'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/models HTTP/1.0\r\n\r\n',
    'POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc',
  ];
  // A seeded xorshift: the same bytes on every run, so a failure reproduces.
  let x = 0x9e3779b9;
  const rnd = (n) => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
  const specials = ['\0', '\r', '\n', '\r\n', ' ', '\t', ':', ';', '0', 'f', '\x7f', '\xff', 'Transfer-Encoding: chunked\r\n',
    'Content-Length: 5\r\n', 'Host: b\r\n', 'Expect: 100-continue\r\n'];
  const mutate = (t) => {
    let b = t;
    for (let k = 1 + rnd(4); k > 0; k--) {
      const at = rnd(b.length + 1);
      switch (rnd(4)) {
        case 0: b = b.slice(0, at) + specials[rnd(specials.length)] + b.slice(at); break;
        case 1: b = b.slice(0, at) + b.slice(at + 1 + rnd(8)); break;
        case 2: b = b.slice(0, at) + String.fromCharCode(rnd(256)) + b.slice(at + 1); break;
        default: b = b.slice(0, at) + b.slice(rnd(b.length)); break;
      }
    }
    return Buffer.from(b, 'latin1');
  };
  const one = async (bytes) => {
    const c = await openSock(gw.port);
    // Write in random pieces with small pauses: every split point of the
    // incremental parsers gets exercised on the real connection code.
    let off = 0;
    while (off < bytes.length && !c.closed()) {
      const n = 1 + rnd(Math.max(1, bytes.length - off));
      c.sock.write(bytes.subarray(off, off + n));
      off += n;
      if (rnd(3) === 0) await sleep(rnd(5));
    }
    if (rnd(4) === 0) c.sock.end(); // sometimes half-close after the request
    await c.until(() => c.closed(), 400, 'close').catch(() => {});
    c.sock.destroy();
  };
  const N = 600;
  for (let i = 0; i < N; i += 60) {
    await Promise.all(Array.from({ length: 60 }, () => one(mutate(seeds[rnd(seeds.length)]))));
    assert.equal(gw.proc.exitCode, null, `cascaded alive after ${i + 60} connections`);
  }
  assert.equal(await healthz(gw), 200);
  const r = await gw.stop('SIGTERM', 15000);
  assert.equal(r.code, 0, `clean exit after ${N} mutated connections (under ASan: no leak, no error)`);
});
