// driver.mjs: the soak's traffic and its accounting (bench/soak/run.sh runs it).
//
// Open loop at --rate requests per second for --duration seconds against one
// cascaded, with this mix (each request draws once):
//   16%  stream, unique prompt, temperature 0.7 (never cached); a quarter of
//        these are cancelled by the client after their 3rd content chunk
//   25%  deterministic (temperature 0) from 20 fixed prompts: cache hits once
//        warm; a fifth of these are streams (a replayed stream on a hit)
//   rest non-stream, unique prompt, temperature 0.7
// so about 21% streams and 4% cancellations. A request that is still in
// flight when --max-inflight are is not sent and counts as "backlog" (the
// gateway fell behind), so the offered load stays bounded.
//
// Every answer is checked: a 200 with a complete body (JSON with a message,
// or a stream that ends in [DONE] with no error event). Anything else is an
// error, counted by kind: http_<status>, network (connection refused or
// reset), timeout (no answer in --timeout-ms), stream_error_event,
// stream_incomplete, bad_body. Cancellations the driver forces are counted
// apart, as "cancelled", and are not errors.
//
// Latency is from just before fetch() to the end of the body (and, for
// streams, to the first content chunk as ttfb), per class: miss (non-stream,
// not a hit), hit (x-cascade-cache: hit), stream_total, stream_ttfb.
//
// Prints one JSON object on stdout at the end; progress lines on stderr.
import { performance } from 'node:perf_hooks';

function args(argv) {
  const o = { rate: 20, duration: 60, timeoutMs: 30000, maxInflight: 200, url: null, key: null, model: 'deepseek-coder-1.3b' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(k in o)) throw new Error(`driver: unknown option ${argv[i]}`);
    o[k] = typeof o[k] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!o.url || !o.key) throw new Error('driver: --url and --key are required');
  return o;
}

const opt = args(process.argv.slice(2));
const CACHED_PROMPTS = Array.from({ length: 20 }, (_, i) => `What is the capital of country number ${i}?`);
const lat = { miss: [], hit: [], stream_total: [], stream_ttfb: [] };
const errors = {};
const errorSamples = [];
const counts = { sent: 0, ok: 0, cancelled: 0, backlog: 0, streams: 0, hits: 0 };
const perMinute = [];  // {minute, sent, ok, errors, cancelled}
let inflight = 0;
let seq = 0;
const t0 = performance.now();

function minuteSlot() {
  const m = Math.floor((performance.now() - t0) / 60000);
  while (perMinute.length <= m) perMinute.push({ minute: perMinute.length, sent: 0, ok: 0, errors: 0, cancelled: 0 });
  return perMinute[m];
}

function fail(kind, detail) {
  errors[kind] = (errors[kind] || 0) + 1;
  minuteSlot().errors++;
  if (errorSamples.length < 20) errorSamples.push({ t_s: Math.round((performance.now() - t0) / 1000), kind, detail: String(detail).slice(0, 300) });
}

async function one() {
  const i = seq++;
  const r = Math.random();
  let body;
  let cancelAfter = 0;
  if (r < 0.16) {
    body = { messages: [{ role: 'user', content: `stream ${i}: tell me a story` }], stream: true, temperature: 0.7 };
    if (Math.random() < 0.25) cancelAfter = 3;
  } else if (r < 0.41) {
    body = { messages: [{ role: 'user', content: CACHED_PROMPTS[i % CACHED_PROMPTS.length] }], temperature: 0 };
    if (Math.random() < 0.2) body.stream = true;
  } else {
    body = { messages: [{ role: 'user', content: `request ${i}: summarise this` }], temperature: 0.7 };
  }
  body.model = opt.model;
  if (body.stream) {
    body.stream_options = { include_usage: true };
    counts.streams++;
  }
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(new Error('timeout')), opt.timeoutMs);
  const start = performance.now();
  let cancelled = false;
  try {
    const res = await fetch(`${opt.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${opt.key}` },
      body: JSON.stringify(body),
      signal: ctrl.signal,
    });
    const hit = res.headers.get('x-cascade-cache') === 'hit';
    if (res.status !== 200) {
      const t = await res.text();
      fail(`http_${res.status}`, t);
      return;
    }
    if (!body.stream) {
      const t = await res.text();
      let j = null;
      try {
        j = JSON.parse(t);
      } catch {
        // counted below
      }
      if (!j?.choices?.[0]?.message) {
        fail('bad_body', t);
        return;
      }
      (hit ? lat.hit : lat.miss).push(performance.now() - start);
      if (hit) counts.hits++;
    } else {
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let text = '';
      let contentChunks = 0;
      let ttfb = -1;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
        const n = (text.match(/"content":"[^"]/g) || []).length;
        if (n > 0 && ttfb < 0) ttfb = performance.now() - start;
        contentChunks = n;
        if (cancelAfter && contentChunks >= cancelAfter) {
          cancelled = true;
          ctrl.abort(new Error('cancelled by the soak driver'));
          break;
        }
      }
      if (cancelled) {
        counts.cancelled++;
        minuteSlot().cancelled++;
        return;
      }
      if (/"error"\s*:\s*\{/.test(text)) {
        fail('stream_error_event', text.slice(-300));
        return;
      }
      if (!text.trimEnd().endsWith('data: [DONE]')) {
        fail('stream_incomplete', text.slice(-300));
        return;
      }
      if (hit) counts.hits++;
      lat.stream_total.push(performance.now() - start);
      if (ttfb >= 0) lat.stream_ttfb.push(ttfb);
    }
    counts.ok++;
    minuteSlot().ok++;
  } catch (e) {
    if (cancelled) {
      counts.cancelled++;
      minuteSlot().cancelled++;
    } else if (ctrl.signal.aborted) {
      fail('timeout', e.message);
    } else {
      fail('network', `${e.message} ${e.cause?.code ?? e.cause?.message ?? ''}`);
    }
  } finally {
    clearTimeout(timer);
  }
}

function pct(a, p) {
  if (!a.length) return null;
  const s = Float64Array.from(a).sort();
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] * 10) / 10;
}

async function main() {
  const interval = 1000 / opt.rate;
  const end = t0 + opt.duration * 1000;
  const pending = new Set();
  let next = t0;
  let lastReport = t0;
  while (performance.now() < end) {
    const now = performance.now();
    while (next <= now) {
      next += interval;
      if (inflight >= opt.maxInflight) {
        counts.backlog++;
        continue;
      }
      counts.sent++;
      minuteSlot().sent++;
      inflight++;
      const p = one().finally(() => {
        inflight--;
        pending.delete(p);
      });
      pending.add(p);
    }
    if (now - lastReport >= 60000) {
      lastReport = now;
      const m = perMinute.at(-2) ?? perMinute.at(-1);
      process.stderr.write(`soak: ${Math.round((now - t0) / 1000)} s, sent ${counts.sent}, ok ${counts.ok}, ` +
        `cancelled ${counts.cancelled}, errors ${JSON.stringify(errors)}, inflight ${inflight}; last minute ${JSON.stringify(m)}\n`);
    }
    await new Promise((r) => setTimeout(r, Math.max(1, Math.min(50, next - performance.now()))));
  }
  await Promise.all(pending);
  const summary = {
    duration_s: Math.round((performance.now() - t0) / 1000),
    rate: opt.rate,
    counts,
    errors,
    error_total: Object.values(errors).reduce((a, b) => a + b, 0),
    error_samples: errorSamples,
    latency_ms: Object.fromEntries(Object.entries(lat).map(([k, a]) =>
      [k, { n: a.length, p50: pct(a, 50), p90: pct(a, 90), p99: pct(a, 99), max: pct(a, 100) }])),
    per_minute: perMinute,
  };
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');
}

main().catch((e) => {
  process.stderr.write(`driver: ${e.stack}\n`);
  process.exit(1);
});
