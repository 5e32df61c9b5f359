/* cascade-tokenize: DeepSeek token ids and counts from the command line.
 *
 * Operators use it to check what a prompt costs; the tests use it to compare
 * the C tokenizer with the JavaScript reference. It reads stdin whole (or a
 * line at a time with --jsonl), so it is one process per batch, not per text.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bpe.h"

/* Exit statuses: 1 for bad input text, 2 for usage or tokenizer file errors. */
enum { EXIT_INPUT = 1, EXIT_SETUP = 2 };

static const char usage[] =
    "usage: cascade-tokenize --tokenizer FILE [--count] [--jsonl] [--allow-special]\n"
    "                        [--chat [--generation-prompt]] [--decode]\n"
    "\n"
    "Reads UTF-8 text on stdin and prints its token ids as a JSON array, or with\n"
    "--count only their number. No BOS is added.\n"
    "  --tokenizer FILE     a Hugging Face tokenizer.json (byte-level BPE)\n"
    "  --count              print the number of ids instead of the ids\n"
    "  --jsonl              every input line is a JSON string; every output line\n"
    "                       is that string's ids (or count)\n"
    "  --allow-special      text that spells a special token becomes that token\n"
    "                       (off by default, as for user text)\n"
    "  --chat               the input is a conversation, {\"messages\": [{\"role\",\n"
    "                       \"content\"}...], \"add_generation_prompt\": bool} or a bare\n"
    "                       messages array, encoded with the DeepSeek-V3 chat template\n"
    "  --generation-prompt  with --chat: add the generation prompt unless the\n"
    "                       input says otherwise\n"
    "  --decode             the input is a JSON array of ids; prints their text\n"
    "                       (with --jsonl, as one JSON string per line)\n"
    "Exit status: 0 ok, 1 bad input, 2 usage or tokenizer file error.\n";

struct opts {
    const char *tokenizer;
    int count, jsonl, chat, gen_prompt, decode;
    unsigned flags;
};

/* Output is built in one buffer per result and written with one fwrite. */
struct out {
    char *p;
    size_t n, cap;
};

static void out_add(struct out *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->n + n)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            fprintf(stderr, "cascade-tokenize: out of memory\n");
            exit(EXIT_SETUP);
        }
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

/* Ids as a compact JSON array (no spaces), the form the tests compare, or
 * just their number. */
static void out_ids(struct out *o, const struct tok_ids *ids, int count)
{
    char num[32];
    if (count) {
        int k = snprintf(num, sizeof(num), "%zu\n", ids->n);
        out_add(o, num, (size_t)k);
        return;
    }
    out_add(o, "[", 1);
    for (size_t i = 0; i < ids->n; i++) {
        int k = snprintf(num, sizeof(num), i ? ",%d" : "%d", (int)ids->v[i]);
        out_add(o, num, (size_t)k);
    }
    out_add(o, "]\n", 2);
}

/* Offset of the first byte that breaks UTF-8 in s[0..n), for the message. */
static size_t first_bad_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (i + k > n || !tok_utf8_valid(s + i, k))
            return i;
        i += k;
    }
    return n;
}

static const char *tok_strerror(int rc)
{
    switch (rc) {
    case TOK_EINVAL: return "invalid input";
    case TOK_ENOMEM: return "out of memory";
    case TOK_EIO: return "cannot read file";
    case TOK_EFORMAT: return "bad tokenizer file";
    default: return "error";
    }
}

/* A conversation from JSON into turns (pointers borrowed from root). The
 * input's own add_generation_prompt wins over --generation-prompt, so one
 * --jsonl batch can mix both. Content must be a string or null: OpenAI's
 * content-part arrays are the gateway's to flatten, not this tool's. */
static int parse_chat(json_t *root, int gen_default, struct chat_turn **turns, size_t *n,
                      int *gen, char *err, size_t errlen)
{
    json_t *msgs = root;
    *gen = gen_default;
    if (json_is_object(root)) {
        msgs = json_object_get(root, "messages");
        json_t *g = json_object_get(root, "add_generation_prompt");
        if (json_is_boolean(g))
            *gen = json_is_true(g);
    }
    if (!json_is_array(msgs)) {
        snprintf(err, errlen, "expected a messages array");
        return -1;
    }
    *n = json_array_size(msgs);
    *turns = calloc(*n ? *n : 1, sizeof(**turns));
    if (!*turns) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < *n; i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_string(role) || (content && !json_is_string(content) && !json_is_null(content))) {
            snprintf(err, errlen, "messages[%zu] needs a role string and a string or null content", i);
            free(*turns);
            return -1;
        }
        (*turns)[i].role = json_string_value(role);
        (*turns)[i].content = json_string_value(content);
        (*turns)[i].len = json_is_string(content) ? json_string_length(content) : 0;
    }
    return 0;
}

/* Handle one input (a whole stdin, or one --jsonl line already parsed when
 * json is set). Appends the result to o; 0, or -1 with err set. */
static int run_one(const struct opts *op, const struct tokenizer *t, const char *text, size_t len,
                   json_t *json, struct out *o, char *err, size_t errlen)
{
    struct tok_ids ids = { 0 };
    int rc;

    if (op->decode) {
        if (!json_is_array(json)) {
            snprintf(err, errlen, "expected a JSON array of ids");
            return -1;
        }
        size_t n = json_array_size(json);
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(json, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= t->vocab_size) {
                snprintf(err, errlen, "element %zu is not a token id of this tokenizer", i);
                tok_ids_free(&ids);
                return -1;
            }
            if (tok_ids_push(&ids, (int32_t)json_integer_value(v)) < 0) {
                snprintf(err, errlen, "out of memory");
                tok_ids_free(&ids);
                return -1;
            }
        }
        char *s;
        size_t sl;
        rc = tok_decode(t, ids.v, ids.n, &s, &sl);
        tok_ids_free(&ids);
        if (rc < 0) {
            snprintf(err, errlen, "%s", tok_strerror(rc));
            return -1;
        }
        if (op->jsonl) {
            json_t *js = json_stringn(s, sl);
            char *enc = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
            if (enc) {
                out_add(o, enc, strlen(enc));
                out_add(o, "\n", 1);
            }
            free(enc);
            json_decref(js);
        } else {
            out_add(o, s, sl);
        }
        free(s);
        return 0;
    }

    if (op->chat) {
        struct chat_turn *turns;
        size_t n;
        int gen;
        if (parse_chat(json, op->gen_prompt, &turns, &n, &gen, err, errlen) < 0)
            return -1;
        rc = chat_template_encode(t, turns, n, gen, op->flags, &ids);
        free(turns);
        if (rc == TOK_EINVAL) {
            snprintf(err, errlen, "conversation has a role other than system, user, assistant, "
                                  "tool, or this tokenizer lacks the DeepSeek-V3 chat markers");
            tok_ids_free(&ids);
            return -1;
        }
    } else {
        if (json) {
            text = json_string_value(json);
            len = json_string_length(json);
        }
        rc = tokenizer_encode(t, text, len, op->flags, &ids);
        if (rc == TOK_EINVAL) {
            snprintf(err, errlen, "input is not valid UTF-8 (first bad byte at offset %zu)",
                     first_bad_utf8(text, len));
            tok_ids_free(&ids);
            return -1;
        }
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s", tok_strerror(rc));
        tok_ids_free(&ids);
        return -1;
    }
    out_ids(o, &ids, op->count);
    tok_ids_free(&ids);
    return 0;
}

/* All of f (stdin) in one buffer: the tokenizer needs the whole text, since
 * a piece can span any read boundary. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    if (!p)
        return NULL;
    for (;;) {
        if (n == cap) {
            char *np = realloc(p, cap * 2);
            if (!np) {
                free(p);
                return NULL;
            }
            p = np;
            cap *= 2;
        }
        size_t k = fread(p + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f)) {
        free(p);
        return NULL;
    }
    *len = n;
    return p;
}

int main(int argc, char **argv)
{
    struct opts op = { 0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--tokenizer") == 0 && i + 1 < argc)
            op.tokenizer = argv[++i];
        else if (strcmp(a, "--count") == 0)
            op.count = 1;
        else if (strcmp(a, "--jsonl") == 0)
            op.jsonl = 1;
        else if (strcmp(a, "--allow-special") == 0)
            op.flags |= TOK_ALLOW_SPECIAL;
        else if (strcmp(a, "--chat") == 0)
            op.chat = 1;
        else if (strcmp(a, "--generation-prompt") == 0)
            op.gen_prompt = 1;
        else if (strcmp(a, "--decode") == 0)
            op.decode = 1;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "cascade-tokenize: unknown or incomplete option %s\n\n%s", a, usage);
            return EXIT_SETUP;
        }
    }
    if (!op.tokenizer || (op.chat && op.decode) || (op.decode && op.count)) {
        fputs(usage, stderr);
        return EXIT_SETUP;
    }

    char err[512];
    struct tokenizer *t;
    int rc = tok_bpe_load(op.tokenizer, &t, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "cascade-tokenize: cannot load tokenizer: %s\n", err);
        return EXIT_SETUP;
    }

    /* One load, then every input: load time (about 0.2 s) dominates a
     * single short text, so batches should use --jsonl. A bad line stops the
     * run with its line number rather than printing a misaligned answer. */
    struct out o = { 0 };
    int status = 0;
    if (op.jsonl) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        size_t lineno = 0;
        while ((n = getline(&line, &cap, stdin)) >= 0) {
            json_error_t jerr;
            lineno++;
            json_t *j = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            if (!j || (!op.chat && !op.decode && !json_is_string(j))) {
                fprintf(stderr, "cascade-tokenize: line %zu: %s\n", lineno,
                        j ? "expected a JSON string" : jerr.text);
                json_decref(j);
                status = EXIT_INPUT;
                break;
            }
            o.n = 0;
            if (run_one(&op, t, NULL, 0, j, &o, err, sizeof(err)) < 0) {
                fprintf(stderr, "cascade-tokenize: line %zu: %s\n", lineno, err);
                json_decref(j);
                status = EXIT_INPUT;
                break;
            }
            fwrite(o.p, 1, o.n, stdout);
            json_decref(j);
        }
        free(line);
    } else {
        size_t len = 0;
        char *in = read_all(stdin, &len);
        json_t *j = NULL;
        if (!in) {
            fprintf(stderr, "cascade-tokenize: cannot read stdin: %s\n", strerror(errno));
            status = EXIT_INPUT;
        } else if (op.chat || op.decode) {
            json_error_t jerr;
            j = json_loadb(in, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
            if (!j) {
                fprintf(stderr, "cascade-tokenize: stdin is not JSON: %s (line %d)\n", jerr.text,
                        jerr.line);
                status = EXIT_INPUT;
            }
        }
        if (!status && run_one(&op, t, in, len, j, &o, err, sizeof(err)) < 0) {
            fprintf(stderr, "cascade-tokenize: %s\n", err);
            status = EXIT_INPUT;
        }
        if (!status)
            fwrite(o.p, 1, o.n, stdout);
        json_decref(j);
        free(in);
    }
    free(o.p);
    tokenizer_free(t);
    if (fflush(stdout) != 0 && !status) {
        fprintf(stderr, "cascade-tokenize: cannot write output: %s\n", strerror(errno));
        status = EXIT_INPUT;
    }
    return status;
}
