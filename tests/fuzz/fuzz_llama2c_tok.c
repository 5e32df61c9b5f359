/* fuzz_llama2c_tok: llama2.c's tokenizer.bin (tokenizer/tokenizer_llama2c.c).
 *
 * The first input byte chooses what the rest is:
 *   even: a tokenizer.bin, loaded through tok_llama2c_load_buffer() (the
 *         vocabulary size read to the end of the file, or taken from the
 *         second byte), then used to encode and decode a few fixed texts;
 *   odd:  text, encoded with the real tok512.bin of the stories260K model
 *         when ../shared has it (else with a small built-in vocabulary),
 *         and decoded back.
 * Every id must be in the vocabulary, and decoding must stay within what
 * the ids spell. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_llama2c.h"

static struct tokenizer *real;

/* A tokenizer.bin in memory: <unk>, <s>, </s>, the 256 byte pieces, then a
 * few words, so the built-in fallback can merge. */
static size_t builtin_vocab(uint8_t *buf, size_t cap)
{
    size_t n = 0;
#define PUT(p, k) do { if (n + (k) > cap) abort(); memcpy(buf + n, (p), (k)); n += (k); } while (0)
    int32_t max_len = 8;
    PUT(&max_len, 4);
    const char *special[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        float s = 0;
        int32_t l = (int32_t)strlen(special[i]);
        PUT(&s, 4);
        PUT(&l, 4);
        PUT(special[i], (size_t)l);
    }
    for (int b = 0; b < 256; b++) {
        char p[8];
        snprintf(p, sizeof p, "<0x%02X>", b);
        float s = 0;
        int32_t l = 6;
        PUT(&s, 4);
        PUT(&l, 4);
        PUT(p, 6);
    }
    const char *words[] = {" ", "a", "b", "ab", " a", " ab", "ba", "\xc3\xa9"};
    for (int i = 0; i < 8; i++) {
        float s = (float)-i;
        int32_t l = (int32_t)strlen(words[i]);
        PUT(&s, 4);
        PUT(&l, 4);
        PUT(words[i], (size_t)l);
    }
#undef PUT
    return n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/../shared/models/stories260K/tok512.bin", CASCADE_SOURCE_DIR);
    if (tok_llama2c_load(path, 512, &real, err, sizeof err) == TOK_OK)
        return 0;
    static uint8_t buf[8192];
    size_t n = builtin_vocab(buf, sizeof buf);
    if (tok_llama2c_load_buffer(buf, n, "builtin", 0, &real, err, sizeof err) != TOK_OK) {
        fprintf(stderr, "fuzz_llama2c_tok: built-in vocabulary: %s\n", err);
        abort();
    }
    return 0;
}

static void roundtrip(const struct tokenizer *t, const char *text, size_t len)
{
    struct tok_ids ids = {0};
    int rc = tokenizer_encode(t, text, len, 0, &ids);
    if (rc == TOK_EINVAL && !tok_utf8_valid(text, len)) {
        tok_ids_free(&ids);
        return;
    }
    if (rc != TOK_OK)
        abort();
    size_t spelled = 0;
    for (size_t k = 0; k < ids.n; k++) {
        if (ids.v[k] < 0 || ids.v[k] >= t->vocab_size)
            abort();
        size_t n;
        tokenizer_token_bytes(t, k ? ids.v[k - 1] : t->bos_id, ids.v[k], &n);
        spelled += n;
    }
    char *out;
    size_t out_len;
    if (tok_decode(t, ids.v, ids.n, &out, &out_len) != TOK_OK)
        abort();
    if (out_len > 3 * spelled + 16)
        abort();
    free(out);
    tok_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (data[0] & 1) {
        roundtrip(real, (const char *)data + 1, size - 1);
        return 0;
    }
    int vocab = (data[0] & 2) ? data[1] : 0;
    struct tokenizer *t;
    char err[512];
    if (tok_llama2c_load_buffer(data + 2, size - 2, "fuzz.bin", vocab, &t, err, sizeof err) != TOK_OK)
        return 0;
    static const char *const texts[] = {"ab ab a", "Once upon a time", "\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80", "<0x41>"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        roundtrip(t, texts[i], strlen(texts[i]));
    (void)tokenizer_lookup(t, "a");
    (void)tok_llama2c_score(t, 3);
    tokenizer_free(t);
    return 0;
}
