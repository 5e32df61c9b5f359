#!/usr/bin/env node
// route-replay.mjs: the cost view of routing. Replays a JSONL file of prompts
// through `model: "auto"` against a running gateway, as one tenant, and says
// where the traffic went and what it cost against always using the most
// expensive tier.
//
//   node scripts/route-replay.mjs --url http://127.0.0.1:8080 --key "$KEY" \
//       --config deploy/local.json --data prompts.jsonl [--limit N] [--concurrency K] [--json]
//
// Each line of --data is a JSON object: a routing-data row with a "prompt"
// string (optional "system" string; "subject" used by --filter-subject and
// --exclude-subject), or a chat request's {"messages": [...]}. Every prompt
// becomes one non-streamed POST /v1/chat/completions with model "auto", and
// the answer's headers and usage are read:
//   x-cascade-tier        the tier that answered
//   x-cascade-escalated   "true" when the cascade's cheap answer was judged
//                         weak and the most expensive tier answered again
//   x-cascade-fallback    the tier that failed when a fallback answered
//   x-cascade-cost-usd    what the request was charged (an escalation pays
//                         for both answers)
//   usage                 the answer's prompt and completion tokens
// The report: the share of answered requests per tier, as first choice (the
// band the router chose: an escalated request's first choice is the cheapest
// allowed tier) and as the answering tier; escalations and fallbacks apart;
// errors by kind; the total cost; and the cost of always using the baseline
// tier (the tenant's routing.baseline_tier, else its most expensive allowed
// tier, as the gateway's savings use), priced from --config for the SAME
// token counts each answer reported. That baseline is an estimate: a larger
// model would write answers of other lengths.
//
// The tenant and its tiers' prices come from --config, the gateway's config
// file: the tenant is the one whose keys[] hold the SHA-256 of --key. Give
// the config the gateway runs on, or the prices are not the ones it charges.
//
// Requests go with `x-cascade-cache: bypass` unless --use-cache, so that
// every prompt is routed (a cache hit costs 0 and says nothing of routing).
//
// Exit status: 0 when the replay ran (some requests may have failed: see the
// report), 1 when it could not run or every request failed (bad key,
// gateway unreachable), 2 for bad arguments or a bad data or config file.
//
// Importing this file runs nothing; its functions are exported for tests
// (tests/integration/route_shares.test.mjs). No dependency beyond Node 18+.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

export const USAGE = `usage: node scripts/route-replay.mjs --url URL --key KEY --config CONFIG.json --data FILE.jsonl
         [--limit N] [--concurrency K] [--timeout-ms MS] [--max-tokens N]
         [--filter-subject a,b] [--exclude-subject a,b] [--baseline TIER] [--use-cache] [--json]
  --url            the gateway's base URL (http://host:port)
  --key            the tenant's API key (or set CASCADE_API_KEY)
  --config         the gateway's config file: the tenant's tiers and their prices
  --data           JSON Lines: {"prompt": "..."} (routing data) or {"messages": [...]}
  --limit          replay only the first N prompts (after the subject filters)
  --concurrency    requests in flight at once (8)
  --timeout-ms     per-request timeout (120000)
  --max-tokens     send max_tokens N with every request (unset: the tier's default)
  --filter-subject only rows whose "subject" is one of these (comma-separated)
  --exclude-subject  rows whose "subject" is one of these are skipped
  --baseline       price the "always" cost at this tier (default: the tenant's
                   routing.baseline_tier, else its most expensive allowed tier)
  --use-cache      let the gateway's cache answer (default: x-cascade-cache: bypass)
  --json           print the report as JSON instead of a table`;

// A mistake in the arguments, the data or the config: exit status 2.
export class InputError extends Error {}
// A mistake in the arguments themselves: the usage follows the message.
export class UsageError extends InputError {}
// The replay cannot go on (bad key, unreachable gateway): exit status 1.
export class ReplayError extends Error {}

function splitList(v) {
  return v.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

function positiveInt(name, v, max) {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > max) {
    throw new UsageError(`${name}: want an integer from 1 to ${max}, got '${v}'`);
  }
  return Number(v);
}

// parseArgs: argv (without node and the script) -> options. Throws
// InputError naming the bad argument.
export function parseArgs(argv, env = process.env) {
  const o = {
    url: null, key: env.CASCADE_API_KEY || null, config: null, data: null, limit: Infinity, concurrency: 8,
    timeoutMs: 120000, maxTokens: null, filterSubjects: null, excludeSubjects: null, baseline: null,
    useCache: false, json: false, help: false,
  };
  const valued = {
    '--url': (v) => (o.url = v),
    '--key': (v) => (o.key = v),
    '--config': (v) => (o.config = v),
    '--data': (v) => (o.data = v),
    '--limit': (v) => (o.limit = positiveInt('--limit', v, 1e9)),
    '--concurrency': (v) => (o.concurrency = positiveInt('--concurrency', v, 1024)),
    '--timeout-ms': (v) => (o.timeoutMs = positiveInt('--timeout-ms', v, 3600000)),
    '--max-tokens': (v) => (o.maxTokens = positiveInt('--max-tokens', v, 1 << 24)),
    '--filter-subject': (v) => (o.filterSubjects = new Set(splitList(v))),
    '--exclude-subject': (v) => (o.excludeSubjects = new Set(splitList(v))),
    '--baseline': (v) => (o.baseline = v),
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    if (a === '--json') o.json = true;
    else if (a === '--use-cache') o.useCache = true;
    else if (a === '--help' || a === '-h') o.help = true;
    else if (valued[a]) {
      if (v === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
        v = argv[++i];
      }
      valued[a](v);
    } else {
      throw new UsageError(`unknown argument '${argv[i]}'`);
    }
  }
  if (o.help) return o;
  for (const [flag, field] of [['--url', 'url'], ['--config', 'config'], ['--data', 'data']]) {
    if (!o[field]) throw new UsageError(`${flag} is required`);
  }
  if (!o.key) throw new UsageError('--key is required (or set CASCADE_API_KEY)');
  let u;
  try {
    u = new URL(o.url);
  } catch {
    throw new UsageError(`--url: not a URL: '${o.url}'`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new UsageError(`--url: want http:// or https://, got '${o.url}'`);
  }
  o.url = o.url.replace(/\/+$/, '');
  return o;
}

// readRows: the prompts of a JSONL file, each as {line, id, subject,
// messages}, after the subject filters and the limit. Throws InputError
// naming the file and line of anything malformed.
export function readRows(file, { limit = Infinity, filterSubjects = null, excludeSubjects = null } = {}) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`--data: cannot read ${file}: ${e.code || e.message}`);
  }
  const rows = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length && rows.length < limit; n++) {
    const line = lines[n].trim();
    if (line === '') continue;
    const where = `${file}:${n + 1}`;
    let o;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new InputError(`${where}: not JSON (${e.message})`);
    }
    if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new InputError(`${where}: not a JSON object`);
    const subject = typeof o.subject === 'string' ? o.subject : null;
    if (filterSubjects && !filterSubjects.has(subject)) continue;
    if (excludeSubjects && excludeSubjects.has(subject)) continue;
    let messages;
    if (typeof o.prompt === 'string') {
      if (o.system !== undefined && typeof o.system !== 'string') throw new InputError(`${where}: "system" must be a string`);
      messages = o.system ? [{ role: 'system', content: o.system }] : [];
      messages.push({ role: 'user', content: o.prompt });
    } else if (Array.isArray(o.messages) && o.messages.length > 0 &&
      o.messages.every((m) => m && typeof m === 'object' && typeof m.role === 'string')) {
      messages = o.messages;
    } else {
      throw new InputError(`${where}: needs a "prompt" string or a non-empty "messages" array of {role, content}`);
    }
    rows.push({ line: n + 1, id: typeof o.id === 'string' ? o.id : null, subject, messages });
  }
  return rows;
}

// tokensNano: tokens at price USD per 1M tokens, in nano-USD, rounded as
// policies/price.h rounds it (a non-positive price or count costs 0).
export function tokensNano(pricePer1m, tokens) {
  if (!(pricePer1m > 0) || !(tokens > 0)) return 0;
  return Math.round(tokens * pricePer1m * 1000);
}

export function costNano(price, promptTokens, completionTokens) {
  return tokensNano(price.input_per_1m, promptTokens) + tokensNano(price.output_per_1m, completionTokens);
}

// loadPricing: the tenant that holds `key` in the config file, its allowed
// tiers with their prices, the cheapest one (the cascade's first answer) and
// the baseline (--baseline, else routing.baseline_tier, else the most
// expensive: input + output price, the first on a tie, as gateway/config.c
// picks them). Throws InputError when the file or the key does not fit.
export function loadPricing(configPath, key, baselineName = null) {
  let cfg;
  try {
    cfg = JSON.parse(readFileSync(configPath, 'utf8'));
  } catch (e) {
    throw new InputError(`--config: cannot read ${configPath} as JSON: ${e.code || e.message}`);
  }
  if (!Array.isArray(cfg?.tiers) || !Array.isArray(cfg?.tenants)) {
    throw new InputError(`--config: ${configPath} has no tiers[] and tenants[]: is it a Cascade gateway config?`);
  }
  const tiers = new Map();
  for (const t of cfg.tiers) {
    if (typeof t?.name !== 'string') throw new InputError(`--config: a tier without a name in ${configPath}`);
    tiers.set(t.name, { name: t.name, input_per_1m: Number(t.price?.input_per_1m ?? 0),
      output_per_1m: Number(t.price?.output_per_1m ?? 0) });
  }
  const hash = createHash('sha256').update(key).digest('hex');
  const holds = (k) => (typeof k === 'string' ? k : k?.sha256)?.toLowerCase() === hash;
  const tenant = cfg.tenants.find((t) => Array.isArray(t?.keys) && t.keys.some(holds));
  if (!tenant) {
    throw new InputError(`--key: no tenant in ${configPath} holds this key (its SHA-256 is ${hash}): ` +
      'give the config the gateway runs on, and the tenant\'s key');
  }
  const allowed = (tenant.allowed_tiers || []).map((n) => {
    const t = tiers.get(n);
    if (!t) throw new InputError(`--config: tenant ${tenant.id} allows tier '${n}', which is not in tiers[]`);
    return t;
  });
  if (allowed.length === 0) throw new InputError(`--config: tenant ${tenant.id} allows no tier`);
  const sum = (t) => t.input_per_1m + t.output_per_1m;
  let cheapest = allowed[0];
  let largest = allowed[0];
  for (const t of allowed.slice(1)) {
    if (sum(t) < sum(cheapest)) cheapest = t;
    if (sum(t) > sum(largest)) largest = t;
  }
  const wanted = baselineName ?? tenant.routing?.baseline_tier ?? null;
  let baseline = largest;
  if (wanted !== null) {
    baseline = tiers.get(wanted);
    if (!baseline) throw new InputError(`baseline tier '${wanted}' is not in ${configPath}'s tiers[]`);
  }
  return { tenant: tenant.id, tiers, allowed, cheapest, largest, baseline };
}

function errorKind(status, body) {
  let code = null;
  try {
    code = JSON.parse(body)?.error?.code ?? JSON.parse(body)?.error?.type ?? null;
  } catch {
    // not JSON: the status says it
  }
  return code ? `http ${status} ${code}` : `http ${status}`;
}

// askOne: one prompt through model "auto"; resolves a record, never throws
// for a failed request (fatal conditions are marked for the caller).
async function askOne(row, o) {
  const body = { model: 'auto', messages: row.messages };
  if (o.maxTokens) body.max_tokens = o.maxTokens;
  const headers = { 'Content-Type': 'application/json', Authorization: `Bearer ${o.key}` };
  if (!o.useCache) headers['x-cascade-cache'] = 'bypass';
  const rec = { line: row.line, id: row.id, subject: row.subject };
  let res;
  let text;
  try {
    res = await fetch(`${o.url}/v1/chat/completions`, {
      method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(o.timeoutMs),
    });
    text = await res.text();
  } catch (e) {
    if (e.name === 'TimeoutError') return { ...rec, error: 'timeout' };
    const why = e.cause?.code || e.cause?.message || e.message;
    return { ...rec, error: `connection: ${why}`, unreachable: true };
  }
  rec.status = res.status;
  if (res.status !== 200) {
    rec.error = errorKind(res.status, text);
    rec.message = (() => {
      try {
        return JSON.parse(text)?.error?.message ?? text.slice(0, 200);
      } catch {
        return text.slice(0, 200);
      }
    })();
    return rec;
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    return { ...rec, error: 'answer: not JSON' };
  }
  const h = (n) => res.headers.get(n);
  rec.tier = h('x-cascade-tier');
  rec.escalated = h('x-cascade-escalated') === 'true';
  rec.fallback = h('x-cascade-fallback');
  rec.cache = h('x-cascade-cache');
  rec.score = h('x-cascade-score') === null ? null : Number(h('x-cascade-score'));
  const usd = h('x-cascade-cost-usd');
  rec.costNano = usd === null || !/^\d+(\.\d+)?$/.test(usd) ? null : Math.round(Number(usd) * 1e9);
  const u = json?.usage;
  rec.usage = u && Number.isInteger(u.prompt_tokens) && Number.isInteger(u.completion_tokens)
    ? { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens } : null;
  return rec;
}

// replay: every row through model "auto" with at most o.concurrency requests
// in flight; resolves the records in row order. A 401 (the key) or an
// unreachable gateway on a request before any answer stops the replay with
// a ReplayError: every other request would fail the same way.
export async function replay(rows, o) {
  const out = new Array(rows.length);
  let next = 0;
  let answered = 0;
  let fatal = null;
  const worker = async () => {
    while (fatal === null && next < rows.length) {
      const i = next++;
      const r = await askOne(rows[i], o);
      out[i] = r;
      if (r.status === 200) answered++;
      else if (r.status === 401) fatal = `the gateway at ${o.url} refused the key (401: ${r.message})`;
      else if (r.unreachable && answered === 0) fatal = `cannot reach the gateway at ${o.url} (${r.error})`;
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency, rows.length) }, worker));
  if (fatal !== null) throw new ReplayError(fatal);
  return out;
}

const share = (n, d) => (d > 0 ? n / d : 0);

// summarize: the report of a replay's records, priced with loadPricing()'s
// answer. Shares are of the answered (200) requests.
export function summarize(records, pricing) {
  const ok = records.filter((r) => r.status === 200 && !r.error);
  const errors = {};
  for (const r of records) if (r.error) errors[r.error] = (errors[r.error] || 0) + 1;
  const unknown = [...new Set(ok.map((r) => r.tier).filter((t) => t !== null && !pricing.tiers.has(t)))];
  if (unknown.length > 0) {
    throw new ReplayError(`tier(s) ${unknown.join(', ')} answered, but the config has no such tier: ` +
      'is --config the file the gateway runs on?');
  }
  const first = (r) => (r.escalated ? pricing.cheapest.name : r.fallback || r.tier);
  const names = [...new Set([...pricing.allowed.map((t) => t.name), ...ok.map((r) => r.tier).filter(Boolean)])];
  const tiers = names.map((name) => {
    const f = ok.filter((r) => first(r) === name).length;
    const a = ok.filter((r) => r.tier === name).length;
    const t = pricing.tiers.get(name);
    return { tier: name, input_per_1m: t.input_per_1m, output_per_1m: t.output_per_1m,
      first_choice: f, first_choice_share: share(f, ok.length), answered: a, answered_share: share(a, ok.length) };
  });
  const escalated = ok.filter((r) => r.escalated).length;
  // Priced: the answers that say both what they cost and their tokens.
  const priced = ok.filter((r) => r.costNano !== null && r.usage !== null);
  let actual = 0;
  let baseline = 0;
  for (const r of priced) {
    actual += r.costNano;
    baseline += costNano(pricing.baseline, r.usage.prompt_tokens, r.usage.completion_tokens);
  }
  const b = pricing.baseline.name;
  return {
    tenant: pricing.tenant,
    requests: records.length,
    answered: ok.length,
    errors: { total: records.length - ok.length, by_kind: errors },
    tiers,
    escalated, escalation_rate: share(escalated, ok.length),
    fallbacks: ok.filter((r) => r.fallback).length,
    without_tier: ok.filter((r) => r.tier === null).length,
    cache_hits: ok.filter((r) => r.cache === 'hit').length,
    cost: {
      priced_answers: priced.length,
      unpriced_answers: ok.length - priced.length,
      actual_usd: actual / 1e9,
      actual_nano: actual,
      baseline_tier: b,
      baseline_usd: baseline / 1e9,
      baseline_nano: baseline,
      saved_usd: (baseline - actual) / 1e9,
      actual_over_baseline: baseline > 0 ? actual / baseline : null,
      prompt_tokens: priced.reduce((s, r) => s + r.usage.prompt_tokens, 0),
      completion_tokens: priced.reduce((s, r) => s + r.usage.completion_tokens, 0),
      note: `always-${b} cost = the same token counts each answer reported (usage), at ${b}'s configured prices; ` +
        'a larger model would write answers of other lengths',
    },
  };
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const usd = (x) => `$${x.toFixed(6)}`;

// formatTable: the report as a human-readable table.
export function formatTable(rep) {
  const L = [];
  L.push(`tenant ${rep.tenant}: ${rep.requests} prompts through model "auto", ${rep.answered} answered, ` +
    `${rep.errors.total} failed`);
  for (const [k, n] of Object.entries(rep.errors.by_kind).sort((a, b) => b[1] - a[1])) L.push(`  error ${k}: ${n}`);
  L.push('');
  const w = Math.max(4, ...rep.tiers.map((t) => t.tier.length));
  L.push(`${'tier'.padEnd(w)}  ${'$/1M in / out'.padStart(17)}  ${'first choice'.padStart(16)}  ${'answered'.padStart(16)}`);
  for (const t of rep.tiers) {
    const price = `${t.input_per_1m} / ${t.output_per_1m}`;
    L.push(`${t.tier.padEnd(w)}  ${price.padStart(17)}  ${String(t.first_choice).padStart(7)} ${pct(t.first_choice_share).padStart(8)}` +
      `  ${String(t.answered).padStart(7)} ${pct(t.answered_share).padStart(8)}`);
  }
  L.push(`escalated (the cheap answer judged weak, answered again): ${rep.escalated} (${pct(rep.escalation_rate)} of answered)`);
  if (rep.fallbacks) L.push(`answered by a fallback tier: ${rep.fallbacks}`);
  if (rep.without_tier) {
    L.push(`answers without x-cascade-tier (in no row above; is the tenant's expose_headers off?): ${rep.without_tier}`);
  }
  if (rep.cache_hits) L.push(`cache hits (cost 0): ${rep.cache_hits}`);
  L.push('');
  const c = rep.cost;
  L.push(`cost of ${c.priced_answers} answers (${c.prompt_tokens} prompt + ${c.completion_tokens} completion tokens)`);
  L.push(`  charged            ${usd(c.actual_usd)}`);
  L.push(`  always ${c.baseline_tier.padEnd(11)} ${usd(c.baseline_usd)}  (same token counts, at ${c.baseline_tier}'s configured prices)`);
  if (c.actual_over_baseline !== null) {
    L.push(`  saved              ${usd(c.saved_usd)}  (charged = ${pct(c.actual_over_baseline)} of always ${c.baseline_tier})`);
  }
  if (c.unpriced_answers) {
    L.push(`  ${c.unpriced_answers} answers without x-cascade-cost-usd or usage are left out ` +
      '(is the tenant\'s expose_headers off?)');
  }
  return L.join('\n');
}

// run: parse, load, replay, report. Returns {code, out, err} so that tests
// and main() share it.
export async function run(argv, env = process.env) {
  let o;
  try {
    o = parseArgs(argv, env);
    if (o.help) return { code: 0, out: USAGE, err: '' };
    const pricing = loadPricing(o.config, o.key, o.baseline);
    const rows = readRows(o.data, o);
    if (rows.length === 0) throw new InputError(`--data: no prompts in ${o.data} (after the subject filters)`);
    const records = await replay(rows, o);
    const rep = summarize(records, pricing);
    if (rep.answered === 0) {
      const kinds = Object.entries(rep.errors.by_kind).map(([k, n]) => `${k}: ${n}`).join(', ');
      return { code: 1, out: o.json ? JSON.stringify(rep, null, 2) : formatTable(rep),
        err: `route-replay: every request failed (${kinds})` };
    }
    return { code: 0, out: o.json ? JSON.stringify(rep, null, 2) : formatTable(rep), err: '' };
  } catch (e) {
    if (e instanceof InputError) {
      return { code: 2, out: '', err: `route-replay: ${e.message}${e instanceof UsageError ? `\n${USAGE}` : ''}` };
    }
    if (e instanceof ReplayError) return { code: 1, out: '', err: `route-replay: ${e.message}` };
    throw e;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await run(process.argv.slice(2));
  if (r.out) process.stdout.write(`${r.out}\n`);
  if (r.err) process.stderr.write(`${r.err}\n`);
  process.exitCode = r.code;
}
