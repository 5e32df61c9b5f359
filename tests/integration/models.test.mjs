// models.test.mjs: GET /v1/models/{id} through the openai SDK's
// models.retrieve(), and the same endpoint by hand: every id GET /v1/models
// lists can be retrieved (tier names, "auto"), a tier's model id too
// (escaped, as the SDK sends a '/'), and an unknown id or a tier the key's
// tenant may not use is 404 model_not_found in OpenAI's error format.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import OpenAI from 'openai';

import {
  cleanupAfterAll, startPeer, startGateway, makeConfig, tier, sha256hex, authHeaders, TEST_KEY, DEFAULT_MODEL,
} from '../support/harness.mjs';

cleanupAfterAll();

const BETA_KEY = 'sk-cascade-test-beta';
const LARGE_MODEL = 'deepseek-ai/DeepSeek-V3';
let gw;
let acme;
let beta;

before(async () => {
  const peer = await startPeer({ name: 'up' });
  const tiers = [tier({ name: 'small', urls: peer.url }), tier({ name: 'large', model: LARGE_MODEL, urls: peer.url })];
  const tenants = [
    { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
    { id: 'beta', keys: [sha256hex(BETA_KEY)], allowed_tiers: ['small'], default_tier: 'small' },
  ];
  gw = await startGateway({ config: makeConfig({ tiers, tenants }) });
  acme = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0, timeout: 10000 });
  beta = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: BETA_KEY, maxRetries: 0, timeout: 10000 });
});

test('models.retrieve() answers every id models.list() shows', async () => {
  const listed = [];
  for await (const m of acme.models.list()) listed.push(m.id);
  assert.deepEqual(listed, ['auto', 'small', 'large']);
  for (const id of listed) {
    const m = await acme.models.retrieve(id);
    assert.equal(m.id, id);
    assert.equal(m.object, 'model');
    assert.equal(typeof m.created, 'number');
    assert.equal(m.owned_by, 'cascade');
  }
});

test('a tier\'s model id is a model too, also with a / in it (the SDK escapes it)', async () => {
  const m = await acme.models.retrieve(LARGE_MODEL);
  assert.equal(m.id, LARGE_MODEL);
  assert.equal(m.object, 'model');
  const small = await acme.models.retrieve(DEFAULT_MODEL);
  assert.equal(small.id, DEFAULT_MODEL);
});

test('an unknown id is the SDK\'s NotFoundError, code model_not_found', async () => {
  await assert.rejects(acme.models.retrieve('gpt-4o'), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, `got ${e?.constructor?.name}`);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    assert.equal(e.type, 'invalid_request_error');
    return true;
  });
});

test('a tier the tenant may not use is 404 as if it did not exist', async () => {
  for (const id of ['large', LARGE_MODEL]) {
    await assert.rejects(beta.models.retrieve(id), (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  }
  const ok = await beta.models.retrieve('small');
  assert.equal(ok.id, 'small');
});

test('by hand: the error body, bad escapes, methods and keys', async () => {
  let r = await fetch(`${gw.url}/v1/models/nope`, { headers: authHeaders() });
  assert.equal(r.status, 404);
  assert.equal(r.headers.get('content-type'), 'application/json');
  const body = await r.json();
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, 'model_not_found');
  assert.match(body.error.message, /nope/);
  assert.equal(body.error.param, null);

  // an escape that decodes to nothing valid is a 404 too, never a crash
  for (const bad of ['%', '%4', '%zz', '%00x']) {
    r = await fetch(`${gw.url}/v1/models/${bad}`, { headers: authHeaders() });
    assert.equal(r.status, 404, bad);
    assert.equal((await r.json()).error.code, 'model_not_found');
  }
  // the raw, unescaped slash works as well
  r = await fetch(`${gw.url}/v1/models/${LARGE_MODEL}`, { headers: authHeaders() });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).id, LARGE_MODEL);

  r = await fetch(`${gw.url}/v1/models/small`, { method: 'POST', headers: authHeaders(), body: '{}' });
  assert.equal(r.status, 405);
  assert.equal(r.headers.get('allow'), 'GET');
  r = await fetch(`${gw.url}/v1/models/small`);
  assert.equal(r.status, 401);
  assert.equal((await r.json()).error.code, 'invalid_api_key');
});
