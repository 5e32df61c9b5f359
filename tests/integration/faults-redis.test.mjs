// faults-redis.test.mjs: the fault suite's Redis half (issue 12).
//
// Redis is the one piece of state the gateway has, and spend lives there, so
// these tests break Redis for real (SIGKILL, not a polite SHUTDOWN) while
// traffic runs, and then look at what a tenant is billed:
//   - Redis killed under load and restarted: no request fails, and once the
//     journal has replayed, the spend in Redis is exactly the sum of what the
//     gateway told each client the answer cost;
//   - Redis frozen (SIGSTOP) and Redis full (writes refused with OOM):
//     the same two promises;
//   - the start-up check: with AOF off the gateway warns that spend would
//     reset on a Redis restart; with AOF on it says nothing; and the check
//     never holds up start-up when Redis is not there yet.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, sleep, startGateway, startPeer, tier, until,
} from '../support/harness.mjs';
import { startRedisForFile as redisServer } from '../support/redis.mjs';

cleanupAfterAll();


// Whole-number prices, so usage x price is exact in nano-USD: 10 and 100 USD
// per 1M tokens are 10,000 and 100,000 nano-USD per token.
const PRICE = { input_per_1m: 10, output_per_1m: 100 };
const costNano = (u) => u.prompt_tokens * PRICE.input_per_1m * 1000 + u.completion_tokens * PRICE.output_per_1m * 1000;
const today = () => new Date().toISOString().slice(0, 10).replace(/-/g, '');
const AOF_WARNING = (l) => l.level === 'warn' && /AOF off/.test(l.msg ?? '');

function post(gw, body) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: JSON.stringify(body) });
}

function config(redis, peer, id) {
  return makeConfig({
    tiers: [tier({ name: 'small', urls: peer.url, price: PRICE })],
    tenants: [{ id, keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }],
    redis: { url: redis.url, timeout_ms: 200 },
  });
}

// oneRequest: send one request and return what the client was told it cost,
// in nano-USD: the x-cascade-cost-usd header of a JSON answer, or the usage
// chunk of a stream times the price (a stream's headers leave before its
// cost is known). Throws on anything but a complete 200.
async function oneRequest(gw, text, stream) {
  const body = chatBody(`${text} [[peer:delay_ms=30]]`, stream
    ? { model: 'small', stream: true, stream_options: { include_usage: true } }
    : { model: 'small' });
  const res = await post(gw, body);
  const raw = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${raw}`);
  if (!stream) {
    const usd = res.headers.get('x-cascade-cost-usd');
    if (usd === null) throw new Error('no x-cascade-cost-usd header');
    const nano = Math.round(Number(usd) * 1e9);
    // The header and the body's usage must agree, or one of them lies.
    const u = JSON.parse(raw).usage;
    if (nano !== costNano(u)) throw new Error(`header ${usd} USD but usage ${JSON.stringify(u)}`);
    return nano;
  }
  if (!raw.trimEnd().endsWith('data: [DONE]')) throw new Error(`stream did not finish: ${raw.slice(-300)}`);
  const chunks = raw.split('\n\n').filter((b) => b.startsWith('data: {')).map((b) => JSON.parse(b.slice(6)));
  if (chunks.some((c) => c.error)) throw new Error(`error event in the stream: ${raw.slice(-300)}`);
  const u = chunks.find((c) => c.usage)?.usage;
  if (!u) throw new Error('no usage chunk');
  return costNano(u);
}

// load: `loops` clients sending requests back to back until stop(), each
// request's reported cost added up (`sent` counts them, `failures` lists
// what went wrong). words makes each prompt, and the cache key, unique.
function startLoad(gw, words, loops) {
  const load = { sent: 0, reported: 0, failures: [], stopped: false };
  const running = Array.from({ length: loops }, async (_, k) => {
    while (!load.stopped) {
      const i = load.sent++;
      try {
        // Not `reported += await ...`: that reads `reported` before the
        // await and loses the other loops' additions.
        const cost = await oneRequest(gw, `k${k} n${i} ${words}`, i % 3 === 0);
        load.reported += cost;
      } catch (e) {
        load.failures.push(`request ${i}: ${e.message}`);
      }
    }
  });
  load.stop = () => {
    load.stopped = true;
    return Promise.all(running);
  };
  return load;
}

// The tenant's spend for today in Redis, once the journal has replayed up
// to want (or after 6 s, whatever it holds then).
async function settledSpend(redis, tenant, want) {
  let spent = -1;
  for (let i = 0; i < 60 && spent !== want; i++) {
    if (i) await sleep(100);
    spent = Number(redis.cli('GET', `cascade:{${tenant}}:spend:${today()}`) || 0);
  }
  return spent;
}

describe('Redis faults', () => {
  test('Redis SIGKILLed under load and restarted: 0 failed requests, spend = sum of reported costs', async () => {
    const redis = await redisServer({ persist: true });
    const peer = await startPeer({ name: 'rk' });
    const gw = await startGateway({ config: config(redis, peer, 'killed') });
    const load = startLoad(gw, 'some words to count', 6);
    // Enough traffic before and during the outage, however slow the build
    // (sanitizers) or the machine.
    await until(() => load.sent >= 20, 15000);
    const beforeKill = load.sent;
    await redis.stop(); // SIGKILL: no shutdown save, as a crash
    await sleep(800);
    await until(() => load.sent - beforeKill >= 10, 15000);
    const duringOutage = load.sent - beforeKill;
    await redis.start(); // same port, same AOF file
    await sleep(600);
    await load.stop();
    assert.deepEqual(load.failures, [], 'no request fails while Redis is killed and restarted');
    assert.ok(beforeKill >= 10, `${beforeKill} requests before the kill`);
    assert.ok(duringOutage >= 10, `${duringOutage} requests while Redis was down: the load really ran across it`);
    assert.ok(gw.logLines().some((l) => /unavailable/.test(l.msg ?? '')), 'the gateway saw the outage');
    // The journal replays on reconnect; wait for it to drain, then compare.
    const spent = await settledSpend(redis, 'killed', load.reported);
    console.log(`redis kill: ${load.sent} requests (${duringOutage} during the outage), reported ${load.reported} nano-USD, ` +
      `Redis holds ${spent}`);
    assert.ok(load.reported > 0);
    assert.equal(spent, load.reported, 'spend in Redis equals the sum of the costs the clients were told');
    await gw.stop();
    await redis.stop();
  });

  test('Redis frozen (SIGSTOP) under load, then thawed: 0 failed requests, spend counted once', async () => {
    // A Redis that stops answering is worse than one that dies: commands
    // time out, are journaled, and may still run when it wakes up. The
    // replay must not count them twice.
    const redis = await redisServer({ persist: true });
    const peer = await startPeer({ name: 'rf' });
    const gw = await startGateway({ config: config(redis, peer, 'frozen') });
    const load = startLoad(gw, 'frozen words', 6);
    await until(() => load.sent >= 20, 15000);
    const beforeFreeze = load.sent;
    redis.proc.kill('SIGSTOP');
    await sleep(1500);
    await until(() => load.sent - beforeFreeze >= 10, 15000);
    const duringFreeze = load.sent - beforeFreeze;
    redis.proc.kill('SIGCONT');
    await sleep(1500);
    await load.stop();
    assert.deepEqual(load.failures, [], 'no request fails while Redis is frozen');
    assert.ok(duringFreeze >= 10, `${duringFreeze} requests while Redis was frozen`);
    const spent = await settledSpend(redis, 'frozen', load.reported);
    console.log(`redis freeze: ${load.sent} requests (${duringFreeze} during the freeze), reported ${load.reported} nano-USD, ` +
      `Redis holds ${spent}`);
    assert.equal(spent, load.reported, 'spend in Redis equals the sum of the costs the clients were told');
    await gw.stop();
    await redis.stop();
  });

  test('Redis full (maxmemory, noeviction) refuses writes under load: 0 failed requests, spend caught up after', async () => {
    // Redis answers, but every write is an OOM error reply: neither a
    // timeout nor a dropped connection. Settlements must wait in the journal
    // and land once Redis has room again.
    const redis = await redisServer();
    const peer = await startPeer({ name: 'full' });
    const gw = await startGateway({ config: config(redis, peer, 'full') });
    const load = startLoad(gw, 'full words', 4);
    await until(() => load.sent >= 10, 15000);
    redis.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    redis.cli('CONFIG', 'SET', 'maxmemory', '1');
    const before = load.sent;
    await sleep(700);
    await until(() => load.sent - before >= 10, 15000);
    const duringFull = load.sent - before;
    redis.cli('CONFIG', 'SET', 'maxmemory', '0');
    await sleep(500);
    await load.stop();
    assert.deepEqual(load.failures, [], 'no request fails while Redis refuses writes');
    assert.ok(gw.logLines().some((l) => /OOM/.test(l.msg ?? '')), 'Redis really refused the writes');
    // What Redis refuses may repeat on every request: the log must not grow
    // with the traffic. Each kind of line goes out once a second at most
    // (log_limited), so over the few seconds of the outage the error lines
    // stay few, whatever the request count.
    const errors = gw.logLines().filter((l) => l.level === 'error');
    console.log(`redis full: ${errors.length} error lines for ${load.sent} requests`);
    assert.ok(errors.length <= 20, `${errors.length} error lines while Redis was full`);
    const spent = await settledSpend(redis, 'full', load.reported);
    console.log(`redis full: ${load.sent} requests (${duringFull} while full), reported ${load.reported} nano-USD, Redis holds ${spent}`);
    assert.equal(spent, load.reported, 'spend in Redis equals the sum of the costs the clients were told');
    await gw.stop();
  });

  test('start-up: AOF off is warned about, without any request, once; again after a Redis restart', async () => {
    const redis = await redisServer(); // --appendonly no
    const peer = await startPeer({ name: 'aof-off' });
    const gw = await startGateway({ config: config(redis, peer, 'aofoff') });
    const line = await gw.waitForLog(AOF_WARNING, 5000);
    assert.match(line.msg, /appendonly yes/);
    assert.match(line.msg, new RegExp(`127\\.0\\.0\\.1:${redis.port}`));
    // Two workers each connect and ask; one warning is enough.
    await sleep(300);
    assert.equal(gw.logLines().filter(AOF_WARNING).length, 1);
    // A Redis that comes back after an outage may be another one: asked again.
    await redis.stop();
    await gw.waitForLog((l) => /unavailable/.test(l.msg ?? ''), 5000);
    await redis.start();
    await gw.waitForLog((l) => /available again/.test(l.msg ?? ''), 5000);
    await until(() => gw.logLines().filter(AOF_WARNING).length === 2, 3000);
    await sleep(300);
    assert.equal(gw.logLines().filter(AOF_WARNING).length, 2);
    await gw.stop();
    await redis.stop();
  });

  test('start-up: AOF on, no warning (and the gateway did ask)', async () => {
    const redis = await redisServer({ persist: true }); // --appendonly yes
    const peer = await startPeer({ name: 'aof-on' });
    const gw = await startGateway({ config: config(redis, peer, 'aofon') });
    // Wait until the gateway's INFO has reached Redis, so silence means "AOF
    // is on" and not "not asked yet".
    // INFO's call count includes our own earlier polls (not the current one).
    let polls = 0;
    const asked = () => {
      const m = /cmdstat_info:calls=(\d+)/.exec(redis.cli('INFO', 'commandstats'));
      return Number(m?.[1] ?? 0) > polls++;
    };
    for (let i = 0; i < 100 && !asked(); i++) await sleep(50);
    assert.ok(asked(), 'the gateway sent INFO to Redis at start-up');
    await sleep(300);
    assert.equal(gw.logLines().filter(AOF_WARNING).length, 0, gw.logs());
    const res = await post(gw, chatBody('works', { model: 'small' }));
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(gw.logLines().filter(AOF_WARNING).length, 0);
    await gw.stop();
    await redis.stop();
  });

  test('a password: the right one is used (hits from Redis); a wrong one is one outage, backed off, not a flood', async () => {
    const redis = await redisServer();
    redis.cli('CONFIG', 'SET', 'requirepass', 'right-pass');
    const peer = await startPeer({ name: 'auth' });
    const authConfig = (id) => makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url, price: PRICE })],
      tenants: [{ id, keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }],
      redis: { url: redis.url, timeout_ms: 200, password_env: 'CASCADE_TEST_REDIS_PASSWORD' },
    });
    // The right password: an answer is cached in this Redis and replayed.
    const good = await startGateway({ config: authConfig('authok'), env: { CASCADE_TEST_REDIS_PASSWORD: 'right-pass' } });
    const ask = async (gw) => {
      const res = await post(gw, chatBody('cache me behind a password', { model: 'small', temperature: 0 }));
      assert.equal(res.status, 200);
      await res.text();
      return res.headers.get('x-cascade-cache');
    };
    await until(async () => (await ask(good)) === 'hit', 8000);
    assert.ok(Number(redis.cli('-a', 'right-pass', '--no-auth-warning', 'DBSIZE')) > 0);
    await good.stop();

    // A wrong one: served without Redis; one "unavailable" line and refusals
    // that back off (100 ms doubling to 2 s, per worker), where each worker
    // used to reconnect and log every 100 ms (about 60 lines in 3 s).
    const bad = await startGateway({ config: authConfig('authbad'), env: { CASCADE_TEST_REDIS_PASSWORD: 'wrong-pass' } });
    const res = await post(bad, chatBody('served without Redis', { model: 'small' }));
    assert.equal(res.status, 200);
    await res.text();
    await sleep(3000);
    const lines = bad.logLines();
    const refused = lines.filter((l) => /refused setup/.test(l.msg ?? ''));
    const down = lines.filter((l) => /unavailable/.test(l.msg ?? ''));
    assert.ok(refused.length >= 1 && refused.length <= 2, `${refused.length} refusal lines`);
    assert.match(refused[0].msg, /WRONGPASS|NOAUTH|invalid/);
    assert.equal(down.length, 1, JSON.stringify(down));
    assert.equal(lines.filter((l) => /available again/.test(l.msg ?? '')).length, 0);
    await bad.stop();
    await redis.stop();
  });

  test('start-up does not wait for Redis; the check runs once Redis appears', async () => {
    const redis = await redisServer(); // AOF off
    await redis.stop();
    const peer = await startPeer({ name: 'aof-late' });
    const t0 = Date.now();
    const gw = await startGateway({ config: config(redis, peer, 'aoflate') });
    assert.ok(Date.now() - t0 < 5000);
    const res = await post(gw, chatBody('served without Redis', { model: 'small' }));
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(gw.logLines().filter(AOF_WARNING).length, 0);
    await redis.start();
    await gw.waitForLog(AOF_WARNING, 8000);
    await gw.stop();
    await redis.stop();
  });
});
