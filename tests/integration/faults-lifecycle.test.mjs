// faults-lifecycle.test.mjs: the fault suite's signals (issue 12).
//
// Operators reload and restart gateways while traffic flows. These tests
// send the signals with traffic in flight and count what clients saw:
//   - SIGHUP (config reload) repeatedly under mixed load: no request fails,
//     none is dropped, and the new config takes effect;
//   - SIGTERM under load: every request in flight finishes (streams with
//     their [DONE]), new connections are refused at once, idle keep-alive
//     connections do not hold the exit up, and the process exits 0 well
//     within drain_timeout_ms;
//   - SIGTERM with a request that outlives the drain: the process still
//     exits when drain_timeout_ms is up.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';

import {
  TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, sleep, startGateway, startPeer, tier, until,
} from '../support/harness.mjs';

cleanupAfterAll();


function post(gw, body, headers = authHeaders()) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
}

// complete: one request read to its end; returns null when the client got a
// whole, successful answer, or a string saying what went wrong.
async function complete(gw, body, headers) {
  try {
    const res = await post(gw, body, headers);
    const text = await res.text();
    if (res.status !== 200) return `HTTP ${res.status}: ${text.slice(0, 200)}`;
    if (body.stream) {
      if (!text.trimEnd().endsWith('data: [DONE]')) return `stream cut short: ${text.slice(-200)}`;
      if (/"error"\s*:/.test(text)) return `error event: ${text.slice(-200)}`;
    } else if (!JSON.parse(text).choices?.[0]?.message) {
      return `no message: ${text.slice(0, 200)}`;
    }
    return null;
  } catch (e) {
    return `${e.message}${e.cause ? ` (${e.cause.code ?? e.cause.message})` : ''}`;
  }
}

function connectRefused(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', (e) => resolve(e.code === 'ECONNREFUSED' ? true : e.code));
  });
}

describe('signals under load', () => {
  test('SIGHUP five times under mixed load: no request fails or is dropped; the new config applies', async () => {
    const peer = await startPeer({ name: 'hup' });
    const cfg = (rpm, keys) => makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url })],
      tenants: [{ id: 'hup', keys: keys.map(sha256hex), allowed_tiers: ['small'], limits: { rpm } }],
    });
    const gw = await startGateway({ config: cfg(100000, [TEST_KEY]) });
    let stop = false;
    let n = 0;
    const failures = [];
    const loops = Array.from({ length: 6 }, async (_, k) => {
      while (!stop) {
        const i = n++;
        // Streams and slow answers are in flight across every reload.
        const body = k % 2
          ? chatBody(`s${i} a b c [[peer:chunk_delay_ms=20]] [[peer:chunks=8]]`, { stream: true })
          : chatBody(`j${i} [[peer:delay_ms=${k === 0 ? 150 : 5}]]`);
        const err = await complete(gw, body);
        if (err) failures.push(`request ${i}: ${err}`);
      }
    });
    await sleep(300);
    for (let r = 1; r <= 5; r++) {
      const keys = r === 5 ? [TEST_KEY, 'sk-after-reload'] : [TEST_KEY];
      gw.reload(cfg(100000 + r, keys));
      await until(() => gw.logLines().filter((l) => /configuration reloaded/.test(l.msg ?? '')).length >= r);
      await sleep(150);
    }
    await sleep(200);
    stop = true;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    assert.ok(n >= 30, `${n} requests sent`);
    // Every request reached the upstream exactly once (none dropped, none repeated).
    const st = await peer.stats();
    assert.equal(st.completed, n);
    assert.equal(st.aborted, 0);
    // The last reload is in force: its new key works.
    assert.equal(await complete(gw, chatBody('new key'), authHeaders('sk-after-reload')), null);
    console.log(`SIGHUP x5: ${n} requests, 0 failed`);
    await gw.stop();
  });

  test('SIGHUP that changes a start-up-only field says so; one that changes a tenant says nothing more', async () => {
    const peer = await startPeer({ name: 'hup-deferred' });
    const cfg = (rpm, maxBody) => makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url })],
      tenants: [{ id: 'hupd', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'], limits: { rpm } }],
      limits: { max_body_bytes: maxBody },
    });
    const gw = await startGateway({ config: cfg(1000, 1 << 20) });
    const reloaded = () => gw.logLines().filter((l) => /configuration reloaded/.test(l.msg ?? '')).length;
    const deferred = () => gw.logLines().filter((l) => /takes effect only after a restart/.test(l.msg ?? ''));
    gw.reload(cfg(2000, 1 << 20));
    await until(() => reloaded() >= 1);
    await sleep(100);
    assert.deepEqual(deferred(), [], 'a tenant-only change applies in full');
    gw.reload(cfg(2000, 1024));
    await until(() => reloaded() >= 2);
    await until(() => deferred().length >= 1);
    assert.match(deferred()[0].msg, /limits\.max_body_bytes/);
    assert.equal(deferred()[0].level, 'warn');
    // What the warning says is true: the running limit is still the boot one.
    const res = await post(gw, chatBody(`big ${'x'.repeat(4096)}`));
    assert.equal(res.status, 200);
    await res.text();
    await gw.stop();
  });

  test('SIGTERM under load: in-flight requests finish, new connections are refused, exit 0 within the drain', async () => {
    const peer = await startPeer({ name: 'term' });
    const DRAIN = 5000;
    const gw = await startGateway({ config: makeConfig({ upstream: peer.url, limits: { drain_timeout_ms: DRAIN } }) });
    // An idle keep-alive connection: it must not hold the exit up.
    const idle = net.connect(gw.port, '127.0.0.1');
    await new Promise((r) => idle.on('connect', r));
    let idleClosed = false;
    idle.on('close', () => (idleClosed = true));
    idle.on('error', () => {});
    idle.resume(); // read (and drop) the answer, so the close is seen
    idle.write(`GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n`);
    await sleep(100);
    // Ten requests in flight: slow JSON answers and streams still running.
    const inflight = Array.from({ length: 10 }, (_, i) => complete(gw, i % 2
      ? chatBody(`s${i} a b c d [[peer:chunk_delay_ms=60]] [[peer:chunks=12]]`, { stream: true })
      : chatBody(`j${i} [[peer:delay_ms=600]]`)));
    await until(async () => (await peer.stats()).active === 10);
    const t0 = Date.now();
    // stop() sends SIGTERM (and SIGKILL only after 20 s); the harness then
    // knows the exit is expected.
    const exited = gw.stop('SIGTERM', 20000);
    await sleep(150);
    assert.equal(await connectRefused(gw.port), true, 'new connections are refused while draining');
    assert.deepEqual(await Promise.all(inflight), Array(10).fill(null), 'every in-flight request completes');
    const exit = await exited;
    const ms = Date.now() - t0;
    assert.equal(exit.code, 0, JSON.stringify(exit) + gw.logs());
    assert.ok(ms < DRAIN, `exited ${ms} ms after SIGTERM (drain timeout ${DRAIN} ms)`);
    assert.ok(ms < 2500, `idle connections held the exit up: ${ms} ms`);
    await until(() => idleClosed, 1000).catch(() => assert.fail('the idle keep-alive connection was not closed'));
    assert.equal((await peer.stats()).completed, 10);
    console.log(`SIGTERM: 10 in flight completed, exit 0 after ${ms} ms`);
    idle.destroy();
  });

  test('SIGTERM with a request that outlives the drain: exit when drain_timeout_ms is up', async () => {
    const peer = await startPeer({ name: 'long' });
    const DRAIN = 800;
    const gw = await startGateway({ config: makeConfig({ upstream: peer.url, limits: { drain_timeout_ms: DRAIN } }) });
    const long = complete(gw, chatBody('a b [[peer:chunk_delay_ms=200]] [[peer:chunks=100]]', { stream: true }));
    await until(async () => (await peer.stats()).active === 1);
    const t0 = Date.now();
    const exited = gw.stop('SIGTERM', 20000);
    const exit = await Promise.race([exited, sleep(DRAIN + 3000).then(() => null)]);
    const ms = Date.now() - t0;
    assert.ok(exit, `still running ${ms} ms after SIGTERM`);
    assert.ok(ms >= DRAIN - 50 && ms < DRAIN + 1000, `exited ${ms} ms after SIGTERM (drain ${DRAIN} ms)`);
    assert.equal(exit.signal, null, `killed by a signal: ${JSON.stringify(exit)}`);
    // The client is not left hanging: its stream is cut.
    const err = await Promise.race([long, sleep(3000).then(() => 'client still waiting')]);
    assert.notEqual(err, null);
    assert.notEqual(err, 'client still waiting');
  });
});

