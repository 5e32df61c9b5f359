// readyz.test.mjs: /readyz with a dead optional tier. Kubernetes takes a pod
// out of service on a 503, healthy tiers and all, so a tier whose replicas
// are down must not fail readiness while its fallback chain reaches a tier
// that is up -- unless readiness.require names it. The dead tiers here are
// remote tiers whose URL points at a closed port.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import {
  cleanupAfterAll, startPeer, startGateway, makeConfig, tier, freePort, sleep,
} from '../support/harness.mjs';

cleanupAfterAll();

let liveUrl;
let deadUrl;

before(async () => {
  const peer = await startPeer({ name: 'live' });
  liveUrl = peer.url;
  deadUrl = `http://127.0.0.1:${await freePort()}`;
});

// small is live; medium and large are dead; large falls back to medium,
// medium to small. Probes every 100 ms, so the test waits little.
function tiers() {
  const t = [
    tier({ name: 'small', urls: liveUrl }),
    tier({ name: 'medium', urls: deadUrl, fallback: 'small' }),
    tier({ name: 'large', urls: deadUrl, fallback: 'medium' }),
  ];
  for (const x of t) x.engine.health_interval_ms = 100;
  return t;
}

// The probe's answer once every tier's health has been seen: the dead tiers
// report down (their first probe has failed) and the live one up. When that
// never shows, the failure carries the last answer.
async function settledReadyz(gw) {
  let last = null;
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const r = await fetch(`${gw.url}/readyz`);
    const body = await r.json();
    last = { status: r.status, body };
    const t = body.tiers || {};
    if (t.small?.state === 'up' && t.medium?.state === 'down' && t.large?.state === 'down') return last;
    await sleep(50);
  }
  assert.fail(`/readyz never showed small up and medium, large down in 10 s; last: ${JSON.stringify(last)}`);
}

test('a dead tier whose fallback chain reaches a live one: 200, and the body says who serves it', async () => {
  const gw = await startGateway({ config: makeConfig({ tiers: tiers(), readiness: { require: ['small'] } }) });
  const { status, body } = await settledReadyz(gw);
  assert.equal(status, 200, JSON.stringify(body));
  assert.deepEqual(body, {
    status: 'ready',
    tiers: {
      small: { state: 'up', required: true },
      medium: { state: 'down', fallback: 'small', served_by: 'small' },
      large: { state: 'down', fallback: 'medium', served_by: 'small' },
    },
  });
  await gw.stop();
});

test('readiness.require naming the dead tier: 503', async () => {
  const gw = await startGateway({ config: makeConfig({ tiers: tiers(), readiness: { require: ['large'] } }) });
  const { status, body } = await settledReadyz(gw);
  assert.equal(status, 503, JSON.stringify(body));
  assert.equal(body.status, 'not_ready');
  assert.deepEqual(body.tiers.large, { state: 'down', fallback: 'medium', served_by: 'small', required: true });
  assert.deepEqual(body.tiers.small, { state: 'up' });
  await gw.stop();
});

test('a dead tier with no fallback, or a chain of dead tiers only: 503', async () => {
  const t = [
    tier({ name: 'small', urls: liveUrl }),
    tier({ name: 'medium', urls: deadUrl }),
    tier({ name: 'large', urls: deadUrl, fallback: 'medium' }),
  ];
  for (const x of t) x.engine.health_interval_ms = 100;
  const gw = await startGateway({ config: makeConfig({ tiers: t }) });
  const { status, body } = await settledReadyz(gw);
  assert.equal(status, 503, JSON.stringify(body));
  assert.deepEqual(body.tiers.medium, { state: 'down' });
  assert.deepEqual(body.tiers.large, { state: 'down', fallback: 'medium' });
  await gw.stop();
});
