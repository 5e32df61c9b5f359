// cascade_judge.test.mjs: the cascade's judge (policies/judge.h) through a
// real cascaded, with two scripted peers as the cheap and the top tier.
//
// The cheap peer's answers are scripted token by token with the logprobs and
// top_logprobs an upstream would send (POST /_script {"answer": {"tokens"}}),
// so each case is an answer built for it:
//   - a multiple-choice question answered " B" with B at 0.95 among the
//     letters: kept, and the cheap tier was asked for top_logprobs;
//   - the same question answered " B" at 0.45 against C at 0.40: escalated on
//     the margin;
//   - a free-text answer of 40 sure tokens with one collapsed span of 5:
//     escalated under the quantile rule (the default), kept under the mean
//     rule, whose mean hardly moves;
// and the judgements show in GET /metrics (cascade_judgements_total) and in
// the fleet stats (judgements by verdict and reason), through a real Redis.
//
// Every tenant routes all auto traffic into the cascade band (t_low 0,
// t_high 1), so the classifier's score does not matter here.
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer,
  tier,
} from '../support/harness.mjs';
import { startRedisForFile } from '../support/redis.mjs';

cleanupAfterAll();

const MODEL = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
const PRICES = { small: { input_per_1m: 1, output_per_1m: 2 }, large: { input_per_1m: 10, output_per_1m: 20 } };

const QUESTION = 'Which of these numbers is prime?\nA. 4\nB. 7\nC. 9\nD. 12\nAnswer with the letter.';

// One scripted token: its text, probability and alternatives {text: p}.
const tok = (token, p, alts = {}) => ({
  token, logprob: Math.log(p),
  top_logprobs: Object.entries(alts).map(([t, q]) => ({ token: t, logprob: Math.log(q) })),
});

const SURE_B = [tok('The', 0.97), tok(' answer', 0.99), tok(' is', 0.98),
  tok(' B', 0.95, { ' B': 0.95, ' A': 0.02, ' C': 0.02, ' D': 0.01 }), tok('.', 0.99)];
const SPLIT_B = [tok('The', 0.97), tok(' answer', 0.99), tok(' is', 0.98),
  tok(' B', 0.45, { ' B': 0.45, ' C': 0.40, ' A': 0.1, ' D': 0.05 }), tok('.', 0.99)];
// 40 tokens at about -0.1, five in the middle at -4: mean -0.59 (above the
// mean rule's -1), 10th percentile -4 (below the quantile rule's -2.5).
const COLLAPSED = Array.from({ length: 40 }, (_, i) => ({
  token: ` w${i}`, logprob: i >= 20 && i < 25 ? -4 : -0.1, top_logprobs: [],
}));

function tenant(id, cascade) {
  return { id, keys: [sha256hex(`sk-${id}`)], allowed_tiers: ['small', 'large'],
    routing: { t_low: 0, t_high: 1, cascade } };
}

async function ask(gw, id, body) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: { ...authHeaders(`sk-${id}`), 'x-cascade-cache': 'bypass' }, body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, json: res.ok && !body.stream ? JSON.parse(text) : null,
    tier: res.headers.get('x-cascade-tier'), escalated: res.headers.get('x-cascade-escalated') };
}

async function metric(gw, series) {
  const res = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  const line = (await res.text()).split('\n').find((l) => l.startsWith(series + ' '));
  assert.ok(line, `no series ${series} in /metrics`);
  return Number(line.split(' ')[1]);
}

describe('the cascade judge through a gateway', () => {
  let redis;
  let small;
  let large;
  let gw;
  const t0 = Math.floor(Date.now() / 1000) - 60;
  before(async () => {
    redis = await startRedisForFile();
    small = await startPeer({ name: 'small' });
    large = await startPeer({ name: 'large' });
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large })],
      tenants: [
        tenant('mc', {}),
        tenant('quant', {}),
        tenant('mean', { rule: 'mean', threshold: -1 }),
        tenant('nooptions', { options: false, rule: 'mean', threshold: -1 }),
      ],
      classifier: { model: MODEL },
      redis: { url: redis.url },
    });
    gw = await startGateway({ config });
  });

  const reset = () => Promise.all([small.reset(), large.reset()]);
  const counts = async () => [(await small.stats()).requests, (await large.stats()).requests];

  test('a confident multiple-choice answer is kept; the cheap tier was asked for top_logprobs', async () => {
    await reset();
    await small.script({ answer: { tokens: SURE_B } });
    const r = await ask(gw, 'mc', chatBody(QUESTION, { model: 'auto' }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'small');
    assert.equal(r.escalated, 'false');
    assert.equal(r.json.choices[0].message.content, 'The answer is B.');
    assert.equal(r.json.choices[0].logprobs, null, 'logprobs the client did not ask for are not shown');
    assert.deepEqual(await counts(), [1, 0]);
    const sent = (await small.stats()).last_request;
    assert.equal(sent.logprobs, true);
    assert.equal(sent.top_logprobs, 5, 'the default number of alternatives for a multiple-choice prompt');
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'mc');
    assert.equal(line.judge, 'keep');
    assert.equal(line.judge_reason, 'option_prob');
    assert.ok(Math.abs(line.judge_value - 0.95) < 1e-3, `judge_value ${line.judge_value}`);
  });

  test('a split multiple-choice answer escalates on the margin', async () => {
    await reset();
    await small.script({ answer: { tokens: SPLIT_B } });
    const r = await ask(gw, 'mc', chatBody(QUESTION + ' ', { model: 'auto' }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'large');
    assert.equal(r.escalated, 'true');
    assert.equal(r.json.model, 'large-model');
    assert.deepEqual(await counts(), [1, 1]);
    // The top tier gets the client's request: no forced logprobs.
    assert.equal((await large.stats()).last_request.top_logprobs, undefined);
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'mc' && l.judge === 'escalate');
    assert.equal(line.judge_reason, 'option_margin');
    assert.ok(Math.abs(line.judge_value - 0.05) < 1e-3, `judge_value ${line.judge_value}`);
  });

  test("the client's own top_logprobs decide what it sees; the judge still gets its five", async () => {
    await reset();
    await small.script({ answer: { tokens: SURE_B } });
    const r = await ask(gw, 'mc', chatBody(QUESTION + '  ', { model: 'auto', logprobs: true, top_logprobs: 2 }));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'small');
    assert.equal((await small.stats()).last_request.top_logprobs, 5);
    const entries = r.json.choices[0].logprobs.content;
    assert.equal(entries.length, SURE_B.length);
    const letter = entries[3];
    assert.equal(letter.token, ' B');
    assert.deepEqual(letter.top_logprobs.map((t) => t.token), [' B', ' A']);
    // And one who asks for more than the judge gets them all.
    await reset();
    await small.script({ answer: { tokens: SURE_B } });
    const m = await ask(gw, 'mc', chatBody(QUESTION + '   ', { model: 'auto', logprobs: true, top_logprobs: 8 }));
    assert.equal((await small.stats()).last_request.top_logprobs, 8);
    assert.equal(m.json.choices[0].logprobs.content[3].top_logprobs.length, 4);
  });

  test('a streamed multiple-choice answer is judged whole, then streamed', async () => {
    await reset();
    await small.script({ answer: { tokens: SURE_B } });
    const r = await ask(gw, 'mc', chatBody(QUESTION + '    ', { model: 'auto', stream: true }));
    assert.equal(r.status, 200);
    assert.equal(r.tier, 'small');
    const text = r.text.split('\n').filter((l) => l.startsWith('data: {'))
      .map((l) => JSON.parse(l.slice(6)).choices[0]?.delta?.content ?? '').join('');
    assert.equal(text, 'The answer is B.');
    await reset();
    await small.script({ answer: { tokens: SPLIT_B } });
    const s = await ask(gw, 'mc', chatBody(QUESTION + '     ', { model: 'auto', stream: true }));
    assert.equal(s.tier, 'large');
    assert.deepEqual(await counts(), [1, 1]);
  });

  test('free text with one collapsed span: escalated under quantile, kept under mean', async () => {
    await reset();
    await small.script({ answer: { tokens: COLLAPSED } });
    const q = await ask(gw, 'quant', chatBody('Tell me about the sea.', { model: 'auto' }));
    assert.equal(q.status, 200, q.text);
    assert.equal(q.tier, 'large');
    assert.equal(q.escalated, 'true');
    // Free text: no alternatives asked for.
    assert.equal((await small.stats()).last_request.top_logprobs, undefined);
    await reset();
    await small.script({ answer: { tokens: COLLAPSED } });
    const m = await ask(gw, 'mean', chatBody('Tell me about the sea.', { model: 'auto' }));
    assert.equal(m.tier, 'small');
    assert.equal(m.escalated, 'false');
    assert.equal(m.json.choices[0].message.content, COLLAPSED.map((t) => t.token).join(''));
  });

  test('options: false judges a multiple-choice prompt as free text', async () => {
    await reset();
    await small.script({ answer: { tokens: SPLIT_B } });
    const r = await ask(gw, 'nooptions', chatBody(QUESTION, { model: 'auto' }));
    assert.equal(r.tier, 'small', 'every token is sure: the mean keeps it');
    assert.equal((await small.stats()).last_request.top_logprobs, undefined);
  });

  test('metrics and stats count every judgement by verdict and reason', async () => {
    const expect = {
      mc: { keep: { option_prob: 3 + 1 }, escalate: { option_margin: 2 } },
      quant: { escalate: { quantile: 1 } },
      mean: { keep: { mean: 1 } },
      nooptions: { keep: { mean: 1 } },
    };
    for (const [t, byVerdict] of Object.entries(expect)) {
      for (const [v, byReason] of Object.entries(byVerdict)) {
        for (const [reason, n] of Object.entries(byReason)) {
          assert.equal(await metric(gw, `cascade_judgements_total{tenant="${t}",verdict="${v}",reason="${reason}"}`), n,
            `${t} ${v} ${reason}`);
        }
      }
    }
    // Every possible pair of a configured tenant is there from the start.
    assert.equal(await metric(gw, 'cascade_judgements_total{tenant="quant",verdict="escalate",reason="cheap_failed"}'), 0);

    // The stats reach Redis once a second; poll until they have.
    const q = new URLSearchParams({ tenant: 'mc', from: String(t0), to: String(t0 + 600), step: '60' });
    let totals;
    for (let i = 0; i < 50; i++) {
      const res = await fetch(`${gw.url}/admin/v1/stats?${q}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(res.status, 200);
      totals = (await res.json()).totals;
      if (totals.requests >= 6) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(totals.judgements.keep.option_prob, 4);
    assert.equal(totals.judgements.escalate.option_margin, 2);
    assert.equal(totals.judgements.escalate.no_option_letter, 0);
    assert.equal(totals.escalations, 2, 'every escalation the judge made is an escalation');
    assert.equal(totals.judgements.keep.no_logprobs, 0);
    assert.equal('cheap_failed' in totals.judgements.keep, false, 'a pair that cannot happen is not listed');
  });
});
