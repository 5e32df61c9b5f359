// redis.mjs: a real redis-server for tests, on a free port, with no
// persistence. stop() kills it (as an outage would); start() brings it back
// on the same port. cli(...args) runs redis-cli against it.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { freePort } from './harness.mjs';

// Servers from startRedisForFile(), stopped once the importing file's tests
// are done, even when one fails (or the test process would never exit).
const forFile = [];
after(() => Promise.all(forFile.map((r) => r.stop())));

export async function startRedisForFile(opts) {
  const r = await startRedis(opts);
  forFile.push(r);
  return r;
}

// persist: keep data across stop()/start() with an fsync-always AOF, as a
// production Redis would, so a restart loses nothing that was acknowledged.
export async function startRedis({ port, persist = false } = {}) {
  port = port || (await freePort());
  const h = { port, url: `redis://127.0.0.1:${port}/0`, proc: null };
  const dir = persist ? mkdtempSync(path.join(tmpdir(), 'cascade-redis-')) : null;
  const durability = persist
    ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir]
    : ['--appendonly', 'no'];
  h.start = async () => {
    const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
      ...durability, '--protected-mode', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
    h.proc = proc;
    let out = '';
    proc.stdout.setEncoding('utf8').on('data', (d) => (out += d));
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`redis-server not ready:\n${out}`)), 10000);
      const check = () => {
        if (/Ready to accept connections/.test(out)) {
          clearTimeout(t);
          resolve();
        }
      };
      proc.stdout.on('data', check);
      proc.on('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`redis-server exited ${code}:\n${out}`));
      });
    });
    proc.removeAllListeners('exit');
  };
  h.stop = async () => {
    if (!h.proc || h.proc.exitCode !== null || h.proc.signalCode !== null) return; // already gone
    const p = h.proc;
    const done = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await done;
  };
  h.cli = (...args) => execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).trim();
  await h.start();
  process.on('exit', () => h.proc?.kill('SIGKILL'));
  return h;
}
