// overhead.mjs: what POST /v1/embeddings through cascaded adds to a request
// straight to the upstream (issue 15, helper H8).
//
// One scripted peer (tests/support/peer.mjs) as the upstream and one cascaded
// in front of it (no Redis, no tokenizer: local admission, bytes estimate).
// For each body shape, sequential requests (one connection at a time, as
// fetch keeps alive) first to the peer directly, then through the gateway,
// REPS times each, N requests a time; prints p10/p50/p90 client latency.
// The difference is the gateway's share: auth, parse, count, admission,
// the upstream body, the answer's check and model rewrite, settle, logs.
//
//   CASCADE_BUILD_DIR=build node bench/embeddings/overhead.mjs [N] [REPS]
import { authHeaders, makeConfig, startGateway, startPeer, stopAll, tier } from '../../tests/support/harness.mjs';

const N = Number(process.argv[2] || 300);
const REPS = Number(process.argv[3] || 3);

async function time(url, headers, body, n) {
  const t = [];
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    const r = await fetch(url, { method: 'POST', headers, body });
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`${url}: status ${r.status}`);
    t.push(Number(process.hrtime.bigint() - s) / 1e3);
  }
  t.sort((a, b) => a - b);
  const q = (p) => t[Math.floor(p * (t.length - 1))].toFixed(0);
  return `p10 ${q(0.1)}  p50 ${q(0.5)}  p90 ${q(0.9)} us`;
}

const peer = await startPeer({ name: 'bench' });
// The last shape's answer (~22 MB of float JSON) is over the remote
// engine's default 8 MB cap on an answer: raised here, as an operator
// serving large embedding batches must (tiers[].engine.max_response_bytes).
const t = tier({ name: 'emb', model: 'm', urls: peer.url });
t.engine.max_response_bytes = 64 << 20;
const gw = await startGateway({ config: makeConfig({ tiers: [t], limits: { max_body_bytes: 4 << 20 } }) });
try {
  const texts = (n) => Array.from({ length: n }, (_, i) => `text number ${i} here`);
  // [label, input, encoding_format, dimensions, requests per run]
  const shapes = [
    ['1 input, float', 'the quick brown fox', 'float', 8, N],
    ['256 inputs, float', texts(256), 'float', 8, N],
    ['256 inputs, base64', texts(256), 'base64', 8, N],
    ['2048 x 1536, float', texts(2048), 'float', 1536, Math.max(3, Math.round(N / 30))],
  ];
  for (const [label, input, fmt, dimensions, n] of shapes) {
    const direct = JSON.stringify({ model: 'm', input, encoding_format: fmt, dimensions });
    const via = JSON.stringify({ model: 'emb', input, encoding_format: fmt, dimensions });
    await time(`${peer.url}/v1/embeddings`, { 'content-type': 'application/json' }, direct, Math.min(n, 50)); // warm up
    await time(`${gw.url}/v1/embeddings`, authHeaders(), via, Math.min(n, 50));
    for (let rep = 0; rep < REPS; rep++) {
      console.log(`${label.padEnd(20)} direct   ${await time(`${peer.url}/v1/embeddings`,
        { 'content-type': 'application/json' }, direct, n)}`);
      console.log(`${label.padEnd(20)} gateway  ${await time(`${gw.url}/v1/embeddings`, authHeaders(), via, n)}`);
    }
  }
} finally {
  await stopAll();
}
