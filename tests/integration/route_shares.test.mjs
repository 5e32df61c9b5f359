// route_shares.test.mjs: the cost view (scripts/route-replay.mjs) and the
// share knob's acceptance (issue 16), against a real cascaded with two
// scripted peers as its tiers: a cheap one and a large one, with prices.
//
// 1. The tool's arithmetic on a tiny fixed set. Three tenants route the same
//    five prompts all cheap, all large, and through the cascade (some kept,
//    some escalated, one whose cheap call fails). What the tool reports is
//    checked against figures computed here from what the peers themselves
//    received: every upstream call costs its tier's price of the usage the
//    peer answered it with (peerReply, a pure function of the request), and
//    the baseline is the large tier's price of each final answer's usage.
//    So a tool that priced an escalation at the answering tier only, or
//    counted a failed request, or took the wrong tier's prices, fails here.
//    Its errors (a bad key, an unreachable gateway, a bad data line) too.
// 2. The acceptance: tenants with routing.large_share 0.2, 0.3 and 0.5 (no
//    cascade band, so the share is the router's first choice), the shipped
//    classifier, and the prompts of the MMLU subjects the shipped model was
//    trained without (named in its metadata) replayed through model "auto"
//    with the tool: the realised share answered by the large tier must be
//    within +-0.05 of the setting, and cascade_routes_total must count the
//    same requests as the tool saw.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { before, describe, test } from 'node:test';

import {
  SOURCE_DIR, cleanupAfterAll, makeConfig, parseDirectives, peerReply, runToEnd, sha256hex, startGateway, startPeer,
  tier,
} from '../support/harness.mjs';
import { loadPricing, readRows, replay, run, summarize } from '../../scripts/route-replay.mjs';

cleanupAfterAll();

const TOOL = path.join(SOURCE_DIR, 'scripts', 'route-replay.mjs');
const MODEL = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const DATA = path.join(SHARED, 'data', 'routing', 'routellm_mmlu_gsm8k.train.jsonl');
// USD per 1M tokens; in nano-USD per token, price * 1000. The large tier's
// prices have a fraction of a nano-USD per token, so each request's amounts
// round (policies/price.h: per request, prompt and completion apart).
const PRICES = { small: { input_per_1m: 1, output_per_1m: 2 },
  large: { input_per_1m: 10.0007, output_per_1m: 20.0003 } };
const nano = (p, u) => Math.round(u.prompt_tokens * p.input_per_1m * 1000) +
  Math.round(u.completion_tokens * p.output_per_1m * 1000);
// routing.test.mjs's cascade: the peers' logprobs fall as an answer grows
// (0, -0.1, -0.2, ...), so an answer of up to 3 pieces is kept and a longer
// one escalates.
const CASCADE = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };

function tenant(id, routing) {
  return { id, keys: [sha256hex(`sk-${id}`)], allowed_tiers: ['small', 'large'], routing, cache: { mode: 'off' } };
}

function tmpFile(name, text) {
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-replay-'));
  const f = path.join(dir, name);
  writeFileSync(f, text);
  return f;
}

const lastUser = (body) => body.messages.filter((m) => m.role === 'user').at(-1).content;

describe('route-replay: the cost view adds up', () => {
  // Five prompts, both row formats: "echo: hi" (2 pieces) and "echo: two
  // words" (3) are kept by the cascade, the two long ones escalate, and the
  // last fails on the cheap tier (so the cascade escalates it, and a tenant
  // routed cheap gets a 5xx).
  const ROWS = [
    { prompt: 'hi' },
    { prompt: 'two words', subject: 'a' },
    { messages: [{ role: 'user', content: 'one two three four five six' }] },
    { prompt: 'alpha beta gamma delta epsilon zeta eta theta', system: 'be brief' },
    { prompt: 'why [[peer@small:status=500]]' },
  ];
  let small;
  let large;
  let gw;
  let data;
  before(async () => {
    small = await startPeer({ name: 'small' });
    large = await startPeer({ name: 'large' });
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large })],
      tenants: [tenant('cheap', { t_low: 1, t_high: 1 }), tenant('top', { t_low: 0, t_high: 0 }),
        tenant('zone', { t_low: 0, t_high: 1, cascade: CASCADE })],
      classifier: { model: MODEL },
    });
    gw = await startGateway({ config });
    data = tmpFile('tiny.jsonl', ROWS.map((r) => JSON.stringify(r)).join('\n') + '\n');
  });

  // What the peers received, priced: every call at its tier's price of the
  // usage the peer answered with (a scripted failure costs nothing), and
  // each prompt's final answer (the large call when there was one).
  async function expected() {
    const calls = async (peer, name) => (await peer.requests())
      .filter((r) => r.path === '/v1/chat/completions')
      .map((r) => ({ text: lastUser(r.body), failed: parseDirectives(lastUser(r.body), name).directives.status !== undefined,
        usage: peerReply(r.body, name).usage }));
    const s = await calls(small, 'small');
    const l = await calls(large, 'large');
    let charged = 0;
    for (const c of s) if (!c.failed) charged += nano(PRICES.small, c.usage);
    for (const c of l) if (!c.failed) charged += nano(PRICES.large, c.usage);
    let baseline = 0;
    let answered = 0;
    let byLarge = 0;
    let escalated = 0;
    for (const r of ROWS) {
      const text = r.prompt ?? lastUser(r);
      const sc = s.find((c) => c.text === text);
      const lc = l.find((c) => c.text === text);
      const fin = lc && !lc.failed ? lc : sc && !sc.failed ? sc : null;
      if (sc && lc) escalated++;
      if (!fin) continue;
      answered++;
      if (fin === lc) byLarge++;
      baseline += nano(PRICES.large, fin.usage);
    }
    return { charged, baseline, answered, byLarge, escalated, smallCalls: s.length, largeCalls: l.length };
  }

  async function replayAs(id, extra = []) {
    await Promise.all([small.reset(), large.reset()]);
    const r = await run(['--url', gw.url, '--key', `sk-${id}`, '--config', gw.configPath, '--data', data,
      '--concurrency', '2', ...extra]);
    assert.equal(r.code, 0, `route-replay as ${id}: ${r.err}`);
    return r;
  }

  for (const id of ['zone', 'top', 'cheap']) {
    test(`tenant ${id}: shares, escalations, errors and both costs match what the peers were paid`, async () => {
      const rep = JSON.parse((await replayAs(id, ['--json'])).out);
      const want = await expected();
      assert.equal(rep.tenant, id);
      assert.equal(rep.requests, ROWS.length);
      assert.equal(rep.answered, want.answered);
      assert.equal(rep.errors.total, ROWS.length - want.answered);
      assert.equal(rep.escalated, want.escalated);
      const t = Object.fromEntries(rep.tiers.map((x) => [x.tier, x]));
      assert.equal(t.large.answered, want.byLarge);
      assert.equal(t.small.answered, want.answered - want.byLarge);
      assert.equal(t.large.answered_share, want.byLarge / want.answered);
      // An escalated request's first choice was the cheap tier.
      assert.equal(t.small.first_choice, want.answered - want.byLarge + want.escalated);
      assert.equal(rep.cost.baseline_tier, 'large');
      assert.equal(rep.cost.priced_answers, want.answered);
      assert.equal(rep.cost.actual_nano, want.charged, 'charged: every upstream call that answered, at its tier');
      assert.equal(rep.cost.baseline_nano, want.baseline, 'always large: the answers\' tokens at large\'s prices');
      assert.ok(Math.abs(rep.cost.saved_usd - (want.baseline - want.charged) / 1e9) < 1e-12);
      assert.match(rep.cost.note, /same token counts/);
      // The cases each tenant is there for did happen.
      if (id === 'zone') {
        assert.equal(want.escalated, 3, 'two long answers and one failed cheap call escalate');
        assert.equal(want.smallCalls, 5);
        assert.equal(rep.errors.total, 0);
      } else if (id === 'top') {
        // By hand: prompt words 1, 2, 6, 2 + 8, 2 at 10000.7 nano-USD each,
        // rounded per request: 10001 + 20001 + 60004 + 100007 + 20001;
        // completion pieces 2, 3, 7, 9, 2 at 20000.3: 40001 + 60001 +
        // 140002 + 180003 + 40001. (Rounding the 21 and 23 tokens once would
        // give 670023.)
        assert.equal(rep.cost.baseline_nano, 210014 + 460008);
        assert.equal(rep.cost.actual_nano, rep.cost.baseline_nano);
        assert.equal(rep.cost.saved_usd, 0);
      } else {
        assert.equal(want.byLarge, 0);
        assert.equal(rep.errors.total, 1);
        assert.deepEqual(Object.keys(rep.errors.by_kind).length, 1);
        assert.match(Object.keys(rep.errors.by_kind)[0], /^http 5\d\d/);
      }
    });
  }

  test('the table says where traffic went and what always-large would cost for the same tokens', async () => {
    const { out } = await replayAs('zone');
    assert.match(out, /^tenant zone: 5 prompts through model "auto", 5 answered, 0 failed$/m);
    assert.match(out, /^small\s+1 \/ 2\s+5\s+100\.0%\s+2\s+40\.0%$/m);
    assert.match(out, /^large\s+10\.0007 \/ 20\.0003\s+0\s+0\.0%\s+3\s+60\.0%$/m);
    assert.match(out, /^escalated .*: 3 \(60\.0% of answered\)$/m);
    assert.match(out, /always large .*same token counts, at large's configured prices/);
  });

  test('--limit and the subject filters pick the rows', () => {
    assert.equal(readRows(data, { limit: 2 }).length, 2);
    assert.deepEqual(readRows(data, { filterSubjects: new Set(['a']) }).map((r) => r.line), [2]);
    assert.equal(readRows(data, { excludeSubjects: new Set(['a']) }).length, 4);
    assert.deepEqual(readRows(data)[3].messages,
      [{ role: 'system', content: 'be brief' }, { role: 'user', content: ROWS[3].prompt }]);
  });

  test('mistakes get a clear message and a nonzero status', async () => {
    const args = (key, url = gw.url, d = data) => ['--url', url, '--key', key, '--config', gw.configPath, '--data', d];
    // A key no tenant of the config holds: nothing is sent.
    let r = await run(args('sk-nobody'));
    assert.equal(r.code, 2);
    assert.match(r.err, /no tenant in .* holds this key/);
    // A key the config holds but the gateway does not: the 401 stops the replay.
    const cfg = JSON.parse(readFileSync(gw.configPath, 'utf8'));
    cfg.tenants.push(tenant('ghost', { t_low: 1, t_high: 1 }));
    const ghost = tmpFile('ghost.json', JSON.stringify(cfg));
    r = await run(['--url', gw.url, '--key', 'sk-ghost', '--config', ghost, '--data', data]);
    assert.equal(r.code, 1);
    assert.match(r.err, /refused the key \(401/);
    // Nothing listening.
    r = await run(args('sk-zone', 'http://127.0.0.1:1'));
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot reach the gateway at http:\/\/127\.0\.0\.1:1/);
    // A bad data line is named by file and line.
    const bad = tmpFile('bad.jsonl', '{"prompt": "ok"}\n{"prompt": 3}\n');
    r = await run(args('sk-zone', gw.url, bad));
    assert.equal(r.code, 2);
    assert.match(r.err, /bad\.jsonl:2: needs a "prompt" string/);
    // The script itself, as a process: the same status and message.
    const p = await runToEnd(process.execPath, [TOOL, ...args('sk-nobody')]);
    assert.equal(p.code, 2);
    assert.match(p.stderr, /no tenant in .* holds this key/);
    const h = await runToEnd(process.execPath, [TOOL, '--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /^usage: /);
  });
});

// The held-out subjects: the MMLU subjects the shipped model never saw in
// training, as its metadata names them.
function heldoutSubjects(modelPath) {
  const text = readFileSync(modelPath).toString('latin1');
  const m = text.match(/"heldout_subjects":"([^"]*)"/);
  if (!m || m[1].trim() === '') {
    throw new Error(`${modelPath}: its metadata names no held-out subjects ("heldout_subjects"); ` +
      'the share acceptance needs prompts of subjects the model was trained without');
  }
  return m[1].split(',').map((s) => s.trim());
}

describe('large_share: the realised share of auto traffic on unseen subjects', () => {
  const SHARES = [0.2, 0.3, 0.5];
  const TOLERANCE = 0.05;
  const shareTenant = (s) => `share${Math.round(s * 100)}`;
  let gw;
  let rows;
  before(async () => {
    if (!existsSync(DATA)) throw new Error(`${DATA} is missing: the share acceptance replays its held-out subjects`);
    const subjects = heldoutSubjects(MODEL);
    // Every second prompt of the held-out subjects, in file order: about
    // 1100, so the sampling error of a share (sd <= 0.015) stays well
    // inside the tolerance.
    rows = readRows(DATA, { filterSubjects: new Set(subjects) }).filter((_, i) => i % 2 === 0);
    assert.ok(rows.length >= 500, `only ${rows.length} held-out prompts (subjects ${subjects.join(', ')})`);
    const small = await startPeer({ name: 'small' });
    const large = await startPeer({ name: 'large' });
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large })],
      // No cascade band: a request goes where the router first sent it.
      tenants: SHARES.map((s) => tenant(shareTenant(s), { large_share: s, cascade_share: 0 })),
      classifier: { model: MODEL },
    });
    try {
      gw = await startGateway({ config });
    } catch (e) {
      throw new Error('the gateway refused tenants[].routing.large_share (it needs the share keys in ' +
        'gateway/config.c and a model file that carries its score distribution): ' + e.message);
    }
  });

  for (const s of SHARES) {
    test(`large_share ${s}: within +-${TOLERANCE}`, async () => {
      const o = { url: gw.url, key: `sk-${shareTenant(s)}`, concurrency: 12, timeoutMs: 30000, maxTokens: 1 };
      const rep = summarize(await replay(rows, o), loadPricing(gw.configPath, o.key));
      assert.equal(rep.answered, rows.length, JSON.stringify(rep.errors));
      assert.equal(rep.escalated, 0, 'no cascade band, so no escalation');
      const large = rep.tiers.find((t) => t.tier === 'large');
      const got = large.answered_share;
      assert.ok(Math.abs(got - s) <= TOLERANCE,
        `large_share ${s}: ${large.answered} of ${rep.answered} held-out prompts (${got.toFixed(3)}) went to the large ` +
        `tier, want ${s} +- ${TOLERANCE}`);
      assert.equal(large.first_choice_share, got);
      // The gateway's own count of where auto sent them says the same.
      const metrics = await (await fetch(`${gw.url}/metrics`)).text();
      const routed = (route) => Number(metrics.match(new RegExp(
        `^cascade_routes_total\\{tenant="${shareTenant(s)}",route="${route}"\\} (\\d+)$`, 'm'))?.[1]);
      assert.equal(routed('large'), large.answered, 'cascade_routes_total{route="large"}');
      assert.equal(routed('small'), rep.answered - large.answered, 'cascade_routes_total{route="small"}');
    });
  }
});
