// bench/tls/cpu.mjs: the gateway's CPU per request over TLS against plain
// HTTP (issue 15). Two cascaded processes, identical but for `tls`, one worker
// each, behind the same scripted upstream (tests/support/peer.mjs). A Node
// client sends the same requests to each, in interleaved rounds (plain, TLS,
// plain, TLS, ...), and the gateway's CPU is read before and after each
// round from /proc/<pid>/stat (utime + stime, all threads; 10 ms ticks, so a
// round is sized to take hundreds of them) and /proc/<pid>/task/*/schedstat
// (on-CPU nanoseconds, the finer clock). Only the gateway is measured: the
// client's and the upstream's CPU are not in the figures.
//
// Workloads:
//   healthz    GET /healthz on keep-alive connections: httpd alone, the
//              worst case for TLS's share
//   chat       POST /v1/chat/completions (non-stream, a short answer) on
//              keep-alive connections: the real request path
//   handshake  GET /healthz, a new connection per request: what a TLS
//              handshake costs the server (P-256 key, TLS 1.3)
//
// Usage: node bench/tls/cpu.mjs [--rounds 3] [--requests 20000] [--concurrency 8]
//        [--workloads healthz,chat,handshake]
// Needs the openssl command-line tool and a build (CASCADE_BUILD_DIR, default
// build/). Prints one line per round and a summary (median, min, max).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { TEST_KEY, makeConfig, startGateway, startPeer, stopAll, tier } from '../../tests/support/harness.mjs';

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) =>
  (v.startsWith('--') ? [...a, [v.slice(2), all[i + 1]]] : a), []));
const ROUNDS = Number(args.rounds || 3);
const REQUESTS = Number(args.requests || 20000);
const CONCURRENCY = Number(args.concurrency || 8);
const WORKLOADS = (args.workloads || 'healthz,chat,handshake').split(',');

// ---- CPU of a process -------------------------------------------------------

function statTicks(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, clock ticks (USER_HZ 100)
}

function schedNs(pid) {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // a thread that ended between the listing and the read
    }
  }
  return ns;
}

// ---- load -------------------------------------------------------------------

// n requests, `concurrency` in flight; resolves the wall time in ms.
async function load(url, { n, concurrency, ca, keepAlive, method = 'GET', body }) {
  const mod = url.startsWith('https:') ? https : http;
  const agent = new mod.Agent({ keepAlive, maxSockets: concurrency, ca });
  const headers = body
    ? { 'content-type': 'application/json', authorization: `Bearer ${TEST_KEY}`, 'content-length': Buffer.byteLength(body) }
    : {};
  let next = 0;
  let failed = 0;
  const one = () => new Promise((resolve) => {
    const req = mod.request(url, { method, headers, agent, servername: 'localhost' }, (res) => {
      if (res.statusCode !== 200) failed++;
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', () => {
      failed++;
      resolve();
    });
    if (body) req.write(body);
    req.end();
  });
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next++ < n) await one();
  }));
  agent.destroy();
  if (failed) throw new Error(`${failed} of ${n} requests to ${url} failed`);
  return performance.now() - t0;
}

// ---- certificates -----------------------------------------------------------

function makeCert(dir) {
  const run = (a) => {
    const r = spawnSync('openssl', a, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${a.join(' ')}: ${r.stderr || r.error}`);
  };
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', 'key.pem', '-out', 'cert.pem']);
  return { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') };
}

// ---- main -------------------------------------------------------------------

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const dir = mkdtempSync(path.join(tmpdir(), 'cascade-bench-tls-'));
try {
  const { cert, key } = makeCert(dir);
  const ca = readFileSync(cert);
  const peer = await startPeer({ name: 'bench-up' });
  const config = (extra) => makeConfig({
    tiers: [tier({ name: 'small', urls: peer.url })],
    workers: 1,
    // The access log is the same for both; keep it from dominating.
    ...extra,
  });
  const plain = await startGateway({ config: config({}) });
  const tls = await startGateway({ config: config({ tls: { cert_file: cert, key_file: key } }) });
  const targets = {
    plain: { gw: plain, base: `http://127.0.0.1:${plain.port}` },
    tls: { gw: tls, base: `https://localhost:${tls.port}` },
  };
  const chatBody = JSON.stringify({ model: 'small', messages: [{ role: 'user', content: 'hello there, bench' }] });
  const spec = {
    healthz: { path: '/healthz', keepAlive: true, n: REQUESTS },
    chat: { path: '/v1/chat/completions', keepAlive: true, n: Math.round(REQUESTS / 4), method: 'POST', body: chatBody },
    handshake: { path: '/healthz', keepAlive: false, n: Math.round(REQUESTS / 10) },
  };
  console.log(`# ${ROUNDS} rounds, ${CONCURRENCY} connections; CPU of the gateway only (1 worker)`);
  const results = {};
  for (const w of WORKLOADS) {
    const s = spec[w];
    if (!s) throw new Error(`unknown workload ${w}`);
    // Warm both (connections, caches, the peer's JIT) before measuring.
    for (const name of ['plain', 'tls']) {
      await load(targets[name].base + s.path, { ...s, n: Math.min(s.n, 2000), concurrency: CONCURRENCY, ca });
    }
    for (let r = 0; r < ROUNDS; r++) {
      for (const name of ['plain', 'tls']) {
        const { gw, base } = targets[name];
        const t0 = statTicks(gw.proc.pid);
        const n0 = schedNs(gw.proc.pid);
        const ms = await load(base + s.path, { ...s, concurrency: CONCURRENCY, ca });
        const ticks = statTicks(gw.proc.pid) - t0;
        const ns = schedNs(gw.proc.pid) - n0;
        const us = { stat: (ticks * 10000) / s.n, sched: ns / 1000 / s.n };
        (results[`${w} ${name}`] ??= []).push(us);
        console.log(`${w.padEnd(9)} ${name.padEnd(5)} round ${r + 1}: ${s.n} requests in ${ms.toFixed(0)} ms, ` +
          `gateway CPU ${us.sched.toFixed(1)} us/request (schedstat), ${us.stat.toFixed(1)} (stat, ${ticks} ticks)`);
      }
    }
  }
  console.log('\n# summary: gateway CPU per request, microseconds: median [min, max] over the rounds');
  for (const [k, v] of Object.entries(results)) {
    const f = (key) => {
      const a = v.map((x) => x[key]);
      return `${median(a).toFixed(1)} [${Math.min(...a).toFixed(1)}, ${Math.max(...a).toFixed(1)}]`;
    };
    console.log(`${k.padEnd(16)} schedstat ${f('sched')}   stat ${f('stat')}`);
  }
  // Each TLS round ran right after its plain round: the difference within a
  // pair is less exposed to the machine's load drifting between rounds.
  console.log('\n# TLS - plain, per pair of rounds (schedstat): median [min, max]');
  for (const w of WORKLOADS) {
    const p = results[`${w} plain`].map((x) => x.sched);
    const t = results[`${w} tls`].map((x) => x.sched);
    const d = t.map((v, i) => v - p[i]);
    const rel = t.map((v, i) => (v / p[i] - 1) * 100);
    console.log(`${w.padEnd(9)} ${median(d).toFixed(1)} [${Math.min(...d).toFixed(1)}, ${Math.max(...d).toFixed(1)}] us/request` +
      `, ${median(rel).toFixed(0)}% [${Math.min(...rel).toFixed(0)}%, ${Math.max(...rel).toFixed(0)}%]`);
  }
} finally {
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
}
