/* tokenizer.h: the one tokenizer interface of the native engine.
 *
 * Two implementations serve models through it: the Hugging Face tokenizer.json
 * byte-level BPE (DeepSeek models; tokenizer_bpe.h) and the llama2.c
 * tokenizer.bin (the stories models; tokenizer_llama2c.h). Each constructor
 * returns a struct tokenizer whose ops table does the work.
 *
 * A tokenizer is read-only after it is built, so any thread may encode and
 * decode with it at once; implementations that cache do so thread-safely.
 *
 * Invalid UTF-8 policy (the same everywhere): input text must be valid UTF-8
 * (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF; U+0000 is
 * valid text); tokenizer_encode() returns TOK_EINVAL for invalid input and the
 * caller answers 400. tok_utf8_valid() is the one check all implementations
 * apply. The gateway validates request text before it gets here. Output is
 * the other direction: a model may emit byte tokens that do not form UTF-8, so
 * the decoder below never passes broken bytes on; it replaces each maximal
 * invalid subpart with U+FFFD, as the WHATWG decoder (and so the JavaScript
 * reference tokenizer) does.

 */
#ifndef CASCADE_TOKENIZER_H
#define CASCADE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum {
    TOK_OK = 0,
    TOK_EINVAL = -1,   /* invalid UTF-8 or otherwise unencodable input */
    TOK_ENOMEM = -2,
    TOK_EIO = -3,      /* a tokenizer file could not be read */
    TOK_EFORMAT = -4,  /* a tokenizer file is corrupt or uses an unsupported feature */
};

/* Flags for encode. */
enum {
    /* Text that spells a special token (e.g. "<｜end▁of▁sentence｜>") becomes that
     * token. Off for user content, so users cannot forge control tokens. */
    TOK_ALLOW_SPECIAL = 1u << 0,
    /* No added token matches at all, special or not: all text is encoded as
     * plain text. DeepSeek's role markers (<｜User｜>, <｜Assistant｜>, the
     * tool markers) are added tokens *not* marked special, so without this
     * a user could type a forged turn. Use it for message content. */
    TOK_ADDED_AS_TEXT = 1u << 1,
};

/* A growable array of token ids; encode appends to it. Zero-initialise one
 * ({0}) before first use; tok_ids_free() returns it to that state. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};

void tok_ids_free(struct tok_ids *ids);
int tok_ids_push(struct tok_ids *ids, int32_t id);
/* Make room for at least extra more ids; TOK_OK or TOK_ENOMEM. */
int tok_ids_reserve(struct tok_ids *ids, size_t extra);

/* 1 when s[0..len) is valid UTF-8 under the policy above, else 0. */
int tok_utf8_valid(const char *s, size_t len);

struct tokenizer;

struct tokenizer_ops {
    /* Append the ids of text[0..len) to out. */
    int (*encode)(const struct tokenizer *t, const char *text, size_t len, unsigned flags,
                  struct tok_ids *out);
    /* The raw bytes a token decodes to (may be a partial UTF-8 sequence).
     * prev is the previous id, or -1, for formats whose decoding depends on it. */
    const char *(*token_bytes)(const struct tokenizer *t, int32_t prev, int32_t id, size_t *len);
    /* Token id of an exact token string (special or not), or -1. */
    int32_t (*lookup)(const struct tokenizer *t, const char *piece);
    void (*free)(struct tokenizer *t);
};

struct tokenizer {
    const struct tokenizer_ops *ops;
    int32_t vocab_size;
    int32_t bos_id;     /* -1 when the model has none */
    int32_t eos_id;
};

static inline int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len,
                                   unsigned flags, struct tok_ids *out)
{
    return t->ops->encode(t, text, len, flags, out);
}

static inline int32_t tokenizer_lookup(const struct tokenizer *t, const char *piece)
{
    return t->ops->lookup(t, piece);
}

/* The bytes of id (NULL and *len 0 for an id the tokenizer does not know). */
static inline const char *tokenizer_token_bytes(const struct tokenizer *t, int32_t prev,
                                                int32_t id, size_t *len)
{
    return t->ops->token_bytes(t, prev, id, len);
}

static inline void tokenizer_free(struct tokenizer *t)
{
    if (t)
        t->ops->free(t);
}

/* Streaming-safe decoding: bytes of a partial UTF-8 sequence are held until the
 * token that completes them arrives, so no caller ever sees broken UTF-8. */
struct tok_decoder {
    const struct tokenizer *t;
    int32_t prev;
    char pending[8];
    size_t n_pending;
};

/* Worst-case output of one tok_decoder_push() for a token of tok_len bytes:
 * every byte, held ones included, may turn into a 3-byte U+FFFD. */
#define TOK_DECODE_CAP(tok_len) (3 * ((tok_len) + 4))

void tok_decoder_init(struct tok_decoder *d, const struct tokenizer *t);
/* Decode one id; writes complete UTF-8 text to out (cap >= 64 + longest
 * token, and >= TOK_DECODE_CAP(longest token) to be safe even when the model
 * emits invalid bytes) and returns its length. Never writes past cap. */
size_t tok_decoder_push(struct tok_decoder *d, int32_t id, char *out, size_t cap);
/* At end of stream: flush held bytes as U+FFFD replacement characters. */
size_t tok_decoder_flush(struct tok_decoder *d, char *out, size_t cap);

/* Decode a whole id sequence into a malloc'd, NUL-terminated string (*out,
 * length *len), with the decoder's replacement rule. TOK_OK or TOK_ENOMEM. */
int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len);

#endif
