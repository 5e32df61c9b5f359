// savings.test.mjs: the one savings definition (README "Savings"), checked
// end to end against real redis-server, cascaded and two scripted peers (a
// cheap tier and an expensive one), with the shipped classifier.
//
// Traffic mixes what the definition tells apart:
//   - named-tier requests (model "small", model "large"): no savings;
//   - model "auto" kept on the cheap tier by the cascade: routing gain =
//     baseline (large) price of the answer's tokens - what was paid;
//   - model "auto" escalated (the cheap answer judged unsure, the large one
//     sent): routing loss = the cheap answer's cost, since the request paid
//     for both and the baseline would have paid for the large one only;
//   - model "auto" that fails on both tiers (5xx): nothing;
//   - a cache hit of the kept answer: cache savings = what it cost to make;
//   - a tenant whose baseline_tier is the cheap tier, routed to the large
//     one: routing loss = large - small, a negative net.
// The expected amounts are computed here from the prices and the usage the
// peers report, and the usage API, GET /metrics and the stats API must all
// say the same: net routing savings = gain - loss.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, sleep, startGateway,
  startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const MODEL = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
// USD per 1M tokens; in nano-USD per token, price * 1000.
const PRICES = { small: { input_per_1m: 1, output_per_1m: 2 }, large: { input_per_1m: 10, output_per_1m: 20 } };
const cost = (tierName, u) => Math.round(u.prompt_tokens * PRICES[tierName].input_per_1m * 1000) +
  Math.round(u.completion_tokens * PRICES[tierName].output_per_1m * 1000);
const NANO = 1e9;
// Amounts travel as float USD in JSON and in the exposition (9 decimals):
// a nano-USD or two of rounding is all that may differ.
const near = (got, want, what) => assert.ok(Math.abs(got - want) <= 2e-9 + 1e-9 * Math.abs(want),
  `${what}: got ${got}, want ${want}`);

// The cascade rules of routing.test.mjs: the peers' logprobs fall as an
// answer grows (0, -0.1, -0.2, ...), so with min_mean_logprob -0.12 an answer
// of up to 3 pieces is kept and a longer one escalates.
const CASCADE = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };

function tenant(id, routing) {
  return { id, keys: [sha256hex(`sk-${id}`)], allowed_tiers: ['small', 'large'], default_tier: 'small', routing };
}

async function ask(gw, id, body) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: authHeaders(`sk-${id}`), body: JSON.stringify(body),
  });
  const text = await res.text();
  return {
    status: res.status, json: res.ok ? JSON.parse(text) : null, text,
    tier: res.headers.get('x-cascade-tier'), escalated: res.headers.get('x-cascade-escalated'),
    cache: res.headers.get('x-cascade-cache'),
  };
}

// parse GET /metrics: the sum of a family's samples whose labels match.
function metricSum(text, name, match) {
  let total = 0;
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-z_]+)\{(.*)\} (\S+)$/);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/([a-z_]+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(match).every(([k, v]) => labels[k] === v)) total += Number(m[3]);
  }
  return total;
}

describe('savings: one definition in the usage API, the metrics and the stats', () => {
  let redis;
  let small;
  let large;
  let gw;
  const want = {}; // tenant -> {gain, loss, cache} in nano-USD
  const seen = {}; // what the clients saw, for the messages
  let requests = 0;

  before(async () => {
    redis = await startRedis();
    small = await startPeer({ name: 'small' });
    large = await startPeer({ name: 'large' });
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large })],
      tenants: [
        // Every score in the cascade zone; baseline: the most expensive tier (default).
        tenant('mix', { t_low: 0, t_high: 1, cascade: CASCADE }),
        // Every score to the top tier, measured against the cheap one.
        tenant('above', { t_low: 0, t_high: 0, baseline_tier: 'small' }),
      ],
      classifier: { model: MODEL },
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });

    // ---- tenant mix --------------------------------------------------------
    const named = await ask(gw, 'mix', chatBody('named small please', { model: 'small' }));
    assert.equal(named.status, 200, named.text);
    assert.equal(named.tier, 'small');
    const namedLarge = await ask(gw, 'mix', chatBody('named large please', { model: 'large' }));
    assert.equal(namedLarge.status, 200, namedLarge.text);
    assert.equal(namedLarge.tier, 'large');
    // "echo: hi": 2 pieces, kept on the cheap tier. temperature 0, so the
    // answer is cached and asked for again below.
    const kept = await ask(gw, 'mix', chatBody('hi', { model: 'auto', temperature: 0 }));
    assert.equal(kept.status, 200, kept.text);
    assert.equal(kept.tier, 'small');
    assert.equal(kept.escalated, 'false');
    // 7 pieces: unsure, escalated; both answers paid for.
    const escalated = await ask(gw, 'mix', chatBody('one two three four five six', { model: 'auto' }));
    assert.equal(escalated.status, 200, escalated.text);
    assert.equal(escalated.tier, 'large');
    assert.equal(escalated.escalated, 'true');
    // Both tiers fail before any token: a 5xx, and no savings.
    const failed = await ask(gw, 'mix', chatBody('boom [[peer:status=500]]', { model: 'auto' }));
    assert.ok(failed.status >= 500, `failed request: ${failed.status} ${failed.text}`);
    await sleep(150); // the cache write is fire-and-forget
    const hit = await ask(gw, 'mix', chatBody('hi', { model: 'auto', temperature: 0 }));
    assert.equal(hit.status, 200, hit.text);
    assert.equal(hit.cache, 'hit');
    requests += 6;

    // The cheap call of the escalation had the same prompt and, with no
    // output bound, the same pieces as the large one: the peers count the
    // same, so its usage is the final answer's.
    const keptGain = cost('large', kept.json.usage) - cost('small', kept.json.usage);
    want.mix = { gain: keptGain, loss: cost('small', escalated.json.usage), cache: cost('small', kept.json.usage) };
    seen.mix = { named, namedLarge, kept, escalated, failed, hit };

    // ---- tenant above --------------------------------------------------------
    const up = await ask(gw, 'above', chatBody('route me up', { model: 'auto' }));
    assert.equal(up.status, 200, up.text);
    assert.equal(up.tier, 'large');
    const namedAbove = await ask(gw, 'above', chatBody('named here', { model: 'small' }));
    assert.equal(namedAbove.status, 200, namedAbove.text);
    requests += 2;
    want.above = { gain: 0, loss: cost('large', up.json.usage) - cost('small', up.json.usage), cache: 0 };
    assert.ok(want.mix.gain > 0 && want.mix.loss > 0 && want.above.loss > 0, JSON.stringify(want));
  });
  after(async () => redis?.stop());

  test('the usage API: saved_routing_usd is net, with its gain and loss, today and this month', async () => {
    for (const id of ['mix', 'above']) {
      let body;
      for (let i = 0; i < 30; i++) { // settlements are fire-and-forget: poll briefly
        const res = await fetch(`${gw.url}/admin/v1/tenants/${id}/usage`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
        assert.equal(res.status, 200);
        body = await res.json();
        if (Math.abs(body.today.routing_loss_usd - want[id].loss / NANO) < 1e-9) break;
        await sleep(100);
      }
      for (const period of ['today', 'month']) {
        const p = body[period];
        const what = `${id} ${period} ${JSON.stringify(p)}`;
        near(p.routing_gain_usd, want[id].gain / NANO, `${what} gain`);
        near(p.routing_loss_usd, want[id].loss / NANO, `${what} loss`);
        near(p.saved_routing_usd, (want[id].gain - want[id].loss) / NANO, `${what} net`);
        near(p.saved_cache_usd, want[id].cache / NANO, `${what} cache`);
      }
    }
    // Routing cost this tenant money: the net says so.
    const res = await fetch(`${gw.url}/admin/v1/tenants/above/usage`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.ok((await res.json()).today.saved_routing_usd < 0);
  });

  test('GET /metrics: gain under saved{source="routing"}, the loss as its own counter', async () => {
    const res = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /# TYPE cascade_routing_loss_usd_total counter/);
    for (const id of ['mix', 'above']) {
      const gain = metricSum(text, 'cascade_saved_usd_total', { tenant: id, source: 'routing' });
      const loss = metricSum(text, 'cascade_routing_loss_usd_total', { tenant: id });
      const cache = metricSum(text, 'cascade_saved_usd_total', { tenant: id, source: 'cache' });
      near(gain, want[id].gain / NANO, `${id} metrics gain`);
      near(loss, want[id].loss / NANO, `${id} metrics loss`);
      near(gain - loss, (want[id].gain - want[id].loss) / NANO, `${id} metrics net`);
      near(cache, want[id].cache / NANO, `${id} metrics cache`);
    }
    // The escalation's loss is on the tier that answered it.
    near(metricSum(text, 'cascade_routing_loss_usd_total', { tenant: 'mix', tier: 'large' }), want.mix.loss / NANO,
      'mix loss on large');
  });

  test('the stats API: saved_routing_usd is net, with routing_gain_usd and routing_loss_usd', async () => {
    const now = Math.floor(Date.now() / 1000);
    const q = { from: now - 600, to: now + 120, step: 60 };
    const totals = {};
    for (const id of ['mix', 'above']) {
      let t;
      for (let i = 0; i < 60; i++) { // stats reach Redis about once a second
        const res = await fetch(`${gw.url}/admin/v1/stats?${new URLSearchParams({ ...q, tenant: id })}`,
          { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
        assert.equal(res.status, 200);
        t = (await res.json()).totals;
        if (t.requests >= (id === 'mix' ? 6 : 2)) break;
        await sleep(100);
      }
      totals[id] = t;
      assert.equal(t.requests, id === 'mix' ? 6 : 2, JSON.stringify(t));
      near(t.routing_gain_usd, want[id].gain / NANO, `${id} stats gain`);
      near(t.routing_loss_usd, want[id].loss / NANO, `${id} stats loss`);
      near(t.saved_routing_usd, (want[id].gain - want[id].loss) / NANO, `${id} stats net`);
      near(t.saved_cache_usd, want[id].cache / NANO, `${id} stats cache`);
    }
    // The escalation counted (the failed request escalated too, to a tier
    // that failed as well: counted as escalated, and still no savings).
    assert.ok(totals.mix.escalations >= 1, JSON.stringify(totals.mix));
    // All tenants summed: the same definition, summed.
    const res = await fetch(`${gw.url}/admin/v1/stats?${new URLSearchParams(q)}`,
      { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const all = (await res.json()).totals;
    assert.equal(all.requests, requests);
    near(all.saved_routing_usd, (want.mix.gain - want.mix.loss + want.above.gain - want.above.loss) / NANO, 'fleet net');
    near(all.routing_loss_usd, (want.mix.loss + want.above.loss) / NANO, 'fleet loss');
  });
});
