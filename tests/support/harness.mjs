// harness.mjs: helpers for Cascade's Node integration tests (node:test).
//
// Tests start real processes: scripted upstream peers (peer.mjs) and the
// gateway binary (cascaded) on free ports. Every process started here is
// remembered, and stopAll() stops them; call cleanupAfterAll() once at the top
// of a test file so that happens even when a test fails. As a last resort the
// children are killed when the Node process exits.
//
// Environment: CASCADE_BUILD_DIR (default <repo>/build) locates
// gateway/cascaded; CASCADE_SOURCE_DIR (default: this repo) locates the tree.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';

export { peerReply, parseDirectives } from './peer.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const SOURCE_DIR = process.env.CASCADE_SOURCE_DIR || path.resolve(HERE, '..', '..');
export const BUILD_DIR = process.env.CASCADE_BUILD_DIR || path.join(SOURCE_DIR, 'build');
export const PEER_SCRIPT = path.join(HERE, 'peer.mjs');

// The API key and admin token makeConfig() installs by default.
export const TEST_KEY = 'sk-cascade-test-acme';
export const ADMIN_TOKEN = 'cascade-test-admin-token';
export const DEFAULT_MODEL = 'deepseek-coder-1.3b';

const live = new Set();     // {stop()} of everything started and not yet stopped

process.on('exit', () => {
  for (const h of live) {
    try {
      h.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export function sha256hex(s) {
  return createHash('sha256').update(s).digest('hex');
}

// freePort: a port that was free a moment ago (bind to 0, read it, close).
// Racy by nature; prefer letting the server pick its own port.
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function stopAll() {
  await Promise.allSettled([...live].map((h) => h.stop()));
}

// cleanupAfterAll: register stopAll() with node:test's after(); call it at the
// top level of a test file (or inside a test, for that test's processes).
export function cleanupAfterAll() {
  after(stopAll);
}

// reportCrash: a process that exits while still in `live` (nobody asked it
// to stop) gets its output printed, so a crash mid-test explains itself.
function reportCrash(handle, what, getText) {
  handle.proc.on('exit', (code, signal) => {
    if (live.has(handle)) {
      live.delete(handle);
      process.stderr.write(`harness: ${what} exited unexpectedly (code ${code}, signal ${signal}); ` +
        `its output:\n${getText()}\n`);
    }
  });
}

// waitExit: resolves {code, signal} when the process has exited.
function waitExit(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) {
    return Promise.resolve({ code: proc.exitCode, signal: proc.signalCode });
  }
  return new Promise((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

// stopProcess: signal, wait up to timeoutMs, then SIGKILL.
async function stopProcess(proc, signal = 'SIGTERM', timeoutMs = 5000) {
  if (proc.exitCode === null && proc.signalCode === null) {
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    const r = await waitExit(proc);
    clearTimeout(timer);
    return r;
  }
  return waitExit(proc);
}

// waitForLine: resolve with the first match of `re` in the growing output
// text; reject when the process exits first or the time runs out.
function waitForOutput(proc, getText, re, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    let timer = null;
    const onData = () => {
      const m = getText().match(re);
      if (m) finish(null, m);
    };
    const onExit = (code, signal) =>
      finish(new Error(`${what} exited (code ${code}, signal ${signal}) before it was ready:\n${getText()}`));
    const finish = (err, m) => {
      clearTimeout(timer);
      proc.stdout?.off('data', onData);
      proc.stderr?.off('data', onData);
      proc.off('exit', onExit);
      if (err) reject(err);
      else resolve(m);
    };
    timer = setTimeout(
      () => finish(new Error(`${what} not ready after ${timeoutMs} ms:\n${getText()}`)),
      timeoutMs,
    );
    // Registered after the collectors, so getText() already holds the chunk.
    proc.stdout?.on('data', onData);
    proc.stderr?.on('data', onData);
    proc.on('exit', onExit);
    onData();
  });
}

async function getJson(url, init) {
  const r = await fetch(url, init);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// startPeer: a scripted upstream (peer.mjs) on a port it picks itself.
// Returns {name, port, url, stats(), requests(), reset(), script(obj), stop(), proc}.
export async function startPeer({ name = 'peer', models, apiKey, timeoutMs = 10000 } = {}) {
  const args = [PEER_SCRIPT, '--port', '0', '--name', name];
  if (models) args.push('--models', models.join(','));
  if (apiKey) args.push('--api-key', apiKey);
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  proc.stderr.setEncoding('utf8').on('data', (d) => (out += d));
  const handle = {
    name,
    proc,
    stop: async () => {
      live.delete(handle);
      return stopProcess(proc, 'SIGTERM', 3000);
    },
  };
  live.add(handle);
  reportCrash(handle, `peer ${name}`, () => out);
  const m = await waitForOutput(proc, () => out, /PEER_PORT=(\d+)/, timeoutMs, `peer ${name}`);
  handle.port = Number(m[1]);
  handle.url = `http://127.0.0.1:${handle.port}`;
  handle.stats = () => getJson(`${handle.url}/_stats`);
  handle.requests = () => getJson(`${handle.url}/_requests`);
  handle.reset = () => getJson(`${handle.url}/_reset`, { method: 'POST' });
  // script({directives: {status: 500}, count: 2}) or script({health_status: 503})
  handle.script = (obj) =>
    getJson(`${handle.url}/_script`, { method: 'POST', body: JSON.stringify(obj) });
  handle.output = () => out;
  return handle;
}

// spawnReady: run `bin args`, wait until its stdout or stderr matches
// `ready` (a RegExp), and return {proc, match, output(), stop()}. For helper
// binaries such as bench/upstream ("UPSTREAM_PORT=N").
export async function spawnReady(bin, args, ready, { name = path.basename(bin), timeoutMs = 10000 } = {}) {
  if (!existsSync(bin)) throw new Error(`${bin} does not exist (build it, or set CASCADE_BUILD_DIR)`);
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  proc.stderr.setEncoding('utf8').on('data', (d) => (out += d));
  const handle = {
    proc,
    output: () => out,
    stop: async (signal = 'SIGTERM', ms = 5000) => {
      live.delete(handle);
      return stopProcess(proc, signal, ms);
    },
  };
  live.add(handle);
  reportCrash(handle, name, () => out);
  handle.match = await waitForOutput(proc, () => out, ready, timeoutMs, name);
  return handle;
}

// runToEnd: run `bin args` to completion, with `env` added to this
// process's environment; resolves {code, signal, stdout, stderr}.
export function runToEnd(bin, args, { timeoutMs = 60000, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// tier: one tier entry for makeConfig(); urls is a URL or a list of them.
export function tier({ name = 'small', model = DEFAULT_MODEL, urls, timeoutMs = 60000,
  chunkTimeoutMs = 30000, price = { input_per_1m: 0.14, output_per_1m: 0.28 }, ...rest } = {}) {
  return {
    name,
    model,
    engine: {
      kind: 'remote',
      urls: Array.isArray(urls) ? urls : [urls],
      timeout_ms: timeoutMs,
      chunk_timeout_ms: chunkTimeoutMs,
    },
    price,
    ...rest,
  };
}

// makeConfig: a gateway config with test defaults. With no tiers, `upstream`
// (a peer URL or a list of them) backs one tier "small"; with no tenants, the
// tenant "acme" holds TEST_KEY and may use every tier. Other fields override
// the top level; `limits` is merged into the default limits.
export function makeConfig({ tiers, tenants, upstream, limits, ...overrides } = {}) {
  if (!tiers) {
    if (!upstream) throw new Error('makeConfig: give tiers or upstream');
    tiers = [tier({ urls: upstream })];
  }
  if (!tenants) {
    tenants = [{
      id: 'acme',
      keys: [sha256hex(TEST_KEY)],
      allowed_tiers: tiers.map((t) => t.name),
      default_tier: tiers[0].name,
    }];
  }
  return {
    listen: '127.0.0.1:0',
    workers: 2,
    limits: {
      max_body_bytes: 1048576,
      max_header_bytes: 16384,
      header_timeout_ms: 10000,
      read_timeout_ms: 30000,
      write_timeout_ms: 30000,
      upstream_timeout_ms: 60000,
      drain_timeout_ms: 10000,
      ...limits,
    },
    admin_token_sha256: sha256hex(ADMIN_TOKEN),
    tiers,
    tenants,
    ...overrides,
  };
}

// startGateway: write `config` to a temp file and run cascaded on it, on a
// port it picks itself (--listen 127.0.0.1:0). Resolves once the gateway logs
// {"msg":"listening","addr":"127.0.0.1:PORT"} on stderr. Returns
// {port, url, proc, configPath, logs(), logLines(), waitForLog(pred, ms),
//  reload(config), stop(signal, ms)}; stop() resolves {code, signal}.
export async function startGateway({ config, args = [], env = {}, binary, timeoutMs = 15000 } = {}) {
  const bin = binary || path.join(BUILD_DIR, 'gateway', 'cascaded');
  if (!existsSync(bin)) {
    throw new Error(`startGateway: ${bin} does not exist (build it, or set CASCADE_BUILD_DIR)`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-test-'));
  const configPath = path.join(dir, 'config.json');
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const proc = spawn(bin, ['-c', configPath, '--listen', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let err = '';
  let out = '';
  let spawnError = null;
  proc.on('error', (e) => {
    spawnError = e;
    err += `spawn ${bin}: ${e.message}\n`;
  });
  proc.stderr.setEncoding('utf8').on('data', (d) => (err += d));
  proc.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  const handle = {
    proc,
    configPath,
    logs: () => err,
    stdout: () => out,
    // Every stderr line that parses as JSON (the gateway's structured log).
    logLines: () =>
      err.split('\n').flatMap((l) => {
        try {
          const o = JSON.parse(l);
          return o && typeof o === 'object' ? [o] : [];
        } catch {
          return [];
        }
      }),
    // waitForLog(pred): the first parsed log line for which pred(line) holds.
    waitForLog: (pred, ms = 5000) =>
      new Promise((resolve, reject) => {
        const deadline = Date.now() + ms;
        const poll = () => {
          const hit = handle.logLines().find(pred);
          if (hit) return resolve(hit);
          if (Date.now() > deadline) return reject(new Error(`log line not seen in ${ms} ms:\n${err}`));
          setTimeout(poll, 20);
        };
        poll();
      }),
    // reload: rewrite the config file and send SIGHUP.
    reload: (newConfig) => {
      writeFileSync(configPath, JSON.stringify(newConfig, null, 2));
      proc.kill('SIGHUP');
    },
    stop: async (signal = 'SIGTERM', ms = 10000) => {
      live.delete(handle);
      const r = spawnError ? { code: null, signal: null } : await stopProcess(proc, signal, ms);
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
  live.add(handle);
  reportCrash(handle, 'cascaded', () => err);
  if (spawnError) throw spawnError;
  const re = /"msg":"listening"[^\n]*"addr":"127\.0\.0\.1:(\d+)"|"addr":"127\.0\.0\.1:(\d+)"[^\n]*"msg":"listening"/;
  let m;
  try {
    m = await waitForOutput(proc, () => err, re, timeoutMs, `cascaded (${bin})`);
  } catch (e) {
    await handle.stop('SIGKILL');
    throw e;
  }
  handle.port = Number(m[1] || m[2]);
  handle.url = `http://127.0.0.1:${handle.port}`;
  return handle;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// until: poll pred (sync or async) every 20 ms until it returns something
// truthy, and return that; throw, naming `what`, once ms have passed.
export async function until(pred, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(20);
  }
}

// variedText: about `bytes` of varied words, a fixed pseudo-random sequence
// (repeated words would all hit the tokenizer's word cache and count
// unrealistically fast). The same text every call.
export function variedText(bytes) {
  let x = 12345;
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  const parts = [];
  let n = 0;
  while (n < bytes) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    let w = '';
    for (let k = 3 + (x % 7); k > 0; k--) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      w += letters[x % 26];
    }
    parts.push(w);
    n += w.length + 1;
  }
  return parts.join(' ');
}

// sseParse: the data: payloads of an SSE text, JSON-parsed; the literal
// "[DONE]" stays a string. Multi-line data fields are joined with "\n".
export function sseParse(text) {
  const events = [];
  for (const block of text.replace(/\r\n/g, '\n').split('\n\n')) {
    const data = block
      .split('\n')
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).replace(/^ /, ''));
    if (data.length === 0) continue;
    const payload = data.join('\n');
    events.push(payload === '[DONE]' ? payload : JSON.parse(payload));
  }
  return events;
}

// sseEvents: read a fetch() Response body to its end and parse its events.
export async function sseEvents(response) {
  return sseParse(await response.text());
}

// rawHttp: send `request` bytes on a fresh TCP connection and collect what
// comes back until the server closes or timeoutMs passes. For tests of bytes
// on the wire (malformed requests, limits, timeouts). Resolves
// {data, closed, ms}: closed is false when the time ran out first.
export function rawHttp(port, request, { timeoutMs = 5000, host = '127.0.0.1', endAfterWrite = false } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const sock = net.connect(port, host);
    const parts = [];
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ data: Buffer.concat(parts).toString('utf8'), closed, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    sock.on('connect', () => {
      if (request) sock.write(request);
      if (endAfterWrite) sock.end();
    });
    sock.on('data', (d) => parts.push(d));
    sock.on('close', () => finish(true));
    sock.on('error', (e) => {
      if (e.code === 'ECONNRESET') finish(true);
      else if (!done) {
        done = true;
        clearTimeout(timer);
        reject(e);
      }
    });
  });
}

// chatBody: a minimal chat-completions request body.
export function chatBody(text, { model = DEFAULT_MODEL, ...rest } = {}) {
  return { model, messages: [{ role: 'user', content: text }], ...rest };
}

// authHeaders: JSON and the bearer key, for fetch().
export function authHeaders(key = TEST_KEY) {
  return { 'content-type': 'application/json', authorization: `Bearer ${key}` };
}
