// report.mjs: the soak's report from what run.sh left in OUT.
// Usage: node report.mjs OUT WARMUP_S. Markdown on stdout; exit 1 when a
// request failed, the RSS grew 5% or more after warm-up, or spend in Redis
// differs from the access log.
import { readFileSync } from 'node:fs';
import path from 'node:path';

const [out, warmupArg] = process.argv.slice(2);
const warmup = Number(warmupArg);
const d = JSON.parse(readFileSync(path.join(out, 'driver.json'), 'utf8'));
const rss = readFileSync(path.join(out, 'rss.tsv'), 'utf8').trim().split('\n').slice(1)
  .map((l) => l.split('\t').map(Number)).filter(([, kb]) => kb > 0).map(([t, kb, fds, load]) => ({ t, kb, fds, load }));
const ev = Object.fromEntries(readFileSync(path.join(out, 'events.txt'), 'utf8').trim().split('\n')
  .map((l) => l.split(' ')).map(([k, v]) => [k, Number(v)]));

const mb = (kb) => (kb / 1024).toFixed(1);
// The RSS right after warm-up and at the end: means of 6 samples each, so
// one sample's noise does not make the figure.
const after = rss.filter((s) => s.t >= warmup);
const mean = (a) => a.reduce((s, x) => s + x.kb, 0) / a.length;
const base = after.length ? mean(after.slice(0, 6)) : NaN;
const last = after.length ? mean(after.slice(-6)) : NaN;
const growth = (last - base) / base * 100;
const maxAfter = Math.max(...after.map((s) => s.kb));

const lines = [];
lines.push(`Duration ${d.duration_s} s at ${d.rate} req/s offered; warm-up ${warmup} s excluded from the RSS figure.`);
lines.push('');
lines.push('| requests | ok | cancelled (forced) | failed | backlog (not sent) | streams | cache hits |');
lines.push('|---|---|---|---|---|---|---|');
lines.push(`| ${d.counts.sent} | ${d.counts.ok} | ${d.counts.cancelled} | **${d.error_total}** | ${d.counts.backlog} | ${d.counts.streams} | ${d.counts.hits} |`);
lines.push('');
lines.push(`Errors by kind: ${d.error_total ? JSON.stringify(d.errors) : 'none'}.`);
if (d.error_samples.length) {
  lines.push('');
  for (const e of d.error_samples.slice(0, 5)) lines.push(`- at ${e.t_s} s, ${e.kind}: \`${e.detail.replace(/`/g, "'")}\``);
}
lines.push('');
lines.push('| latency (ms) | n | p50 | p90 | p99 | max |');
lines.push('|---|---|---|---|---|---|');
for (const [k, v] of Object.entries(d.latency_ms)) lines.push(`| ${k} | ${v.n} | ${v.p50} | ${v.p90} | ${v.p99} | ${v.max} |`);
lines.push('');
lines.push(`RSS after warm-up: ${mb(base)} MB (mean of the first 6 samples after ${warmup} s), at the end ${mb(last)} MB ` +
  `(mean of the last 6): **growth ${growth.toFixed(2)}%**; max after warm-up ${mb(maxAfter)} MB; ` +
  `open fds at the end ${rss.at(-1)?.fds}, max ${Math.max(...rss.map((s) => s.fds))}. Machine load average ` +
  `(1 min, all processes) mean ${(rss.reduce((a, s) => a + s.load, 0) / rss.length).toFixed(1)}, ` +
  `max ${Math.max(...rss.map((s) => s.load)).toFixed(1)}.`);
lines.push('');
// RSS over time: about 15 rows whatever the duration.
const step = Math.max(1, Math.ceil(rss.length / 15));
lines.push('| t (s) | RSS (MB) | fds | load |');
lines.push('|---|---|---|---|');
const row = (s) => `| ${s.t} | ${mb(s.kb)} | ${s.fds} | ${s.load} |`;
for (let i = 0; i < rss.length; i += step) lines.push(row(rss[i]));
if ((rss.length - 1) % step) lines.push(row(rss.at(-1)));
lines.push('');
lines.push(`Redis SIGKILLed at ${ev.redis_killed_at_s} s and restarted. Spend in Redis ${ev.spend_redis_nano} nano-USD, ` +
  `access log ${ev.spend_logged_nano} (${ev.access_lines} access lines): ` +
  `${ev.spend_redis_nano === ev.spend_logged_nano ? 'equal' : '**differ**'}. Warn/error log lines: ${ev.warn_error_lines}.`);
process.stdout.write(lines.join('\n') + '\n');
const bad = d.error_total > 0 || !(growth < 5) || ev.spend_redis_nano !== ev.spend_logged_nano;
process.exit(bad ? 1 : 0);
