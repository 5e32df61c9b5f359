/* test_llama2c_tok.c: the llama2.c tokenizer on the real tok512.bin.
 *
 * The heap-based encoder must give exactly the ids of llama2.c's own
 * algorithm, written here as the plain loop it is (rescan every pair, merge
 * the best, repeat), on fixed and random texts; decoding must give the text
 * back; broken files must fail cleanly. */
#include "tokenizer/tokenizer_llama2c.h"
#include "tests/unit/test.h"

#include <stdint.h>
#include <unistd.h>

/* llama2.c's encode(), as a reference, over the file read here on its own:
 * linear lookups, rescan every pair per merge. */
static char *ref_piece[512];
static int ref_len[512];
static float ref_score[512];

static int read_vocab(const char *path)
{
    FILE *f = fopen(path, "rb");
    int32_t max_len, len;
    if (!f || fread(&max_len, 4, 1, f) != 1)
        return -1;
    for (int i = 0; i < 512; i++) {
        if (fread(&ref_score[i], 4, 1, f) != 1 || fread(&len, 4, 1, f) != 1)
            return -1;
        ref_piece[i] = calloc((size_t)len + 1, 1);
        ref_len[i] = len;
        if (fread(ref_piece[i], 1, (size_t)len, f) != (size_t)len)
            return -1;
    }
    fclose(f);
    return 0;
}

static int32_t ref_lookup(const char *s, size_t n)
{
    for (int32_t id = 0; id < 512; id++)
        if ((size_t)ref_len[id] == n && memcmp(ref_piece[id], s, n) == 0)
            return id;
    return -1;
}

static size_t ref_encode(const char *text, int32_t *out)
{
    size_t n = 0, len = strlen(text);
    if (!len)
        return 0;
    out[n++] = ref_lookup(" ", 1);
    for (size_t i = 0; i < len;) {
        size_t cl = 1;
        while (i + cl < len && cl < 4 && ((unsigned char)text[i + cl] & 0xC0) == 0x80)
            cl++;
        int32_t id = ref_lookup(text + i, cl);
        if (id >= 0)
            out[n++] = id;
        else
            for (size_t j = 0; j < cl; j++)
                out[n++] = (unsigned char)text[i + j] + 3;
        i += cl;
    }
    for (;;) {
        float best = -1e10f;
        int32_t best_id = -1;
        size_t best_i = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            char buf[512];
            size_t la = (size_t)ref_len[out[i]], lb = (size_t)ref_len[out[i + 1]];
            memcpy(buf, ref_piece[out[i]], la);
            memcpy(buf + la, ref_piece[out[i + 1]], lb);
            int32_t id = ref_lookup(buf, la + lb);
            if (id >= 0 && ref_score[id] > best) {
                best = ref_score[id];
                best_id = id;
                best_i = i;
            }
        }
        if (best_id < 0)
            break;
        out[best_i] = best_id;
        memmove(out + best_i + 1, out + best_i + 2, (n - best_i - 2) * sizeof(int32_t));
        n--;
    }
    return n;
}

static int same_as_reference(const struct tokenizer *t, const char *text)
{
    static int32_t ref[70000];
    struct tok_ids ids = {0};
    int rc = tokenizer_encode(t, text, strlen(text), 0, &ids);
    size_t n = ref_encode(text, ref);
    int ok = rc == TOK_OK && ids.n == n && memcmp(ids.v, ref, n * sizeof(int32_t)) == 0;
    if (!ok)
        fprintf(stderr, "encode differs from llama2.c's on \"%.60s\" (%zu vs %zu ids)\n", text, ids.n, n);
    /* Decoding after BOS gives the text back (the dummy space is dropped). */
    char *out = malloc(strlen(text) * 4 + 64);
    struct tok_decoder d;
    tok_decoder_init(&d, t);
    d.prev = t->bos_id;
    size_t len = 0;
    for (size_t i = 0; i < ids.n; i++)
        len += tok_decoder_push(&d, ids.v[i], out + len, 64 + strlen(text) * 4 - len);
    len += tok_decoder_flush(&d, out + len, 16);
    out[len] = '\0';
    if (strcmp(out, text) != 0) {
        fprintf(stderr, "round trip failed on \"%.60s\": \"%.60s\"\n", text, out);
        ok = 0;
    }
    free(out);
    tok_ids_free(&ids);
    return ok;
}

int main(void)
{
    char path[1024], err[256];
    snprintf(path, sizeof(path), "%s/models/stories260K/tok512.bin", test_shared_dir());
    if (access(path, R_OK) != 0) {
        TEST_SKIP("%s not found", path);
        TEST_MAIN_END();
    }
    CHECK(read_vocab(path) == 0);
    struct tokenizer *t = NULL;
    CHECK(tok_llama2c_load(path, 512, &t, err, sizeof(err)) == TOK_OK);
    if (!t)
        TEST_MAIN_END();
    CHECK(t->vocab_size == 512 && t->bos_id == 1 && t->eos_id == 2);
    CHECK(t->ops->lookup(t, "<0x41>") == 0x41 + 3);
    CHECK(t->ops->lookup(t, "no such piece, surely") == -1);

    static const char *const texts[] = {
        "Once upon a time",
        "Lily's mom said, \"Lily, let's go to the park.\"",
        "a",
        " ",
        "  two spaces and\ttab\nnewline",
        "caf\xc3\xa9 na\xc3\xafve \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",   /* byte fallback */
        "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        CHECK(same_as_reference(t, texts[i]));

    /* Random texts from a small alphabet that merges a lot. */
    uint64_t s = 7;
    static const char alpha[] = "abcdehilmnorstuy ,.'\n";
    char buf[400];
    int bad = 0;
    for (int k = 0; k < 200; k++) {
        size_t n = 1 + k % 300;
        for (size_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            buf[i] = alpha[(s >> 33) % (sizeof(alpha) - 1)];
        }
        buf[n] = '\0';
        bad += !same_as_reference(t, buf);
    }
    CHECK(bad == 0);

    /* A long text: the heap keeps it fast (the reference loop is O(n^2)). */
    size_t big = 60000;
    char *long_text = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        long_text[i] = "Once upon a time there was a dog. "[i % 34];
    long_text[big] = '\0';
    struct tok_ids ids = {0};
    CHECK(tokenizer_encode(t, long_text, big, 0, &ids) == TOK_OK && ids.n > 1000 && ids.n < big);
    tok_ids_free(&ids);
    free(long_text);

    /* Empty text: no ids at all (not even the dummy space). Invalid UTF-8: refused. */
    CHECK(tokenizer_encode(t, "", 0, 0, &ids) == TOK_OK && ids.n == 0);
    CHECK(tokenizer_encode(t, "\xff\xfe", 2, 0, &ids) == TOK_EINVAL);
    tok_ids_free(&ids);

    /* After BOS a leading space is dropped, elsewhere kept. */
    int32_t once = t->ops->lookup(t, " Once");
    if (once >= 0) {
        size_t l;
        const char *b = t->ops->token_bytes(t, 1, once, &l);
        CHECK(l == 4 && memcmp(b, "Once", 4) == 0);
        b = t->ops->token_bytes(t, 5, once, &l);
        CHECK(l == 5 && memcmp(b, " Once", 5) == 0);
    }
    tokenizer_free(t);

    /* Broken files. */
    char cut[] = "/tmp/cascade-tok-XXXXXX";
    int fd = mkstemp(cut);
    CHECK(fd >= 0);
    FILE *in = fopen(path, "rb"), *out = fdopen(fd, "wb");
    char chunk[3000];
    size_t got = fread(chunk, 1, sizeof(chunk), in);
    fwrite(chunk, 1, got, out);
    fclose(in);
    fclose(out);
    CHECK(tok_llama2c_load(cut, 512, &t, err, sizeof(err)) == TOK_EFORMAT && strstr(err, cut) &&
          strstr(err, "truncated"));
    CHECK(tok_llama2c_load("/nonexistent/tok.bin", 512, &t, err, sizeof(err)) == TOK_EIO);
    unlink(cut);
    for (int i = 0; i < 512; i++)
        free(ref_piece[i]);
    TEST_MAIN_END();
}
