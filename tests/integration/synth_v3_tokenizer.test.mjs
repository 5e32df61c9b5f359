// The tokenizer that cascade-gen-v3 writes beside its tiny DeepSeek-V3
// checkpoints, read by an independent implementation: the JavaScript
// tokenizers of @lenml/tokenizers (a fork of transformers.js, the reference the
// C tokenizer is held to) must load tokenizer.json + tokenizer_config.json and
// give the same ids as cascade-tokenize (the C tokenizer), and decode them back
// to the text. This is what says the file is a real Hugging Face tokenizer, not
// one only our loader accepts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { BUILD_DIR, SOURCE_DIR } from '../support/harness.mjs';

const GEN = path.join(BUILD_DIR, 'engines', 'native', 'cascade-gen-v3');
const CLI = path.join(BUILD_DIR, 'tokenizer', 'cascade-tokenize');
const LENML = path.join(SOURCE_DIR, 'node_modules', '@lenml', 'tokenizers');

const dir = mkdtempSync(path.join(tmpdir(), 'cascade-synth-v3-tok-'));
after(() => rmSync(dir, { recursive: true, force: true }));

// Text of every kind the pre-tokenizer splits differently: words with and
// without a leading space, contractions, digit runs, CJK, emoji, whitespace
// runs, code, DeepSeek's role markers (added tokens that always match).
const texts = [
  'Hello! How are you today?',
  "The assistant answered the user's question before the morning.",
  'def add(a, b):\n    return a + b\n\nprint(add(3, 4))',
  'naïve café, 東京タワー, ひらがな, 🙂👍 and 1234567 \t tabs\r\n',
  '  leading spaces   and\n\n\nthree newlines',
  'Once upon a time there was a little cat named Tom.',
  '<｜User｜>hi there<｜Assistant｜>Hello!',
  'ÀÉÎ õü ß ẞ Ωμέγα Привет',
  '3.14159 * 2 = 6.28318; 10,000,000!',
  'x',
];

test('cascade-gen-v3 tokenizer: the JavaScript reference loads it and agrees with the C tokenizer', (t) => {
  if (!existsSync(LENML)) {
    t.skip(`@lenml/tokenizers is not installed (${LENML}); run npm ci`);
    return;
  }
  assert.ok(existsSync(GEN), `${GEN} is not built`);
  assert.ok(existsSync(CLI), `${CLI} is not built`);
  const gen = spawnSync(GEN, ['--out', dir], { encoding: 'utf8' });
  assert.equal(gen.status, 0, gen.stderr);

  const { TokenizerLoader } = createRequire(path.join(SOURCE_DIR, 'package.json'))('@lenml/tokenizers');
  const tokenizerJSON = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const tokenizerConfig = JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const js = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

  const r = spawnSync(CLI, ['--tokenizer', path.join(dir, 'tokenizer.json'), '--jsonl'], {
    input: texts.map((x) => JSON.stringify(x) + '\n').join(''),
  });
  assert.equal(r.status, 0, r.stderr.toString());
  const ours = r.stdout.toString().trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(ours.length, texts.length);

  const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
  texts.forEach((text, i) => {
    const ids = js.encode(text, { add_special_tokens: false });
    assert.ok(ids.length > 0, `no ids for ${JSON.stringify(text)}`);
    assert.deepEqual(ours[i], ids, `ids of ${JSON.stringify(text)}`);
    assert.ok(ids.every((id) => id >= 0 && id < config.vocab_size), 'ids inside vocab_size');
    assert.equal(js.decode(ids), text, `decode(encode(${JSON.stringify(text)}))`);
  });
  // The special tokens sit where config.json says.
  assert.equal(js.model.convert_tokens_to_ids(['<｜begin▁of▁sentence｜>'])[0], config.bos_token_id);
  assert.equal(js.model.convert_tokens_to_ids(['<｜end▁of▁sentence｜>'])[0], config.eos_token_id);
  // The learned merges fire: an English sentence of the training text's words
  // takes far fewer tokens than bytes.
  const en = 'The user asked the assistant a question, and the assistant gave an answer.';
  assert.ok(js.encode(en, { add_special_tokens: false }).length * 3 < en.length);
});
