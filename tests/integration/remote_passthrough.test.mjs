// remote_passthrough.test.mjs: a remote tier relays the whole answer of an
// upstream that answers as vLLM (--enable-auto-tool-choice, a reasoning
// parser) and hosted APIs (OpenAI, DeepSeek) do -- tool calls, reasoning,
// system_fingerprint, logprobs -- and sends the client's request upstream
// unchanged except for what the gateway owns (issue 15).
//
// Real cascaded, the scripted peer (tests/support/peer.mjs), and the openai
// npm SDK where a product would use it. What the peer sent is computed with
// peer.mjs's own exports (peerAnswer, peerReply) from the body it recorded,
// so every check compares the client's view with the upstream's.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  TEST_KEY, authHeaders, cleanupAfterAll, makeConfig, sha256hex, sseParse, startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { PEER_FINGERPRINT, parseDirectives, peerAnswer, peerReply } from '../support/peer.mjs';

cleanupAfterAll();

const NAME = 'pt';
const TOOLS = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { query: { type: 'string' }, n: { type: 'integer' } } } } },
  { type: 'function', function: { name: 'get_time', description: 'Local time',
    parameters: { type: 'object', properties: { query: { type: 'string' }, n: { type: 'integer' } } } } },
];

describe('remote tier pass-through', () => {
  let peer;
  let gw;
  let client;

  before(async () => {
    peer = await startPeer({ name: NAME });
    const config = makeConfig({
      tiers: [
        tier({ name: 'remote', model: 'remote-model', urls: peer.url }),
        tier({ name: 'vision', model: 'vision-model', urls: peer.url, accepts: ['text', 'image_url'] }),
      ],
      // no cache: every request must reach the upstream
      tenants: [{ id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['remote', 'vision'], cache: { mode: 'off' } }],
    });
    gw = await startGateway({ config });
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0, timeout: 20000 });
  });
  after(() => gw?.stop());

  // The last request the peer received, and what it answered to it.
  async function upstream() {
    const recorded = (await peer.requests()).filter((r) => r.path === '/v1/chat/completions');
    assert.ok(recorded.length > 0, 'the request reached the upstream');
    const got = recorded[recorded.length - 1];
    return { body: got.body, headers: got.headers, answer: peerAnswer(got.body, NAME), reply: peerReply(got.body, NAME) };
  }

  async function rawStream(body) {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(), body: JSON.stringify({ ...body, stream: true }),
    });
    assert.equal(res.status, 200, await res.clone().text());
    return sseParse(await res.text());
  }

  test('non-stream tool call: tool_calls as the upstream sent them, content null, finish_reason tool_calls', async () => {
    await peer.reset();
    const body = {
      model: 'remote', tools: TOOLS, tool_choice: 'auto', response_format: { type: 'text' }, x_vendor_field: { keep: [1, 2] },
      messages: [{ role: 'user', content: 'weather in Paris [[peer:tool_call=get_weather]]' }],
    };
    const r = await client.chat.completions.create(body);
    const up = await upstream();
    // the client's JSON went up as sent, only the model and stream are the gateway's
    for (const k of ['messages', 'tools', 'tool_choice', 'response_format', 'x_vendor_field']) {
      assert.deepEqual(up.body[k], body[k], `${k} unchanged upstream`);
    }
    assert.equal(up.body.model, 'remote-model');
    assert.equal(up.body.stream, false);
    assert.equal(up.body.stream_options, undefined);
    assert.equal(up.answer.message.tool_calls.length, 1);
    const m = r.choices[0].message;
    assert.deepEqual(m.tool_calls, up.answer.message.tool_calls);
    assert.equal(m.content, null);
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(r.system_fingerprint, PEER_FINGERPRINT);
    assert.equal(r.usage.completion_tokens, up.answer.usage.completion_tokens);
    assert.equal(r.usage.prompt_tokens, up.answer.usage.prompt_tokens);
    assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { query: 'weather in Paris', n: 0 });
  });

  test('streamed parallel tool calls: fragments relayed in order, the SDK accumulates the same calls', async () => {
    await peer.reset();
    const body = {
      model: 'remote', tools: TOOLS,
      messages: [{ role: 'user', content: 'Paris now [[peer:tool_calls=get_weather,get_time]]' }],
    };
    // chunk level: the head fragment names the call, later ones carry only
    // index and an arguments piece, as OpenAI and vLLM stream them
    const events = await rawStream(body);
    assert.equal(events[events.length - 1], '[DONE]');
    const frags = events.filter((e) => e !== '[DONE]').flatMap((e) => e.choices?.[0]?.delta?.tool_calls ?? []);
    const up = await upstream();
    const sent = up.answer.deltas.flatMap((x) => x.delta.tool_calls ?? []);
    assert.deepEqual(frags, sent, 'the tool-call fragments, in order');
    assert.ok(frags.length >= 4, `several fragments (${frags.length})`);
    assert.equal(frags[0].function.arguments, '');
    assert.ok(frags[0].id && frags[0].type === 'function' && frags[0].function.name === 'get_weather');
    assert.deepEqual(Object.keys(frags[1]).sort(), ['function', 'index']);
    const finish = events.filter((e) => e !== '[DONE]').map((e) => e.choices?.[0]?.finish_reason).filter(Boolean);
    assert.deepEqual(finish, ['tool_calls']);
    for (const e of events) {
      if (e !== '[DONE]' && e.choices?.length) assert.equal(e.system_fingerprint, PEER_FINGERPRINT, JSON.stringify(e));
    }

    // SDK level
    await peer.reset();
    const final = await client.chat.completions.stream({ ...body, stream: true }).finalChatCompletion();
    const up2 = await upstream();
    assert.equal(up2.body.stream, true);
    assert.equal(up2.body.stream_options?.include_usage, true);
    const calls = final.choices[0].message.tool_calls.map(({ id, type, function: f }) => ({ id, type, function: f }));
    assert.deepEqual(calls, up2.answer.message.tool_calls);
    assert.equal(calls.length, 2);
    assert.equal(final.choices[0].finish_reason, 'tool_calls');
    assert.ok(!final.choices[0].message.content, `no content: ${final.choices[0].message.content}`);
  });

  test('a vLLM-style whole answer: its empty tool_calls and null fields leave the text answer as it was', async () => {
    await peer.reset();
    const r = await client.chat.completions.create({
      model: 'remote', tools: TOOLS, messages: [{ role: 'user', content: 'plain answer [[peer:style=vllm]]' }],
    });
    const up = await upstream();
    const m = r.choices[0].message;
    assert.equal(m.content, up.reply.content);
    assert.equal(m.content, 'echo: plain answer');
    assert.ok(!m.tool_calls?.length, `no tool calls: ${JSON.stringify(m.tool_calls)}`);
    assert.ok(!m.reasoning_content, 'no reasoning');
    assert.equal(r.choices[0].finish_reason, 'stop');

    await peer.reset();
    const t = await client.chat.completions.create({
      model: 'remote', tools: TOOLS, messages: [{ role: 'user', content: 'x [[peer:style=vllm]] [[peer:tool_call=get_time]]' }],
    });
    const up2 = await upstream();
    assert.match(t.choices[0].message.tool_calls[0].id, /^chatcmpl-tool-/);
    assert.deepEqual(t.choices[0].message.tool_calls, up2.answer.message.tool_calls);
    assert.equal(t.choices[0].message.content, null);
  });

  test('reasoning_content is relayed before the content, streamed and not', async () => {
    await peer.reset();
    const body = { model: 'remote', messages: [{ role: 'user', content: 'why is the sky blue [[peer:reasoning]]' }] };
    const r = await client.chat.completions.create(body);
    const up = await upstream();
    assert.equal(r.choices[0].message.reasoning_content, 'think: why is the sky blue');
    assert.equal(r.choices[0].message.content, up.answer.message.content);
    assert.equal(r.choices[0].message.content, 'echo: why is the sky blue');
    assert.equal(r.system_fingerprint, PEER_FINGERPRINT);

    await peer.reset();
    const events = (await rawStream(body)).filter((e) => e !== '[DONE]');
    const kinds = [];
    let reasoning = '';
    let content = '';
    for (const e of events) {
      const d = e.choices?.[0]?.delta ?? {};
      if (typeof d.reasoning_content === 'string' && d.reasoning_content) {
        reasoning += d.reasoning_content;
        kinds.push('r');
      }
      if (typeof d.content === 'string' && d.content) {
        content += d.content;
        kinds.push('c');
      }
    }
    assert.equal(reasoning, 'think: why is the sky blue');
    assert.equal(content, 'echo: why is the sky blue');
    assert.match(kinds.join(''), /^r+c+$/, 'all reasoning before any content');
  });

  test('an image part reaches a tier that accepts it unchanged', async () => {
    await peer.reset();
    const messages = [{ role: 'user', content: [
      { type: 'text', text: 'what is in this picture' },
      { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==', detail: 'low' } },
    ] }];
    const r = await client.chat.completions.create({ model: 'vision', messages });
    const up = await upstream();
    assert.deepEqual(up.body.messages, messages);
    assert.equal(up.body.model, 'vision-model');
    assert.equal(r.choices[0].message.content, 'echo: what is in this picture images=1');
  });

  test('logprobs still come back per token, streamed and not', async () => {
    await peer.reset();
    const body = { model: 'remote', logprobs: true, top_logprobs: 2, messages: [{ role: 'user', content: 'one two three' }] };
    const r = await client.chat.completions.create(body);
    const up = await upstream();
    assert.equal(up.body.logprobs, true);
    assert.equal(up.body.top_logprobs, 2);
    const lp = r.choices[0].logprobs.content;
    assert.deepEqual(lp.map((e) => e.token), up.reply.chunks);
    assert.deepEqual(lp.map((e) => e.logprob), up.reply.logprobs.map((x) => x + 0)); // -0 is 0 in JSON
    assert.equal(lp[0].top_logprobs.length, 2);

    await peer.reset();
    const events = (await rawStream(body)).filter((e) => e !== '[DONE]');
    const tokens = events.flatMap((e) => e.choices?.[0]?.logprobs?.content ?? []).map((e) => e.token);
    assert.deepEqual(tokens, up.reply.chunks);

    // not asked: none asked upstream either
    await peer.reset();
    await client.chat.completions.create({ model: 'remote', messages: [{ role: 'user', content: 'no logprobs' }] });
    const up2 = await upstream();
    assert.equal(up2.body.logprobs, undefined);
    assert.equal(up2.body.top_logprobs, undefined);
  });

  test('runTools: a tool call, the tool runs, the answer quotes its result (two rounds)', async () => {
    await peer.reset();
    const ran = [];
    const runner = client.chat.completions.runTools({
      model: 'remote',
      messages: [{ role: 'user', content: 'weather in Oslo [[peer:tool_call=get_weather]]' }],
      tools: [{ type: 'function', function: {
        name: 'get_weather', parameters: TOOLS[0].function.parameters,
        parse: JSON.parse,
        function: (args) => {
          ran.push(args);
          return `cold in ${args.query}`;
        },
      } }],
    });
    const content = await runner.finalContent();
    const { clean } = parseDirectives('weather in Oslo [[peer:tool_call=get_weather]]', NAME);
    assert.deepEqual(ran, [{ query: clean, n: 0 }]);
    assert.equal(content, `tool: cold in ${clean}`);
    const rounds = (await peer.requests()).filter((x) => x.path === '/v1/chat/completions');
    assert.equal(rounds.length, 2);
    // round 2 carried the assistant's call and the tool's result as the SDK sent them
    const msgs = rounds[1].body.messages;
    assert.equal(msgs[1].role, 'assistant');
    assert.equal(msgs[1].tool_calls[0].function.name, 'get_weather');
    assert.equal(msgs[2].role, 'tool');
    assert.equal(msgs[2].tool_call_id, msgs[1].tool_calls[0].id);
  });

  test('trace context goes upstream', async () => {
    await peer.reset();
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...authHeaders(), traceparent, tracestate: 'vendor=abc' },
      body: JSON.stringify({ model: 'remote', messages: [{ role: 'user', content: 'trace me' }] }),
    });
    assert.equal(res.status, 200);
    const up = await upstream();
    const got = up.headers.traceparent;
    assert.match(got ?? '', /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
    assert.equal(got.split('-')[1], '4bf92f3577b34da6a3ce929d0e0e4736', 'same trace id');
    assert.equal(up.headers.tracestate, 'vendor=abc');
  });
});
