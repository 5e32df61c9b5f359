// replay-shares.mjs: scripts/route-replay.mjs against a real cascaded whose
// two tiers are scripted peers (tests/support/peer.mjs), one tenant per
// routing.large_share setting, on the prompts of the MMLU subjects the
// shipped classifier never saw in training (named in its metadata). Prints
// the tool's table for each setting, then one line per setting with the
// realised share. What the issue 16 acceptance test checks, on every held-out
// prompt instead of a sample, and with the tool's own output.
//
//   node bench/routing/replay-shares.mjs [--build build] [--shares 0.2,0.3,0.5]
//        [--every 1] [--concurrency 12] [--max-tokens 16]
//
// The peers answer by echoing the prompt, and count words as tokens, so the
// costs printed are of those scripted answers at deploy/local.json's prices
// (small 0.14/0.28, large 0.27/1.10 USD per 1M tokens), not of real models:
// the shares are the figure to read.
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { makeConfig, sha256hex, SOURCE_DIR, startGateway, startPeer, stopAll, tier } from '../../tests/support/harness.mjs';
import { formatTable, loadPricing, readRows, replay, summarize } from '../../scripts/route-replay.mjs';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const build = path.resolve(args.build || path.join(SOURCE_DIR, 'build'));
const shares = (args.shares || '0.2,0.3,0.5').split(',').map(Number);
const every = Number(args.every || 1);
const concurrency = Number(args.concurrency || 12);
const maxTokens = Number(args['max-tokens'] || 16);
const shared = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const data = path.join(shared, 'data', 'routing', 'routellm_mmlu_gsm8k.train.jsonl');
const model = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');

const meta = readFileSync(model).toString('latin1').match(/"heldout_subjects":"([^"]*)"/);
if (!meta) throw new Error(`${model}: its metadata names no held-out subjects`);
const subjects = meta[1].split(',').map((s) => s.trim());
const rows = readRows(data, { filterSubjects: new Set(subjects) }).filter((_, i) => i % every === 0);
const PRICES = { small: { input_per_1m: 0.14, output_per_1m: 0.28 }, large: { input_per_1m: 0.27, output_per_1m: 1.1 } };

const id = (s) => `share${Math.round(s * 100)}`;
try {
  const small = await startPeer({ name: 'small' });
  const large = await startPeer({ name: 'large' });
  const gw = await startGateway({
    binary: path.join(build, 'gateway', 'cascaded'),
    config: makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large })],
      tenants: shares.map((s) => ({ id: id(s), keys: [sha256hex(`sk-${id(s)}`)], allowed_tiers: ['small', 'large'],
        routing: { large_share: s, cascade_share: 0 }, cache: { mode: 'off' } })),
      classifier: { model },
    }),
  });
  console.log(`${rows.length} prompts of the held-out subjects (${subjects.join(', ')}), every ${every}; ` +
    `concurrency ${concurrency}, max_tokens ${maxTokens}; ${build}\n`);
  const lines = [];
  for (const s of shares) {
    const o = { url: gw.url, key: `sk-${id(s)}`, concurrency, timeoutMs: 60000, maxTokens };
    const t0 = process.hrtime.bigint();
    const rep = summarize(await replay(rows, o), loadPricing(gw.configPath, o.key));
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`== large_share ${s}\n${formatTable(rep)}\n`);
    const got = rep.tiers.find((t) => t.tier === 'large').answered_share;
    lines.push(`large_share ${s.toFixed(2)}: realised ${got.toFixed(3)} (${(got - s >= 0 ? '+' : '') + (got - s).toFixed(3)}), ` +
      `${rep.answered}/${rep.requests} answered, ${(rep.requests / (ms / 1000)).toFixed(0)} req/s`);
  }
  console.log(lines.join('\n'));
} finally {
  await stopAll();
}
