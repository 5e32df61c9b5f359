/* json_constraint.h: constrained decoding to one JSON object, for OpenAI's
 * response_format {"type":"json_object"}.
 *
 * A JSON grammar run one byte at a time (struct json_state: a few bytes,
 * copied freely) decides whether text so far is a prefix of one valid JSON
 * object (RFC 8259, with strings of valid UTF-8). At each decoding step
 * json_constraint_mask() sets the logit of every token whose bytes would
 * leave that prefix to -inf, so whatever the sampler picks keeps the output
 * valid; json_constraint_advance() then feeds the chosen token's bytes.
 *
 * Termination, even for a model that would ramble:
 *   - the output ends as soon as the top-level object closes
 *     (JC_DONE; trailing whitespace inside that same token is allowed);
 *   - whitespace runs between tokens of the grammar are at most
 *     JSON_MAX_WS bytes, nesting at most JSON_MAX_DEPTH;
 *   - budget: a token is allowed only if what it leaves open can still be
 *     closed in the tokens left (json_min_close() bytes, one byte per token).
 *     So with max_tokens at least 2 and single-byte tokens for the closing
 *     characters (" : 0 } ] and the letters of true/false/null) in the
 *     vocabulary, the output is always a complete object. When no token is
 *     allowed (max_tokens 1, or a vocabulary without those tokens) the
 *     mask reports 0 and the caller ends the request with finish_reason
 *     "length": the text may then be an incomplete object, as OpenAI's is
 *     when max_tokens cuts it.
 *
 * Per vocabulary, once (json_vocab_new): the tokens' bytes in a byte trie,
 * so tokens sharing a prefix are checked once and a rejected byte prunes its
 * whole subtree; and the "plain" tokens (valid UTF-8 without '"', '\\' or
 * control bytes), which inside a string are always allowed and leave the
 * state as it was, so the commonest state needs to check only the others.
 *
 * Ownership and threads: a json_vocab is read-only once built and may be
 * shared by any threads. A json_scratch is one thread's working memory for
 * json_constraint_mask (sized for its vocabulary). The grammar functions
 * are pure.
 */
#ifndef CASCADE_NATIVE_JSON_CONSTRAINT_H
#define CASCADE_NATIVE_JSON_CONSTRAINT_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32   /* open objects and arrays at once */
#define JSON_MAX_WS 16      /* whitespace bytes in one run outside strings */

/* The grammar's position. Modes are the places in RFC 8259's grammar where
 * the next byte is judged differently; the comment says what is expected. */
enum json_mode {
    JC_START,         /* ws, then '{' */
    JC_OBJ_FIRST,     /* after '{': ws, '"' (a key) or '}' */
    JC_OBJ_KEY,       /* after ',' in an object: ws, '"' */
    JC_COLON,         /* after a key: ws, ':' */
    JC_VALUE,         /* after ':' or ',' in an array: ws, a value */
    JC_ARR_FIRST,     /* after '[': ws, a value or ']' */
    JC_AFTER,         /* after a value in a container: ws, ',' or its closer */
    JC_STRING,        /* inside a string (key says whose) */
    JC_ESCAPE,        /* after '\' in a string */
    JC_HEX,           /* in \uXXXX: `count` hex digits to go */
    JC_LITERAL,       /* in true / false / null: `lit` and `count` say where */
    JC_NUM_MINUS,     /* after '-': a digit */
    JC_NUM_ZERO,      /* a leading 0: '.', 'e' or the end */
    JC_NUM_INT,       /* integer digits: more, '.', 'e' or the end */
    JC_NUM_DOT,       /* after '.': a digit */
    JC_NUM_FRAC,      /* fraction digits: more, 'e' or the end */
    JC_NUM_E,         /* after 'e': a sign or a digit */
    JC_NUM_ESIGN,     /* after the exponent's sign: a digit */
    JC_NUM_EXP,       /* exponent digits: more or the end */
    JC_DONE,          /* the object is closed: trailing ws only */
};

struct json_state {
    uint8_t mode;       /* enum json_mode */
    uint8_t depth;      /* open containers, 0..JSON_MAX_DEPTH */
    uint8_t key;        /* JC_STRING/ESCAPE/HEX: the string is an object key */
    uint8_t count;      /* JC_HEX: digits left; JC_LITERAL: bytes matched */
    uint8_t lit;        /* JC_LITERAL: 0 true, 1 false, 2 null */
    uint8_t utf8_need;  /* JC_STRING: continuation bytes still expected */
    uint8_t utf8_lo, utf8_hi;   /* the range the next continuation byte must be in */
    uint8_t ws;         /* whitespace bytes in the current run */
    uint32_t arrays;    /* bit i: the container at depth i+1 is an array */
};

/* The state before any output. */
void json_state_init(struct json_state *s);
/* Feed one byte: 1 when the text is still a prefix of a valid object (s
 * moved on), 0 when not (s is then unspecified: feed a copy). */
int json_feed(struct json_state *s, unsigned char c);
/* Feed len bytes; 1 when all were accepted. */
int json_feed_bytes(struct json_state *s, const char *p, size_t len);
/* Bytes needed, at least, to complete the object from s (0 when done). */
int json_min_close(const struct json_state *s);
static inline int json_done(const struct json_state *s) { return s->mode == JC_DONE; }

struct json_vocab;
struct json_scratch;

/* The bytes each token decodes to, or NULL for a token never allowed (end
 * of sequence, BOS, tokens that decode to nothing). ctx is the callback's. */
typedef const char *(*json_token_bytes_fn)(void *ctx, int32_t id, size_t *len);

/* Precompute for a vocabulary of n tokens; NULL when out of memory. */
struct json_vocab *json_vocab_new(int32_t n, json_token_bytes_fn bytes, void *ctx);
void json_vocab_free(struct json_vocab *v);
int32_t json_vocab_size(const struct json_vocab *v);
/* Bytes the tables take, for logs. */
size_t json_vocab_bytes(const struct json_vocab *v);

struct json_scratch *json_scratch_new(const struct json_vocab *v);
void json_scratch_free(struct json_scratch *s);

/* Set logits[id] to -inf for every token that may not come next from s
 * when `left` tokens may follow it (the budget above); logits has the
 * vocabulary's size. Returns how many tokens stay allowed. */
int json_constraint_mask(const struct json_vocab *v, struct json_scratch *sc,
                         const struct json_state *s, int left, float *logits);

/* Feed token id's bytes to s. 1 when accepted, 0 when id was not allowed
 * (a caller bug if it came from a masked distribution). */
int json_constraint_advance(const struct json_vocab *v, struct json_state *s, int32_t id);

#endif
