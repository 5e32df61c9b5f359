/* fuzz_tokenizer_json: the Hugging Face tokenizer.json loader
 * (tokenizer/tokenizer_bpe.c) on arbitrary bytes, through
 * tok_bpe_load_buffer().
 *
 * A file that loads is then used: a few fixed texts (plain words, an
 * added-token opener "<", spaces and digits, non-ASCII) are encoded with
 * each flag set; every id must be inside the vocabulary and decode. (Not
 * the text back: a fuzzed file may give two strings one id. The round trip
 * is checked on the real DeepSeek file by fuzz_tokenizer_encode.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer_bpe.h"

static const char *const texts[] = {
    "Hello world", " <|user|> 12345  x", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\n\n\t", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tokenizer *t;
    char err[512];
    if (tok_bpe_load_buffer((const char *)data, size, "fuzz.json", &t, err, sizeof err) != TOK_OK)
        return 0;
    (void)tok_bpe_max_token_bytes(t);
    static const unsigned flags[] = {0, TOK_ALLOW_SPECIAL, TOK_ADDED_AS_TEXT};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (size_t f = 0; f < 3; f++) {
            struct tok_ids ids = {0};
            size_t n = strlen(texts[i]);
            int rc = tokenizer_encode(t, texts[i], n, flags[f], &ids);
            if (rc == TOK_EINVAL) { /* a file regex that PCRE2 cannot run to the end */
                tok_ids_free(&ids);
                continue;
            }
            if (rc != TOK_OK)
                abort();
            for (size_t k = 0; k < ids.n; k++)
                if (ids.v[k] < 0 || ids.v[k] >= t->vocab_size)
                    abort();
            char *out;
            size_t len;
            if (tok_decode(t, ids.v, ids.n, &out, &len) != TOK_OK)
                abort();
            free(out);
            tok_ids_free(&ids);
        }
    }
    tokenizer_free(t);
    return 0;
}
