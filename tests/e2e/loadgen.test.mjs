// loadgen.test.mjs: bench/loadgen counts, frames and times responses
// correctly. Every benchmark figure in bench/ rests on it, so it is tested
// against servers whose behaviour we know: bench/upstream (libevent's
// chunked replies), the scripted peer (Node's), and hand-written raw servers
// (Connection: close, bodies delimited by EOF).
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  BUILD_DIR, cleanupAfterAll, startPeer, spawnReady, runToEnd, chatBody, freePort,
} from '../support/harness.mjs';

cleanupAfterAll();

const LOADGEN = path.join(BUILD_DIR, 'bench', 'loadgen');
const UPSTREAM = path.join(BUILD_DIR, 'bench', 'upstream');
const dir = mkdtempSync(path.join(tmpdir(), 'cascade-loadgen-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let nbody = 0;
function bodyFile(obj) {
  const f = path.join(dir, `body${nbody++}.json`);
  writeFileSync(f, typeof obj === 'string' ? obj : JSON.stringify(obj));
  return f;
}

// loadgen: run it and parse its one JSON line; checks the invariant that
// every request due in the window is accounted for exactly once.
async function loadgen(args) {
  const r = await runToEnd(LOADGEN, args, { timeoutMs: 60000 });
  assert.equal(r.code, 0, `loadgen failed: ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1, r.stdout);
  const j = JSON.parse(lines[0]);
  assert.equal(j.sent, j.ok + j.non2xx + j.errors, lines[0]);
  if (j.ok > 0) {
    assert.ok(j.p50_us > 0 && j.p50_us <= j.p90_us && j.p90_us <= j.p99_us, lines[0]);
    assert.ok(j.p99_us <= j.p999_us && j.p999_us <= j.max_us, lines[0]);
    assert.ok(j.ttfb_p50_us <= j.p50_us + 0.1 && j.ttfb_p99_us <= j.max_us, lines[0]);
  }
  return j;
}

let upstream;
let upPort;
let peer;

before(async () => {
  upstream = await spawnReady(UPSTREAM, ['--port', '0', '--chunks', '4'], /UPSTREAM_PORT=(\d+)/);
  upPort = Number(upstream.match[1]);
  peer = await startPeer({ name: 'lg' });
});

async function upstreamRequests() {
  const r = await fetch(`http://127.0.0.1:${upPort}/_stats`);
  return (await r.json()).requests;
}

test('open loop: exact count in the window, all OK, warmup sent but not counted', async () => {
  const before = await upstreamRequests();
  const j = await loadgen(['--url', `http://127.0.0.1:${upPort}/v1/chat/completions`,
    '--body', bodyFile(chatBody('hi')), '--rate', '400', '--duration', '1', '--warmup', '0.25',
    '--connections', '8']);
  assert.equal(j.mode, 'open');
  assert.equal(j.sent, 400);
  assert.equal(j.ok, 400);
  assert.equal(j.errors, 0);
  assert.equal(j.rate_achieved, 400);
  // 0.25 s of warmup at 400/s is 100 more requests on the wire
  assert.equal(await upstreamRequests() - before, 500);
});

test('open loop over chunked SSE from evhttp, two threads', async () => {
  const j = await loadgen(['--url', `http://127.0.0.1:${upPort}/v1/chat/completions`,
    '--body', bodyFile(chatBody('hi', { stream: true })), '--stream', '--rate', '600',
    '--duration', '0.5', '--warmup', '0', '--connections', '8', '--threads', '2']);
  assert.equal(j.threads, 2);
  assert.equal(j.sent, 300);
  assert.equal(j.ok, 300);
});

test('ttfb is the first body byte, total is the last (Node chunked stream)', async () => {
  // the peer sends its role chunk at once, then 3 chunks 40 ms apart
  const j = await loadgen(['--url', `${peer.url}/v1/chat/completions`,
    '--body', bodyFile(chatBody('a [[peer:chunks=3]] [[peer:chunk_delay_ms=40]]', { stream: true })),
    '--stream', '--rate', '20', '--duration', '0.5', '--warmup', '0', '--connections', '4']);
  assert.equal(j.ok, 10);
  // every request's last byte comes >= 120 ms after its first, so the
  // medians are at least that far apart too
  assert.ok(j.p50_us >= 120000, `total ${j.p50_us} us`);
  assert.ok(j.p50_us - j.ttfb_p50_us >= 110000, `ttfb ${j.ttfb_p50_us} us, total ${j.p50_us} us`);
});

test('open loop counts queueing behind a slow server (no coordinated omission)', async () => {
  // one connection, 200 ms per answer, one request due every 50 ms: request k
  // ends near 0.2 (k+1) s but was due at 0.05 k s, so its latency is near
  // 0.2 + 0.15 k s. A closed-loop tool would report 200 ms for every one.
  const body = bodyFile(chatBody('slow [[peer:delay_ms=200]]'));
  const open = await loadgen(['--url', `${peer.url}/v1/chat/completions`, '--body', body,
    '--rate', '20', '--duration', '1', '--warmup', '0', '--connections', '1']);
  assert.equal(open.ok, 20, JSON.stringify(open));
  // lower bounds are the point; upper bounds leave room for a loaded machine
  assert.ok(open.p50_us > 1.2e6 && open.p50_us < 4e6, `p50 ${open.p50_us}`);
  assert.ok(open.max_us > 2.6e6 && open.max_us < 8e6, `max ${open.max_us}`);
  const closed = await loadgen(['--url', `${peer.url}/v1/chat/completions`, '--body', body,
    '--rate', '0', '--duration', '0.6', '--warmup', '0', '--connections', '1']);
  assert.equal(closed.mode, 'closed');
  assert.ok(closed.ok >= 1 && closed.ok <= 4, `closed ok ${closed.ok}`);
  assert.ok(closed.p50_us >= 190000 && closed.p50_us < 1e6, `closed p50 ${closed.p50_us}`);
});

test('non-2xx answers are counted apart and kept out of the percentiles', async () => {
  const j = await loadgen(['--url', `${peer.url}/v1/chat/completions`,
    '--body', bodyFile(chatBody('x [[peer:status=500]]')), '--rate', '100', '--duration', '0.3',
    '--warmup', '0', '--connections', '2']);
  assert.equal(j.sent, 30);
  assert.equal(j.non2xx, 30, JSON.stringify(j));
  assert.equal(j.ok, 0);
  assert.equal(j.p50_us, null);
});

test('a server that drops connections or hangs gives errors, and loadgen still ends', async () => {
  const dropped = await loadgen(['--url', `${peer.url}/v1/chat/completions`,
    '--body', bodyFile(chatBody('x [[peer:close]]')), '--rate', '50', '--duration', '0.4',
    '--warmup', '0', '--connections', '2']);
  assert.equal(dropped.sent, 20);
  assert.equal(dropped.errors, 20);
  const t0 = Date.now();
  const hung = await loadgen(['--url', `${peer.url}/v1/chat/completions`,
    '--body', bodyFile(chatBody('x [[peer:hang]]')), '--rate', '20', '--duration', '0.3',
    '--warmup', '0', '--connections', '2', '--timeout', '0.5']);
  assert.equal(hung.sent, 6);
  assert.equal(hung.errors, 6);
  assert.ok(Date.now() - t0 < 5000);
  const port = await freePort();
  const refused = await loadgen(['--url', `http://127.0.0.1:${port}/`, '--rate', '20',
    '--duration', '0.3', '--warmup', '0', '--connections', '1', '--timeout', '0.3']);
  assert.equal(refused.errors, refused.sent);
  assert.ok(refused.connect_errors > 0);
});

// rawServer: answers each request (read up to the blank line plus any
// Content-Length body) with `reply`, then closes when `close` is set.
function rawServer(reply, close) {
  const srv = net.createServer((sock) => {
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const m = /content-length:\s*(\d+)/i.exec(buf.slice(0, end));
        const total = end + 4 + (m ? Number(m[1]) : 0);
        if (buf.length < total) return;
        buf = buf.slice(total);
        if (close) sock.end(reply);
        else sock.write(reply);
      }
    });
    sock.on('error', () => {});
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

test('Connection: close, EOF-delimited bodies, 1xx and odd chunk framing', async () => {
  const cases = [
    ['HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until EOF', true],
    ['HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello', true],
    ['HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok', true],
    ['HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok', false],
    ['HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n' +
      '3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n', false],
    ['HTTP/1.1 204 No Content\r\n\r\n', false],
  ];
  for (const [reply, close] of cases) {
    const srv = await rawServer(reply, close);
    try {
      const j = await loadgen(['--url', `http://127.0.0.1:${srv.address().port}/x`, '--rate', '100',
        '--duration', '0.2', '--warmup', '0', '--connections', '2', '--timeout', '2']);
      assert.equal(j.sent, 20, reply);
      assert.equal(j.ok, 20, `${JSON.stringify(reply)}: ${JSON.stringify(j)}`);
    } finally {
      srv.close();
    }
  }
  // garbage is an error, not a hang or a success
  const srv = await rawServer('HTTX/9 nonsense\r\n\r\n', false);
  try {
    const j = await loadgen(['--url', `http://127.0.0.1:${srv.address().port}/x`, '--rate', '50',
      '--duration', '0.2', '--warmup', '0', '--connections', '1', '--timeout', '1']);
    assert.equal(j.ok, 0);
    assert.equal(j.errors, j.sent);
  } finally {
    srv.close();
  }
});

test('bench/upstream exits 0 on SIGTERM (under ASan: no leaks)', async () => {
  const r = await upstream.stop('SIGTERM', 10000);
  assert.deepEqual(r, { code: 0, signal: null }, upstream.output().slice(-4000));
});
