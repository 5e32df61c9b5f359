// native.mjs: a prompt too long for an in-process model, and the other
// requests on its worker. One cascaded worker with one native tier (the
// stories260K model from ../shared, context 512), limits.max_body_bytes
// 16 MiB. Per round: one request with a prompt of MB megabytes, and small
// requests back to back on the same worker until it is answered; the round
// reports the slowest small request and the big request's whole time.
//   node bench/bigbody/native.mjs [--mb 2] [--rounds 4] [--build DIR]
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: { mb: { type: 'string', default: '2' }, rounds: { type: 'string', default: '4' }, build: { type: 'string' } },
});
if (opt.build) process.env.CASCADE_BUILD_DIR = path.resolve(opt.build);
const { SOURCE_DIR, TEST_KEY, authHeaders, makeConfig, startGateway } = await import('../../tests/support/harness.mjs');

const MODEL = path.join(process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared'), 'models', 'stories260K',
  'stories260K.bin');
const tier = {
  name: 'small', model: 'stories-small', engine: { kind: 'native', model: MODEL, threads: 1 },
  price: { input_per_1m: 1, output_per_1m: 2 },
};
const gw = await startGateway({ config: makeConfig({ tiers: [tier], workers: 1, limits: { max_body_bytes: 16 << 20 } }) });
const post = (content, maxTokens) => fetch(`${gw.url}/v1/chat/completions`, {
  method: 'POST', headers: authHeaders(TEST_KEY),
  body: JSON.stringify({ model: 'small', max_tokens: maxTokens, messages: [{ role: 'user', content }] }),
});
const big = 'Once upon a time there was a cat. '.repeat(Math.ceil((Number(opt.mb) * 1e6) / 34));
console.log(`prompt ${(big.length / 1e6).toFixed(2)} MB, ${opt.rounds} rounds`);
for (let round = 0; round < Number(opt.rounds); round++) {
  const t0 = Date.now();
  let done = false;
  const bigP = post(big, 8).then(async (r) => {
    await r.text();
    done = true;
    return { status: r.status, ms: Date.now() - t0 };
  });
  const small = [];
  while (!done) {
    const t = Date.now();
    await (await post('hi', 4)).text();
    small.push(Date.now() - t);
  }
  const b = await bigP;
  console.log(`round ${round}: big ${b.status} in ${b.ms} ms; ${small.length} small, slowest ${Math.max(...small)} ms`);
}
await gw.stop();
