// cache_passthrough.test.mjs: cached tool-call answers (issue 15), through
// real redis-server, real cascaded and the scripted peer.
//
// The cache stores the whole assistant message (content, tool calls,
// reasoning and the fields we do not interpret), and a hit replays it:
//   - non-stream: the same JSON as the original answer except `id` and
//     `created`;
//   - stream: what the openai SDK accumulates from the replayed chunks (the
//     message, finish_reason, usage, system_fingerprint) equals what it
//     accumulated from the original stream.
// One entry answers both shapes (a JSON answer replays as SSE and back), a
// replayed stream has a usage chunk only when asked, and concurrent
// identical requests make one upstream call whose whole message every client
// gets. Entries carry a format version ("v": 2); one written in another
// version (none, 1 or 3) is a miss, answered by the upstream and rewritten.
//
// The peer's answer is scripted per request with POST /_script {"answer"}
// (tests/support/peer.mjs), so a test knows exactly which tool calls the
// upstream made.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  TEST_KEY, authHeaders, cleanupAfterAll, makeConfig, sha256hex, sseParse, startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const TOOLS = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
  { type: 'function', function: { name: 'get_time', description: 'Local time in a time zone',
    parameters: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] } } },
];

// Two calls in one answer, arguments with nesting, unicode and escapes, so
// that a replay which re-encodes or splits them wrongly shows.
const TWO_CALLS = {
  content: null,
  reasoning_content: 'The user wants weather and time; call both tools.',
  tool_calls: [
    { id: 'call_weather_1', type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Zürich","units":{"temp":"C"},"note":"a \\"quoted\\" word"}' } },
    { id: 'call_time_2', type: 'function', function: { name: 'get_time', arguments: '{"tz":"Europe/Zurich"}' } },
  ],
  finish_reason: 'tool_calls',
};

// Text beside a tool call, as some models answer.
const TEXT_AND_CALL = {
  content: 'Let me look that up.',
  tool_calls: [
    { id: 'call_w_9', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Lyon"}' } },
  ],
  finish_reason: 'tool_calls',
};

const det = (text, extra = {}) => ({
  model: 'remote', temperature: 0, tools: TOOLS, messages: [{ role: 'user', content: text }], ...extra,
});

function withoutIdCreated(obj) {
  const o = structuredClone(obj);
  delete o.id;
  delete o.created;
  return o;
}

// accumulate: a streamed answer as an OpenAI-compatible client assembles it:
// string delta fields concatenated (content, reasoning_content, refusal),
// tool calls merged by index with their arguments concatenated; other
// fields taken as given.
function accumulate(events) {
  const msg = {};
  let finish = null;
  let usage = null;
  let fingerprint;
  for (const e of events) {
    if (e === '[DONE]') continue;
    assert.ok(!e.error, `error event: ${JSON.stringify(e)}`);
    if (e.usage) usage = e.usage;
    if (e.system_fingerprint !== undefined && e.system_fingerprint !== null) fingerprint = e.system_fingerprint;
    for (const c of e.choices || []) {
      if (c.finish_reason) finish = c.finish_reason;
      const d = c.delta || {};
      for (const [k, v] of Object.entries(d)) {
        if (k === 'tool_calls') {
          msg.tool_calls ??= [];
          for (const tc of v) {
            const slot = (msg.tool_calls[tc.index] ??= { function: { name: '', arguments: '' } });
            if (tc.id) slot.id = tc.id;
            if (tc.type) slot.type = tc.type;
            if (tc.function?.name) slot.function.name += tc.function.name;
            if (tc.function?.arguments) slot.function.arguments += tc.function.arguments;
          }
        } else if (typeof v === 'string' && k !== 'role') {
          msg[k] = (msg[k] ?? '') + v;
        } else if (v !== null) {
          msg[k] = v;
        }
      }
    }
  }
  if (msg.content === '') delete msg.content;
  return { msg, finish, usage, fingerprint };
}

describe('cached tool-call answers', () => {
  let redis;
  let peer;
  let gw;
  let client;
  const seen = [];    // every response the SDK received: status and headers

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'cp' });
    const config = makeConfig({
      tiers: [tier({ name: 'remote', model: 'remote-model', urls: peer.url })],
      tenants: [{ id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['remote'], cache: { mode: 'deterministic' } }],
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
    client = new OpenAI({
      baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0, timeout: 20000,
      fetch: async (url, init) => {
        const res = await fetch(url, init);
        seen.push({ status: res.status, headers: res.headers });
        return res;
      },
    });
  });
  after(async () => {
    await gw?.stop();
    await redis?.stop();
  });

  async function ask(body) {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(), body: JSON.stringify(body),
    });
    const text = await res.text();
    return {
      status: res.status, text, cache: res.headers.get('x-cascade-cache'),
      json: body.stream ? null : JSON.parse(text), events: body.stream && res.status === 200 ? sseParse(text) : null,
    };
  }

  test('non-stream: the hit is the original JSON except id and created', async () => {
    await peer.reset();
    await peer.script({ answer: TWO_CALLS, count: 1 });
    const body = det('weather and time in Zurich');
    const a = await ask(body);
    assert.equal(a.status, 200, a.text);
    assert.equal(a.cache, 'miss');
    // the original relays the upstream's tool calls (what the cache must keep)
    const m = a.json.choices[0].message;
    assert.equal(m.content, null);
    assert.deepEqual(m.tool_calls, TWO_CALLS.tool_calls);
    assert.equal(m.reasoning_content, TWO_CALLS.reasoning_content);
    assert.equal(a.json.choices[0].finish_reason, 'tool_calls');

    const b = await ask(body);
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'hit');
    assert.equal((await peer.stats()).requests, 1, 'the hit did not reach the upstream');
    assert.notEqual(b.json.id, a.json.id);
    assert.deepEqual(withoutIdCreated(b.json), withoutIdCreated(a.json));
  });

  test('stream: the SDK accumulates the same message, finish_reason and usage from the hit', async () => {
    await peer.reset();
    await peer.script({ answer: TEXT_AND_CALL, count: 1 });
    const body = det('weather in Lyon, streamed', { stream_options: { include_usage: true } });
    const finals = [];
    for (let i = 0; i < 2; i++) {
      const n = seen.length;
      const stream = client.chat.completions.stream(body);
      const final = await stream.finalChatCompletion();
      assert.equal(seen.length, n + 1);
      assert.equal(seen.at(-1).status, 200);
      assert.equal(seen.at(-1).headers.get('x-cascade-cache'), i === 0 ? 'miss' : 'hit');
      finals.push(final);
    }
    assert.equal((await peer.stats()).requests, 1, 'the hit did not reach the upstream');
    const [a, b] = finals;
    assert.equal(a.choices[0].message.content, TEXT_AND_CALL.content);
    assert.deepEqual(a.choices[0].message.tool_calls.map(({ id, type, function: f }) => ({ id, type, function: f })),
      TEXT_AND_CALL.tool_calls);
    assert.equal(a.choices[0].finish_reason, 'tool_calls');
    assert.ok(a.usage && a.usage.completion_tokens > 0, JSON.stringify(a.usage));
    assert.deepEqual(b.choices[0].message, a.choices[0].message);
    assert.equal(b.choices[0].finish_reason, a.choices[0].finish_reason);
    assert.deepEqual(b.usage, a.usage);
    assert.deepEqual(withoutIdCreated(b), withoutIdCreated(a));
  });

  test('stream: raw chunks of a hit carry each tool call whole, reasoning included, then finish, usage, [DONE]', async () => {
    await peer.reset();
    await peer.script({ answer: TWO_CALLS, count: 1 });
    const body = det('weather and time, raw stream', { stream: true, stream_options: { include_usage: true } });
    const a = await ask(body);
    assert.equal(a.status, 200, a.text);
    assert.equal(a.cache, 'miss');
    const b = await ask(body);
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'hit');
    assert.equal((await peer.stats()).requests, 1);
    const A = accumulate(a.events);
    const B = accumulate(b.events);
    assert.deepEqual(A.msg.tool_calls, TWO_CALLS.tool_calls, 'the original stream relays the tool calls');
    assert.equal(A.msg.reasoning_content, TWO_CALLS.reasoning_content);
    assert.deepEqual(B.msg, A.msg);
    assert.equal(B.finish, A.finish);
    assert.equal(B.finish, 'tool_calls');
    assert.deepEqual(B.usage, A.usage);
    assert.equal(B.fingerprint, A.fingerprint);
    // the replay's shape: role first, one delta per tool call with its
    // whole arguments, the finish chunk, the usage chunk, [DONE]
    const chunks = b.events.filter((e) => e !== '[DONE]');
    assert.equal(b.events.at(-1), '[DONE]');
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const toolDeltas = chunks.flatMap((c) => (c.choices || []).flatMap((ch) => ch.delta?.tool_calls || []));
    assert.equal(toolDeltas.length, 2, JSON.stringify(toolDeltas));
    toolDeltas.forEach((d, i) => {
      assert.equal(d.index, i);
      assert.deepEqual({ id: d.id, type: d.type, function: d.function }, TWO_CALLS.tool_calls[i]);
    });
    const usageChunk = chunks.at(-1);
    assert.deepEqual(usageChunk.choices, []);
    assert.ok(usageChunk.usage);
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'tool_calls');
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(c.id, chunks[0].id, 'one id across the replayed stream');
      assert.notEqual(c.id, a.events[0].id);
    }
  });

  test('one entry, both shapes: a non-stream answer replays as a stream, a streamed one as JSON', async () => {
    await peer.reset();
    await peer.script({ answer: TWO_CALLS, count: 1 });
    const body = det('cross-shape replay, JSON first');
    const a = await ask(body);
    assert.equal(a.cache, 'miss');
    const b = await ask({ ...body, stream: true });
    assert.equal(b.status, 200, b.text);
    assert.equal(b.cache, 'hit');
    const B = accumulate(b.events);
    // the JSON message without its nulls (content null beside tool calls,
    // refusal null) is what the stream's deltas add up to
    const am = a.json.choices[0].message;
    assert.deepEqual(B.msg, Object.fromEntries(Object.entries(am).filter(([, v]) => v !== null)));
    assert.equal(B.finish, a.json.choices[0].finish_reason);
    assert.equal(B.fingerprint, a.json.system_fingerprint);

    await peer.script({ answer: TEXT_AND_CALL, count: 1 });
    const sbody = det('cross-shape replay, stream first', { stream: true });
    const c = await ask(sbody);
    assert.equal(c.cache, 'miss');
    const C = accumulate(c.events);
    const d = await ask({ ...sbody, stream: false });
    assert.equal(d.status, 200, d.text);
    assert.equal(d.cache, 'hit');
    assert.equal((await peer.stats()).requests, 2);
    const dm = d.json.choices[0].message;
    assert.equal(dm.content, C.msg.content);
    assert.deepEqual(dm.tool_calls, C.msg.tool_calls);
    assert.equal(d.json.choices[0].finish_reason, C.finish);
    assert.equal(d.json.system_fingerprint, C.fingerprint);
  });

  test('concurrent identical requests: one upstream call, and every client gets the whole tool-call answer', async () => {
    await peer.reset();
    // the answer takes 400 ms, so the others arrive while it is in flight
    await peer.script({ answer: TWO_CALLS, directives: { delay_ms: '400' }, count: 1 });
    const body = det('single flight with tools');
    const rs = await Promise.all([
      ask(body), ask(body), ask({ ...body, stream: true, stream_options: { include_usage: true } }),
    ]);
    for (const r of rs) assert.equal(r.status, 200, r.text);
    assert.equal((await peer.stats()).requests, 1, 'one upstream call for three identical requests');
    const [a, b, c] = rs;
    assert.deepEqual(a.json.choices[0].message.tool_calls, TWO_CALLS.tool_calls);
    assert.deepEqual(withoutIdCreated(b.json), withoutIdCreated(a.json));
    const C = accumulate(c.events);
    assert.deepEqual(C.msg.tool_calls, TWO_CALLS.tool_calls);
    assert.equal(C.msg.reasoning_content, TWO_CALLS.reasoning_content);
    assert.equal(C.finish, 'tool_calls');
    assert.deepEqual(C.usage, a.json.usage);
  });

  test('a replayed stream without include_usage has no usage chunk', async () => {
    await peer.reset();
    await peer.script({ answer: TEXT_AND_CALL, count: 1 });
    const body = det('usage only when asked', { stream: true, stream_options: { include_usage: true } });
    const a = await ask(body);
    assert.equal(a.cache, 'miss');
    const { stream_options: _, ...noUsage } = body;
    const b = await ask(noUsage);
    assert.equal(b.status, 200, b.text);
    // stream_options is not part of the key: the same entry answers
    assert.equal(b.cache, 'hit');
    assert.ok(b.events.every((e) => e === '[DONE]' || !e.usage), `usage chunk not asked for:\n${b.text}`);
    assert.deepEqual(accumulate(b.events).msg, accumulate(a.events).msg);
  });

  test('an entry of another format version is a miss, and is rewritten as version 2', async () => {
    await peer.reset();
    const body = det('versioned entry please');
    const scan = () => new Set(redis.cli('--scan', '--pattern', 'cascade:{acme}:resp:*').split('\n').filter(Boolean));
    const before = scan();
    await peer.script({ answer: TWO_CALLS, count: 1 });
    const first = await ask(body);
    assert.equal(first.cache, 'miss');
    const key = [...scan()].find((k) => !before.has(k));
    assert.ok(key, 'the first answer was stored under a new cascade:{acme}:resp:<hex> key');
    assert.match(key, /^cascade:\{acme\}:resp:[0-9a-f]+$/);
    const stored = JSON.parse(redis.cli('GET', key));
    assert.equal(stored.v, 2, `stored entry: ${JSON.stringify(stored)}`);
    assert.deepEqual(stored.message?.tool_calls, TWO_CALLS.tool_calls, 'the entry holds the whole message');

    const { v, ...unversioned } = stored;
    const variants = { 'no "v"': unversioned, '"v": 1': { ...unversioned, v: 1 }, '"v": 3': { ...unversioned, v: 3 } };
    let requests = 1;
    for (const [what, entry] of Object.entries(variants)) {
      redis.cli('SET', key, JSON.stringify(entry), 'EX', '3600');
      await peer.script({ answer: TWO_CALLS, count: 1 });
      const r = await ask(body);
      requests++;
      assert.equal(r.status, 200, `${what}: ${r.text}`);
      assert.equal(r.cache, 'miss', `an entry with ${what} must not be replayed`);
      assert.equal((await peer.stats()).requests, requests, `${what}: answered by the upstream`);
      assert.deepEqual(withoutIdCreated(r.json), withoutIdCreated(first.json), what);
      let again;
      for (let i = 0; i < 50; i++) {
        again = JSON.parse(redis.cli('GET', key));
        if (again.v === 2) break;
        await new Promise((res) => setTimeout(res, 20));
      }
      assert.equal(again.v, 2, `${what}: the entry was rewritten as version 2`);
      assert.ok(Number(redis.cli('TTL', key)) > 0, 'the rewritten entry has a TTL');
    }
    // and the rewritten entry is a hit
    const hit = await ask(body);
    assert.equal(hit.cache, 'hit');
    assert.equal((await peer.stats()).requests, requests);
    assert.deepEqual(withoutIdCreated(hit.json), withoutIdCreated(first.json));
  });

  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});
