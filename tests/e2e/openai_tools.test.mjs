// openai_tools.test.mjs: the openai npm SDK's tool loop (runTools) through
// cascaded to a remote tier, two rounds of tool use, streamed and not
// (issue 15's acceptance: "through the openai SDK's runTools with two rounds
// of tool use").
//
// The peer's three answers are scripted in order (POST /_script {"answer"},
// tests/support/peer.mjs): round 1 calls get_weather, round 2 calls
// get_time, round 3 answers in text. The test checks what a product team
// would: both JavaScript tools ran with the parsed arguments, the final
// content, and that every request reaching the upstream carried the whole
// conversation (the assistant's tool_calls and the tool results) exactly as
// the SDK sent it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  TEST_KEY, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer, tier,
} from '../support/harness.mjs';

cleanupAfterAll();

const ROUND_1 = {
  content: null,
  tool_calls: [{ id: 'call_w_1', type: 'function',
    function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' } }],
  finish_reason: 'tool_calls',
};
const ROUND_2 = {
  content: null,
  tool_calls: [{ id: 'call_t_2', type: 'function', function: { name: 'get_time', arguments: '{"tz":"Europe/Paris"}' } }],
  finish_reason: 'tool_calls',
};
const FINAL = { content: 'In Paris it is 21 degrees and 14:05.', finish_reason: 'stop' };

describe('runTools through the gateway: two rounds of tool use', () => {
  let peer;
  let gw;
  let client;
  let sent = [];      // what the SDK sent: {body, status, tier}

  before(async () => {
    peer = await startPeer({ name: 'tools' });
    const config = makeConfig({
      tiers: [tier({ name: 'remote', model: 'remote-model', urls: peer.url })],
      tenants: [{ id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['remote'], cache: { mode: 'off' } }],
    });
    gw = await startGateway({ config });
    client = new OpenAI({
      baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0, timeout: 20000,
      fetch: async (url, init) => {
        const res = await fetch(url, init);
        sent.push({ body: JSON.parse(init.body), status: res.status, tier: res.headers.get('x-cascade-tier') });
        return res;
      },
    });
  });
  after(() => gw?.stop());

  for (const stream of [false, true]) {
    test(`runTools, ${stream ? 'streaming' : 'non-streaming'}: both tools run, the final answer arrives, the history goes upstream unchanged`,
      async () => {
        await peer.reset();
        for (const answer of [ROUND_1, ROUND_2, FINAL]) await peer.script({ answer, count: 1 });
        sent = [];
        const calls = [];
        const tools = [
          { type: 'function', function: {
            name: 'get_weather', description: 'Current weather in a city',
            parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } },
              required: ['city'] },
            parse: JSON.parse,
            function: (args) => {
              calls.push(['get_weather', args]);
              return { temperature: 21, unit: args.unit };
            },
          } },
          { type: 'function', function: {
            name: 'get_time', description: 'Local time in a time zone',
            parameters: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] },
            parse: JSON.parse,
            function: async (args) => {
              calls.push(['get_time', args]);
              return '14:05';
            },
          } },
        ];
        const messages = [
          { role: 'system', content: 'You answer with tools.' },
          { role: 'user', content: 'What is the weather and the time in Paris?' },
        ];
        const runner = client.chat.completions.runTools({
          model: 'remote', messages, tools, stream,
          ...(stream ? { stream_options: { include_usage: true } } : {}),
        });
        let streamedText = '';
        if (stream) runner.on('content', (delta) => { streamedText += delta; });
        const content = await runner.finalContent();

        // the tools ran once each, in order, with the parsed arguments
        assert.deepEqual(calls, [
          ['get_weather', { city: 'Paris', unit: 'celsius' }],
          ['get_time', { tz: 'Europe/Paris' }],
        ]);
        assert.equal(content, FINAL.content);
        if (stream) assert.equal(streamedText, FINAL.content);

        // three requests, all answered 200 by the remote tier
        assert.equal(sent.length, 3, `the SDK sent ${sent.length} requests`);
        for (const s of sent) {
          assert.equal(s.status, 200);
          assert.equal(s.tier, 'remote');
          assert.equal(s.body.stream === true, stream);
        }
        // what the SDK put in the history is what the upstream made
        const hist = sent[2].body.messages;
        assert.equal(hist.length, 6, JSON.stringify(hist, null, 1));
        const pick = (tc) => ({ id: tc.id, type: tc.type, function: { name: tc.function.name, arguments: tc.function.arguments } });
        assert.equal(hist[2].role, 'assistant');
        assert.deepEqual(hist[2].tool_calls.map(pick), ROUND_1.tool_calls);
        assert.deepEqual([hist[3].role, hist[3].tool_call_id], ['tool', 'call_w_1']);
        assert.deepEqual(JSON.parse(hist[3].content), { temperature: 21, unit: 'celsius' });
        assert.equal(hist[4].role, 'assistant');
        assert.deepEqual(hist[4].tool_calls.map(pick), ROUND_2.tool_calls);
        assert.deepEqual([hist[5].role, hist[5].tool_call_id, hist[5].content], ['tool', 'call_t_2', '14:05']);

        // each request reached the upstream with the messages, tools and
        // tool_choice exactly as the SDK sent them
        const got = await peer.requests();
        assert.equal(got.length, 3);
        for (let i = 0; i < 3; i++) {
          assert.equal(got[i].body.model, 'remote-model');
          assert.deepEqual(got[i].body.messages, sent[i].body.messages, `request ${i + 1}: messages`);
          assert.deepEqual(got[i].body.tools, sent[i].body.tools, `request ${i + 1}: tools`);
          assert.deepEqual(got[i].body.tool_choice, sent[i].body.tool_choice, `request ${i + 1}: tool_choice`);
        }
        assert.equal(got[0].body.messages.length, 2);
        assert.equal(got[1].body.messages.length, 4);
        assert.equal(got[2].body.messages.length, 6);

        // the run's last completion: the final text, finish_reason stop
        const last = await runner.finalChatCompletion();
        assert.equal(last.choices[0].finish_reason, 'stop');
        assert.equal(last.model, 'remote-model');
      });
  }

  for (const stream of [false, true]) {
    test(`runTools, ${stream ? 'streaming' : 'non-streaming'}: two parallel calls in one round, each answered by its own tool message`,
      async () => {
        await peer.reset();
        const parallel = {
          content: null,
          tool_calls: [
            { id: 'call_p_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } },
            { id: 'call_p_2', type: 'function', function: { name: 'get_time', arguments: '{"tz":"Europe/Oslo"}' } },
          ],
          finish_reason: 'tool_calls',
        };
        await peer.script({ answer: parallel, count: 1 });
        await peer.script({ answer: { content: 'Oslo: cold, 09:00.', finish_reason: 'stop' }, count: 1 });
        sent = [];
        const calls = [];
        const fn = (name, result) => ({ type: 'function', function: { name, description: name,
          parameters: { type: 'object', properties: {} }, parse: JSON.parse,
          function: (args) => {
            calls.push([name, args]);
            return result;
          } } });
        const runner = client.chat.completions.runTools({
          model: 'remote', stream, messages: [{ role: 'user', content: 'Oslo weather and time?' }],
          tools: [fn('get_weather', 'cold'), fn('get_time', '09:00')],
        });
        assert.equal(await runner.finalContent(), 'Oslo: cold, 09:00.');
        assert.deepEqual(calls, [['get_weather', { city: 'Oslo' }], ['get_time', { tz: 'Europe/Oslo' }]]);
        const got = await peer.requests();
        assert.equal(got.length, 2);
        const hist = got[1].body.messages;
        assert.deepEqual(hist.slice(1).map((m) => [m.role, m.tool_call_id ?? null]),
          [['assistant', null], ['tool', 'call_p_1'], ['tool', 'call_p_2']]);
        assert.deepEqual(hist[1].tool_calls.map((t) => ({ id: t.id, type: t.type,
          function: { name: t.function.name, arguments: t.function.arguments } })), parallel.tool_calls);
        assert.deepEqual(got[1].body.messages, sent[1].body.messages);
      });
  }

  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});
