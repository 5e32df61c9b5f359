// dashboard.test.mjs: GET /dashboard in a real browser.
//
// A live gateway (with Redis) serves test traffic: acme 10 requests with 4
// cache hits, naming its tier; beta 5 with 2, through "auto" into the
// cascade zone, where the judge keeps the cheap answers. Headless Chromium
// (Debian's, driven by playwright-core) then loads the page and we check what
// a person would see: the headline numbers (40.0% hit rate, "auto"'s routes
// and the judge's verdicts), charts that hold data points,
// the tenant menu (every tenant for the admin token, its own for a tenant
// key), the sign-in form, and that it refreshes itself. Any console error,
// page error or failed request fails the test. Screenshots go to
// tests/artifacts/ (git-ignored). Without Chromium the browser parts skip.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway,
  startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const BETA_KEY = 'sk-dashboard-beta';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(SOURCE_DIR, 'tests', 'artifacts');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ask(gw, key, text, model) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: authHeaders(key), body: JSON.stringify(chatBody(text, { model, temperature: 0 })),
  });
  await res.text();
  return res.headers.get('x-cascade-cache');
}

async function traffic(gw, key, prefix, distinct, repeats, model = 'small') {
  const seen = [];
  for (let i = 0; i < distinct; i++) seen.push(await ask(gw, key, `${prefix} ${i}`, model));
  await sleep(100); // let the cache writes land
  for (let i = 0; i < repeats; i++) seen.push(await ask(gw, key, `${prefix} ${i}`, model));
  return seen;
}

// A page that records every console error, page error and failed request.
async function watchedPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  const problems = [];
  const requests = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  page.on('request', (r) => requests.push(r.url()));
  return { context, page, problems, requests };
}

const text = (page, id) => page.textContent(`#${id}`);

describe('the dashboard', () => {
  let redis;
  let peer;
  let gw;
  let chromium = null;
  let browser = null;

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'dashboard' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url }),
        tier({ name: 'large', model: 'big-model', urls: peer.url, price: { input_per_1m: 2, output_per_1m: 8 } }),
      ],
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
        // Every "auto" request in the cascade zone; the peer's logprobs
        // (0, -0.1, -0.2, ...) keep a short echo under the mean rule.
        { id: 'beta', keys: [sha256hex(BETA_KEY)], allowed_tiers: ['small', 'large'],
          routing: { t_low: 0, t_high: 1, cascade: { rule: 'mean', threshold: -1 } } },
      ],
      classifier: { model: path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm') },
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
    const a = await traffic(gw, TEST_KEY, 'dashboard acme', 6, 4);
    const b = await traffic(gw, BETA_KEY, 'dashboard beta', 3, 2, 'auto');
    assert.equal(a.filter((c) => c === 'hit').length, 4);
    assert.equal(b.filter((c) => c === 'hit').length, 2);
    // Stats reach Redis about once a second.
    const now = Math.floor(Date.now() / 1000);
    for (let i = 0; i < 60; i++) {
      const res = await fetch(`${gw.url}/admin/v1/stats?from=${now - 3600}&to=${now + 60}&step=60`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      if (res.ok && (await res.json()).totals.requests >= 15) break;
      await sleep(100);
    }
    if (existsSync(CHROMIUM)) {
      ({ chromium } = await import('playwright-core'));
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    }
    mkdirSync(ARTIFACTS, { recursive: true });
  });
  after(async () => {
    await browser?.close();
    await redis?.stop();
  });

  test('the page and its assets are served from the binary', async () => {
    let res = await fetch(`${gw.url}/dashboard`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/html/);
    assert.match(res.headers.get('content-security-policy'), /script-src 'self'/);
    const html = await res.text();
    assert.match(html, /<script src="\/dashboard\/uplot\.min\.js"><\/script>/);
    assert.match(html, /rel="icon" href="data:,"/);
    for (const [p, type] of [['/dashboard/app.js', /javascript/], ['/dashboard/style.css', /css/],
      ['/dashboard/uplot.min.css', /css/], ['/dashboard/', /html/]]) {
      res = await fetch(gw.url + p);
      assert.equal(res.status, 200, p);
      assert.match(res.headers.get('content-type'), type, p);
      assert.ok((await res.text()).length > 100, p);
    }
    res = await fetch(`${gw.url}/dashboard/uplot.min.js`);
    const js = await res.text();
    assert.match(js, /Permission is hereby granted, free of charge/); // uPlot's MIT notice travels with it
    assert.match(js, /uPlot \(v1\.6\.32\)/);
    res = await fetch(`${gw.url}/dashboard`, { method: 'POST', body: '' });
    assert.equal(res.status, 405);
    await res.text();
    res = await fetch(`${gw.url}/dashboard/nope.js`);
    assert.equal(res.status, 404);
    await res.text();
  });

  test('admin: headline, charts, tenant menu, refresh; no console errors', async (t) => {
    if (!browser) return t.skip(`no Chromium at ${CHROMIUM} (Debian package chromium; scripts/setup.sh)`);
    const { context, page, problems, requests } = await watchedPage(browser);
    t.after(() => context.close());
    await page.goto(`${gw.url}/dashboard?token=${encodeURIComponent(ADMIN_TOKEN)}&refresh=2`);
    await page.waitForFunction(() => document.getElementById('h-requests').textContent === '15', null, { timeout: 10000 });
    assert.equal(await text(page, 'h-hit-rate'), '40.0%');
    assert.equal(await text(page, 'h-escalation-rate'), '0.0%');
    assert.match(await text(page, 'h-spend'), /^\$\d/);
    assert.match(await text(page, 'h-saved-cache'), /^\$\d/);
    // acme names its tier (model small): no routing savings; beta's kept
    // cascades answered below the baseline tier: a gain, and no loss
    // (README "Savings"); the cards show net routing savings and the loss.
    const savedRouting = await text(page, 'h-saved-routing');
    assert.match(savedRouting, /^\$\d/); // positive: no minus sign
    assert.notEqual(savedRouting, '$0');
    assert.equal(await text(page, 'h-routing-loss'), '$0');
    // "auto" sent beta's three misses into the cascade zone (hits are not
    // routed), and the judge kept all three.
    assert.equal(await text(page, 'h-routes'), 'cascade 100%');
    assert.equal(await text(page, 'h-judge'), '3 judged · kept 100.0%');
    assert.match(await text(page, 'h-p50'), /\d+(\.\d+)? m?s$/);
    assert.match(await text(page, 'h-p95'), /\d+(\.\d+)? m?s$/);
    assert.match(await text(page, 'h-tiers'), /^small 100%/);
    assert.doesNotMatch(page.url(), /token=/); // taken off the address bar

    // Every chart drew its data: points in uPlot and a canvas on the page.
    for (const id of ['c-hit-rate', 'c-tiers', 'c-spend', 'c-latency']) {
      const points = Number(await page.getAttribute(`#${id}`, 'data-points'));
      assert.ok(points >= 1, `${id}: ${points} points`);
      assert.equal(await page.locator(`#${id} canvas`).count(), 1, id);
    }
    const charted = await page.evaluate(() => {
      const c = window.cascadeDashboard.charts;
      const values = (u, i) => u.data[i].filter((v) => v != null && v !== 0);
      return {
        t: c.hit.data[0],
        hitRateAll: c.hit.data[1],
        hitRate: values(c.hit, 1),
        spend: values(c.spend, 1),
        p95: values(c.latency, 2),
        series: c.tiers.series.map((s) => s.label),
        spendSeries: c.spend.series.map((s) => s.label),
      };
    });
    assert.ok(charted.hitRate.length >= 1 && charted.spend.length >= 1 && charted.p95.length >= 1);
    assert.deepEqual(charted.series.slice(1), ['small', 'large', 'escalation rate']);
    assert.deepEqual(charted.spendSeries.slice(1), ['spend', 'saved by cache', 'saved by routing (net)', 'routing loss']);
    // The hit-rate chart plots, point by point, what the stats API says for
    // the same range (the traffic may straddle a minute), and those points
    // add up to the 40% of the headline.
    assert.ok(charted.t.length >= 2, `${charted.t.length} time points`);
    const step = charted.t[1] - charted.t[0];
    const api = await (await fetch(`${gw.url}/admin/v1/stats?from=${charted.t[0]}&to=${charted.t.at(-1) + step}&step=${step}`,
      { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
    assert.deepEqual(api.series.t, charted.t);
    const want = api.series.hit_rate.map((v) => (v == null ? null : Number((v * 100).toFixed(6))));
    assert.deepEqual(charted.hitRateAll.map((v) => (v == null ? null : Number(v.toFixed(6)))), want);
    const sum = (k) => api.series[k].reduce((a, v) => a + v, 0);
    assert.ok(sum('requests') > 0);
    assert.equal(sum('requests'), api.totals.requests);
    assert.equal(sum('hits') / sum('requests'), 0.4);
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-admin.png'), fullPage: true });

    // The admin may pick one tenant.
    const options = await page.$$eval('#tenant option', (os) => os.map((o) => o.value));
    assert.deepEqual(options, ['', 'acme', 'beta']);
    assert.equal(await page.isDisabled('#tenant'), false);
    await page.selectOption('#tenant', 'acme');
    await page.waitForFunction(() => document.getElementById('h-requests').textContent === '10', null, { timeout: 10000 });
    assert.equal(await text(page, 'h-hit-rate'), '40.0%');
    assert.equal(await text(page, 'h-saved-routing'), '$0'); // acme names its tier: nothing routed
    assert.equal(await text(page, 'h-routes'), '–');
    assert.equal(await text(page, 'h-judge'), '–');
    assert.match(page.url(), /tenant=acme/);
    await page.selectOption('#range', '86400');
    await page.waitForFunction(() => /24 h/.test(document.getElementById('status').textContent), null, { timeout: 10000 });
    assert.equal(await text(page, 'h-requests'), '10');

    // It refreshes by itself (every 2 s here; 10 s by default).
    const before = requests.filter((u) => u.includes('/admin/v1/stats')).length;
    await sleep(4500);
    const later = requests.filter((u) => u.includes('/admin/v1/stats')).length;
    assert.ok(later >= before + 1, `no refresh: ${before} -> ${later}`);
    assert.ok(!requests.some((u) => u.includes('favicon')), 'asked for a favicon');
    assert.deepEqual(problems, []);
  });

  test('a tenant key sees its own tenant only', async (t) => {
    if (!browser) return t.skip(`no Chromium at ${CHROMIUM}`);
    const { context, page, problems } = await watchedPage(browser);
    t.after(() => context.close());
    // Asking for another tenant in the address bar changes nothing.
    await page.goto(`${gw.url}/dashboard?token=${BETA_KEY}&tenant=acme`);
    await page.waitForFunction(() => document.getElementById('h-requests').textContent === '5', null, { timeout: 10000 });
    assert.equal(await text(page, 'h-hit-rate'), '40.0%');
    assert.deepEqual(await page.$$eval('#tenant option', (os) => os.map((o) => o.value)), ['beta']);
    assert.equal(await page.isDisabled('#tenant'), true);
    assert.match(await text(page, 'status'), /^beta ·/);
    assert.equal(await text(page, 'h-routes'), 'cascade 100%');
    assert.equal(await text(page, 'h-judge'), '3 judged · kept 100.0%');
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-tenant.png'), fullPage: true });
    assert.deepEqual(problems, []);
  });

  test('the routing and judge cards: shares by band, escalations by reason', async (t) => {
    if (!browser) return t.skip(`no Chromium at ${CHROMIUM}`);
    const { context, page, problems } = await watchedPage(browser);
    t.after(() => context.close());
    // The gateway's real answer, with mixed routes and escalations put in
    // its totals: what a busier tenant would show.
    await page.route('**/admin/v1/stats?*', async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      body.totals.routes = { small: 7, medium: 0, cascade: 1, large: 2 };
      body.totals.judgements.keep.mean = 3;
      body.totals.judgements.keep.option_prob = 2;
      body.totals.judgements.escalate.option_margin = 1;
      body.totals.judgements.escalate.quantile = 3;
      await route.fulfill({ response: res, json: body });
    });
    await page.goto(`${gw.url}/dashboard?token=${encodeURIComponent(ADMIN_TOKEN)}`);
    await page.waitForFunction(() => document.getElementById('h-requests').textContent === '15', null, { timeout: 10000 });
    // The most expensive band first; medium, with nothing, left out.
    assert.equal(await text(page, 'h-routes'), 'large 20% · cascade 10% · small 70%');
    // 5 kept (mean 3, option_prob 2) and 4 escalated: 9 judged; the
    // escalations by reason, the most frequent first.
    assert.equal(await text(page, 'h-judge'), '9 judged · kept 55.6% · escalated: quantile 3, option_margin 1');
    assert.deepEqual(problems, []);
  });

  test('without a token: the sign-in form, and a refused token says so', async (t) => {
    if (!browser) return t.skip(`no Chromium at ${CHROMIUM}`);
    const { context, page, problems } = await watchedPage(browser);
    t.after(() => context.close());
    await page.goto(`${gw.url}/dashboard`);
    assert.equal(await page.isVisible('#login-form'), true);
    assert.equal(await page.isVisible('#main'), false);
    await page.fill('#token-input', 'not-a-token');
    await page.click('#login-form button');
    await page.waitForFunction(() => document.getElementById('login-error').textContent !== '', null, { timeout: 10000 });
    // The browser reports the refused call itself; nothing else may go wrong.
    assert.ok(problems.length >= 1, 'the refused call was not seen');
    assert.ok(problems.every((p) => /401/.test(p)), problems.join('\n'));
    problems.length = 0;
    await page.fill('#token-input', ADMIN_TOKEN);
    await page.click('#login-form button');
    await page.waitForFunction(() => document.getElementById('h-requests').textContent === '15', null, { timeout: 10000 });
    assert.equal(await page.isVisible('#login-form'), false);
    await page.click('#signout');
    assert.equal(await page.isVisible('#login-form'), true);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    assert.deepEqual(problems, []);
  });
});
