// upstream_tls.mjs: what an https upstream costs per request through the
// gateway, with the keep-alive pool and without it (issue 15).
//
// One cascaded (1 worker), one peer.mjs upstream serving the same answers
// three ways: plain http, https with pooled connections (the default), and
// https with max_idle_per_replica 0 (a TLS connection per request, resuming
// the replica's session after the first). Each
// config gets WARMUP then N sequential non-stream requests with distinct
// texts (no cache hits); we report the client-side latency quantiles and
// the connections the peer saw carry requests.
//
// Run: CASCADE_BUILD_DIR=build node bench/remote/upstream_tls.mjs [N]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';

import {
  PEER_SCRIPT, authHeaders, chatBody, makeConfig, spawnReady, startGateway, stopAll, tier,
} from '../../tests/support/harness.mjs';

const N = Number(process.argv[2] || 400);
const WARMUP = 50;

function pki(dir) {
  const o = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: 'pipe' });
  o('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  o('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 's.key', '-out', 's.csr', '-subj', '/CN=s');
  writeFileSync(path.join(dir, 's.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  o('x509', '-req', '-in', 's.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 's.pem', '-days', '1',
    '-extfile', 's.ext');
}

function stats(url) {
  return new Promise((resolve, reject) => {
    https.get(`${url}/_stats`, { rejectUnauthorized: false }, (res) => {
      let d = '';
      res.on('data', (c) => (d += c)).on('end', () => resolve(JSON.parse(d)));
    }).on('error', reject);
  });
}

const q = (xs, p) => xs[Math.min(xs.length - 1, Math.floor(p * xs.length))];

async function run(name, engineExtra, url, peerStats) {
  const t = tier({ urls: [url] });
  Object.assign(t.engine, engineExtra);
  const gw = await startGateway({ config: makeConfig({ tiers: [t], workers: 1 }) });
  const s0 = await peerStats();
  const lat = [];
  for (let i = 0; i < WARMUP + N; i++) {
    const t0 = process.hrtime.bigint();
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(), body: JSON.stringify(chatBody(`bench ${name} ${i} ${Date.now()}`, { model: 'small' })),
    });
    if (res.status !== 200) throw new Error(`${name}: HTTP ${res.status} ${await res.text()}`);
    await res.arrayBuffer();
    if (i >= WARMUP) lat.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  const s1 = await peerStats();
  const conns = s1.connections - s0.connections;
  const resumed = (s1.resumed ?? 0) - (s0.resumed ?? 0);
  await gw.stop();
  lat.sort((a, b) => a - b);
  console.log(`${name.padEnd(28)} p50 ${q(lat, 0.5).toFixed(0)} us  p90 ${q(lat, 0.9).toFixed(0)} us  ` +
    `p99 ${q(lat, 0.99).toFixed(0)} us  upstream connections ${conns} (TLS resumed ${resumed}) for ${WARMUP + N} requests`);
}

const dir = mkdtempSync(path.join(tmpdir(), 'cascade-bench-tls-'));
try {
  pki(dir);
  const plain = await spawnReady(process.execPath, [PEER_SCRIPT, '--port', '0', '--name', 'p'], /PEER_PORT=(\d+)/);
  const tls = await spawnReady(process.execPath, [PEER_SCRIPT, '--port', '0', '--name', 'p', '--tls-cert',
    path.join(dir, 's.pem'), '--tls-key', path.join(dir, 's.key')], /PEER_PORT=(\d+)/);
  const plainUrl = `http://127.0.0.1:${plain.match[1]}`;
  const tlsUrl = `https://127.0.0.1:${tls.match[1]}`;
  const plainStats = async () => (await fetch(`${plainUrl}/_stats`)).json();
  const tlsStats = () => stats(tlsUrl);
  const ca = { tls: { ca_file: path.join(dir, 'ca.pem') } };
  console.log(`${N} sequential requests after ${WARMUP} warm-up, 1 worker, peer.mjs upstream on this machine`);
  for (let round = 0; round < 2; round++) {
    await run('http, pooled', {}, plainUrl, plainStats);
    await run('https, pooled', ca, tlsUrl, tlsStats);
    await run('https, max_idle_per_replica 0', { ...ca, max_idle_per_replica: 0 }, tlsUrl, tlsStats);
  }
} finally {
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
}
