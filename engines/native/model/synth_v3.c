/* synth_v3.c: tiny DeepSeek-V3 checkpoints and their tokenizer; see synth_v3.h.
 *
 * Three parts, in the order synth_v3_write() runs them:
 *   1. the tokenizer: a deterministic byte-level BPE training pass over the
 *      text below gives the merges; the vocabulary size follows from it, and
 *      the embeddings need it;
 *   2. the tensor list, by the real names, then the shards: values are
 *      generated while they are written (a band of 128 rows at a time, which
 *      is also one row of FP8 scale blocks), never held whole;
 *   3. config.json and the index.
 */
#include "engines/native/model/synth_v3.h"

#include "engines/native/backend/dtype.h"
#include "engines/native/model/safetensors.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int synth_v3_preset(const char *name, struct synth_v3_spec *o)
{
    memset(o, 0, sizeof(*o));
    if (strcmp(name, "tiny") != 0)
        return -1;
    o->hidden = 256;
    o->intermediate = 512;
    o->moe_intermediate = 128;
    o->n_layers = 3;
    o->first_k_dense = 1;
    o->n_heads = 4;
    /* q_a rows 96 and kv_a rows 64+16 = 80 are partial 128-row FP8 blocks;
     * q_b is 4*48 = 192 rows, one full block and one half. */
    o->q_lora_rank = 96;
    o->kv_lora_rank = 64;
    o->qk_nope_dim = 32;
    o->qk_rope_dim = 16;
    o->v_head_dim = 32;
    o->n_routed_experts = 16;
    o->n_shared_experts = 1;
    o->experts_per_tok = 4;
    o->n_group = 4;
    o->topk_group = 2;
    o->n_mtp_layers = 1;
    o->routed_scaling_factor = 2.5;
    o->rope_theta = 10000.0;
    o->norm_eps = 1e-6;
    o->max_pos = 163840;
    o->yarn_factor = 40.0;
    o->yarn_beta_fast = 32.0;
    o->yarn_beta_slow = 1.0;
    o->yarn_mscale = 1.0;
    o->yarn_mscale_all_dim = 1.0;
    o->yarn_original_max_pos = 4096;
    o->fp8 = 0;
    o->n_shards = 2;
    o->seed = 1;
    return 0;
}

/* ---- Random numbers ---------------------------------------------------- */

/* splitmix64, as synth.c: one stream per tensor, seeded by (seed, name). */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1), from the top 53 bits. */
static double unit(uint64_t *s)
{
    return (double)(mix(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

/* FNV-1a of the name, mixed with the seed: a tensor's values depend on its
 * name, not on its position in the list, so variants of a spec (BF16/FP8,
 * with or without q LoRA) share every tensor they have in common. */
static uint64_t stream_for(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    uint64_t s = h ^ (seed * 0x9e3779b97f4a7c15ull);
    mix(&s);
    return s;
}

/* ---- The tokenizer ------------------------------------------------------ */

/* The training text: plain English with some chat, numbers and punctuation,
 * so common words become single tokens and any text still encodes (the 256
 * byte symbols cover the rest). Changing it changes every checkpoint. */
static const char corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog did not move; it was asleep in the sun.\n"
    "Hello! How are you today? I am fine, thank you. What would you like to know?\n"
    "The user asked the assistant a question, and the assistant gave an answer.\n"
    "A small model can run on one machine. A large model needs many machines, and the\n"
    "gateway decides which one should answer each request. It reads the request, checks\n"
    "the cache, and then sends the prompt to the model that is the best fit for the price.\n"
    "In the morning the town was quiet. The baker opened the shop at six, and the smell of\n"
    "bread filled the street. Children walked to school with their friends, talking about\n"
    "the game they had played the evening before. Their teacher was waiting at the door.\n"
    "There are 24 hours in a day, 7 days in a week and 365 days in a year.\n"
    "Please write a short story about a cat who lives in a library and reads at night.\n"
    "Once upon a time there was a little cat named Tom. He loved the books more than the\n"
    "mice, and every night he read one page by the light of the moon. The librarian never\n"
    "knew why the books were always open in the morning, but she smiled when she saw them.\n"
    "Can you explain how the weather changes with the seasons? In the winter the days are\n"
    "short and cold, in the spring the rain comes back, and in the summer the sun is high.\n"
    "The answer is simple: the earth is tilted, so the light falls at a different angle.\n"
    "We should test everything that a user would notice if it broke, and nothing else.\n"
    "The number of tokens in the prompt is counted before the request is sent. If the\n"
    "budget is not enough, the request is refused with a clear error, and no money is spent.\n"
    "She said that she would come back later, after the meeting, to finish the work.\n"
    "They were happy because the project was done on time and everything worked well.\n"
    "Write a function that returns the sum of two numbers, then call it with 3 and 4.\n"
    "def add(a, b):\n    return a + b\n\nprint(add(3, 4))\n"
    "The model answered: \"The sum is 7.\" Then it stopped, because the answer was complete.\n"
    "Thank you for your help! You are welcome; let me know if there is anything else.\n";

/* GPT-2's byte-to-unicode table: printable bytes stand for themselves, the
 * other 68 take the code points 256.. in byte order. This is the ByteLevel
 * pre-tokenizer's alphabet, and its order is the real vocabulary's (ids 3..). */
static void byte_level_order(int order[256], int cp[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
            order[n++] = b;
            cp[b] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
            order[n++] = b;
            cp[b] = 256 + extra++;
        }
}

/* Added tokens after the learned vocabulary, as DeepSeek-V3's file spells
 * them (the chat template and tool markers are not "special"). */
static const struct {
    const char *text;
    int special;
} added_tail[] = {
    {"<\uff5cfim\u2581hole\uff5c>", 0},
    {"<\uff5cfim\u2581begin\uff5c>", 0},
    {"<\uff5cfim\u2581end\uff5c>", 0},
    {"<\uff5cUser\uff5c>", 0},
    {"<\uff5cAssistant\uff5c>", 0},
    {"<|EOT|>", 1},
    {"<\uff5ctool\u2581calls\u2581begin\uff5c>", 0},
    {"<\uff5ctool\u2581calls\u2581end\uff5c>", 0},
    {"<\uff5ctool\u2581call\u2581begin\uff5c>", 0},
    {"<\uff5ctool\u2581call\u2581end\uff5c>", 0},
    {"<\uff5ctool\u2581outputs\u2581begin\uff5c>", 0},
    {"<\uff5ctool\u2581outputs\u2581end\uff5c>", 0},
    {"<\uff5ctool\u2581output\u2581begin\uff5c>", 0},
    {"<\uff5ctool\u2581output\u2581end\uff5c>", 0},
    {"<\uff5ctool\u2581sep\uff5c>", 0},
};
#define N_ADDED_TAIL ((int)(sizeof(added_tail) / sizeof(added_tail[0])))
static const char *const bos_text = "<\uff5cbegin\u2581of\u2581sentence\uff5c>";
static const char *const eos_text = "<\uff5cend\u2581of\u2581sentence\uff5c>";
static const char *const pad_text = "<\uff5c\u2581pad\u2581\uff5c>";

enum { MAX_MERGES = 400, VOCAB_ALIGN = 64, MAX_SYMS = 3 + 256 + MAX_MERGES };

/* The learned vocabulary: ids 0..2 BOS, EOS, pad (in the BPE vocab too, as in
 * the real file), 3..258 the byte symbols, then one id per merge. */
struct bpe {
    char sym[MAX_SYMS][64];     /* byte-level UTF-8 spelling */
    int n_sym;
    int merge[MAX_MERGES][2];
    int n_merges;
};

/* A training word: symbol ids and how often the word occurs. */
struct word {
    int sym[64];
    int n, count;
};

struct pair_count {
    int a, b, count;
};

static int cmp_pair_ab(const void *x, const void *y)
{
    const struct pair_count *p = x, *q = y;
    return p->a != q->a ? (p->a < q->a ? -1 : 1) : (p->b > q->b) - (p->b < q->b);
}

/* Most frequent first; ties by the smaller (a, b), so training is
 * deterministic whatever qsort does with equal keys. */
static int cmp_pair_best(const void *x, const void *y)
{
    const struct pair_count *p = x, *q = y;
    if (p->count != q->count)
        return p->count > q->count ? -1 : 1;
    return cmp_pair_ab(x, y);
}

/* Split the corpus roughly as DeepSeek-V3's pre-tokenizer would: a letter run
 * with its leading space or punctuation mark, digits in threes, punctuation
 * runs with their leading space, whitespace runs. Merges never cross these
 * boundaries, so they are the ones that fire at encode time. The corpus is
 * ASCII. */
static int split_words(struct word *w, int max_words)
{
    int nw = 0;
    const char *s = corpus;
    size_t i = 0, n = strlen(corpus);
    while (i < n) {
        size_t j = i;
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' && j + 1 < n && isalpha((unsigned char)s[j + 1])) {
            j++;
            while (j < n && isalpha((unsigned char)s[j]))
                j++;
        } else if (ispunct(c) && j + 1 < n && isalpha((unsigned char)s[j + 1])) {
            j++;
            while (j < n && isalpha((unsigned char)s[j]))
                j++;
        } else if (isalpha(c)) {
            while (j < n && isalpha((unsigned char)s[j]))
                j++;
        } else if (isdigit(c)) {
            while (j < n && j < i + 3 && isdigit((unsigned char)s[j]))
                j++;
        } else if (ispunct(c) || (c == ' ' && j + 1 < n && ispunct((unsigned char)s[j + 1]))) {
            j++;
            while (j < n && ispunct((unsigned char)s[j]))
                j++;
            while (j < n && s[j] == '\n')
                j++;
        } else {
            while (j < n && isspace((unsigned char)s[j]) && (j == i || !isalpha((unsigned char)s[j])))
                j++;
            if (j > i + 1 && j < n && s[j - 1] == ' ' && isalpha((unsigned char)s[j]))
                j--;    /* leave the space before a word to the word */
        }
        if (j - i > 64)
            j = i + 64;
        struct word cur = {.n = (int)(j - i), .count = 1};
        for (size_t k = i; k < j; k++)
            cur.sym[k - i] = (unsigned char)s[k];   /* bytes; bpe_train maps them to ids */
        int found = 0;
        for (int k = 0; k < nw && !found; k++)
            if (w[k].n == cur.n && !memcmp(w[k].sym, cur.sym, sizeof(int) * (size_t)cur.n)) {
                w[k].count++;
                found = 1;
            }
        if (!found && nw < max_words)
            w[nw++] = cur;
        i = j;
    }
    return nw;
}

/* UTF-8 of a code point below 0x800 (the byte-level alphabet stops at 323). */
static int put_utf8(char *out, int c)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    out[0] = (char)(0xc0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3f));
    return 2;
}

static int sym_find(const struct bpe *v, const char *s)
{
    for (int i = 0; i < v->n_sym; i++)
        if (!strcmp(v->sym[i], s))
            return i;
    return -1;
}

/* Learn up to MAX_MERGES merges: count adjacent pairs over all words
 * (weighted by frequency), merge the best, repeat; stop when no pair occurs
 * twice. A pair whose spelling already exists (reached by another route) is
 * passed over, so every vocab string is unique. */
static int bpe_train(struct bpe *v)
{
    int order[256], cp[256], id_of_byte[256];
    byte_level_order(order, cp);
    memset(v, 0, sizeof(*v));
    snprintf(v->sym[0], sizeof(v->sym[0]), "%s", bos_text);
    snprintf(v->sym[1], sizeof(v->sym[1]), "%s", eos_text);
    snprintf(v->sym[2], sizeof(v->sym[2]), "%s", pad_text);
    for (int k = 0; k < 256; k++) {
        int b = order[k];
        v->sym[3 + k][put_utf8(v->sym[3 + k], cp[b])] = '\0';
        id_of_byte[b] = 3 + k;
    }
    v->n_sym = 3 + 256;

    enum { MAX_WORDS = 2048 };
    struct word *w = calloc(MAX_WORDS, sizeof(*w));
    struct pair_count *pc = calloc(sizeof(corpus), sizeof(*pc));
    if (!w || !pc) {
        free(w);
        free(pc);
        return -1;
    }
    int nw = split_words(w, MAX_WORDS);
    for (int k = 0; k < nw; k++)
        for (int j = 0; j < w[k].n; j++)
            w[k].sym[j] = id_of_byte[w[k].sym[j]];

    while (v->n_merges < MAX_MERGES) {
        int np = 0;
        for (int k = 0; k < nw; k++)
            for (int j = 0; j + 1 < w[k].n; j++)
                pc[np++] = (struct pair_count){w[k].sym[j], w[k].sym[j + 1], w[k].count};
        if (np == 0)
            break;
        qsort(pc, (size_t)np, sizeof(*pc), cmp_pair_ab);
        int nu = 0;
        for (int k = 0; k < np; k++) {
            if (nu && pc[nu - 1].a == pc[k].a && pc[nu - 1].b == pc[k].b)
                pc[nu - 1].count += pc[k].count;
            else
                pc[nu++] = pc[k];
        }
        qsort(pc, (size_t)nu, sizeof(*pc), cmp_pair_best);
        int best = -1;
        char joined[128];
        for (int k = 0; k < nu && pc[k].count >= 2; k++) {
            snprintf(joined, sizeof(joined), "%s%s", v->sym[pc[k].a], v->sym[pc[k].b]);
            if (strlen(joined) < sizeof(v->sym[0]) && sym_find(v, joined) < 0) {
                best = k;
                break;
            }
        }
        if (best < 0)
            break;
        int a = pc[best].a, b = pc[best].b, id = v->n_sym++;
        memcpy(v->sym[id], joined, strlen(joined) + 1);   /* fits: checked above */
        v->merge[v->n_merges][0] = a;
        v->merge[v->n_merges][1] = b;
        v->n_merges++;
        /* Apply the merge left to right in every word, as BPE encoding does. */
        for (int k = 0; k < nw; k++) {
            int o = 0;
            for (int j = 0; j < w[k].n; j++) {
                if (j + 1 < w[k].n && w[k].sym[j] == a && w[k].sym[j + 1] == b) {
                    w[k].sym[o++] = id;
                    j++;
                } else {
                    w[k].sym[o++] = w[k].sym[j];
                }
            }
            w[k].n = o;
        }
    }
    free(w);
    free(pc);
    return 0;
}

/* Total ids: the learned vocabulary, DeepSeek's added tokens, and
 * placeholders up to a multiple of VOCAB_ALIGN (the real file also fills
 * its gap with <｜place▁holder▁no▁N｜> tokens). */
static int vocab_total(const struct bpe *v)
{
    int n = v->n_sym + N_ADDED_TAIL;
    return (n + VOCAB_ALIGN - 1) / VOCAB_ALIGN * VOCAB_ALIGN;
}

int synth_v3_vocab_size(void)
{
    struct bpe *v = malloc(sizeof(*v));
    int n = v && bpe_train(v) == 0 ? vocab_total(v) : -1;
    free(v);
    return n;
}

static json_t *added_token(int id, const char *text, int special)
{
    /* The real file marks its specials normalized false, the rest true. */
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", text,
                     "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", !special,
                     "special", special);
}

static json_t *byte_level(int add_prefix_space, int trim_offsets, int use_regex)
{
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space",
                     add_prefix_space, "trim_offsets", trim_offsets, "use_regex", use_regex);
}

static json_t *split_regex(const char *re)
{
    return json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex", re,
                     "behavior", "Isolated", "invert", 0);
}

/* tokenizer.json, laid out as DeepSeek-V3's (same pre-tokenizer regexes,
 * post-processor and decoder; a BPE model whose vocab holds BOS/EOS/pad and
 * the learned symbols; added tokens after it). */
static int write_tokenizer_json(const struct bpe *v, const char *path)
{
    json_t *root = json_object(), *added = json_array(), *vocab = json_object(),
           *merges = json_array();
    int rc = -1, total = vocab_total(v);
    if (!root || !added || !vocab || !merges)
        goto out;
    json_array_append_new(added, added_token(0, bos_text, 1));
    json_array_append_new(added, added_token(1, eos_text, 1));
    json_array_append_new(added, added_token(2, pad_text, 1));
    int id = v->n_sym;
    for (int k = 0; id < total - N_ADDED_TAIL; k++, id++) {
        char ph[64];
        snprintf(ph, sizeof(ph), "<\uff5cplace\u2581holder\u2581no\u2581%d\uff5c>", k);
        json_array_append_new(added, added_token(id, ph, 1));
    }
    for (int k = 0; k < N_ADDED_TAIL; k++, id++)
        json_array_append_new(added, added_token(id, added_tail[k].text, added_tail[k].special));
    for (int i = 0; i < v->n_sym; i++)
        json_object_set_new(vocab, v->sym[i], json_integer(i));
    for (int k = 0; k < v->n_merges; k++) {
        char m[160];
        snprintf(m, sizeof(m), "%s %s", v->sym[v->merge[k][0]], v->sym[v->merge[k][1]]);
        json_array_append_new(merges, json_string(m));
    }
    /* DeepSeek-V3's three Split regexes: digits in runs of up to 3, CJK runs,
     * then words / punctuation / whitespace; ByteLevel without its own regex. */
    json_t *pre = json_pack(
        "{s:s, s:[o, o, o, o]}", "type", "Sequence", "pretokenizers",
        split_regex("\\p{N}{1,3}"),
        split_regex("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
        split_regex("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|"
                    "[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|"
                    "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"),
        byte_level(0, 1, 0));
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:O, s:O}", "type", "BPE",
                              "dropout", "unk_token", "continuing_subword_prefix",
                              "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "vocab",
                              vocab, "merges", merges);
    if (!pre || !model) {
        json_decref(pre);
        json_decref(model);
        goto out;
    }
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set(root, "added_tokens", added);
    json_object_set_new(root, "normalizer",
                        json_pack("{s:s, s:[]}", "type", "Sequence", "normalizers"));
    json_object_set_new(root, "pre_tokenizer", pre);
    json_object_set_new(root, "post_processor", byte_level(1, 0, 1));
    json_object_set_new(root, "decoder", byte_level(1, 1, 1));
    json_object_set_new(root, "model", model);
    rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -1;
out:
    json_decref(root);
    json_decref(added);
    json_decref(vocab);
    json_decref(merges);
    return rc;
}

static json_t *config_token(const char *text)
{
    return json_pack("{s:s, s:s, s:b, s:b, s:b, s:b}", "__type", "AddedToken", "content", text,
                     "lstrip", 0, "normalized", 1, "rstrip", 0, "single_word", 0);
}

/* tokenizer_config.json: the fields of DeepSeek-V3's that a loader reads
 * (its Jinja chat_template is left out: the engine renders DeepSeek-V3's
 * template itself, tokenizer/chat_template.h). */
static int write_tokenizer_config(const char *path)
{
    json_t *c = json_object();
    if (!c)
        return -1;
    json_object_set_new(c, "add_bos_token", json_true());
    json_object_set_new(c, "add_eos_token", json_false());
    json_object_set_new(c, "bos_token", config_token(bos_text));
    json_object_set_new(c, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(c, "eos_token", config_token(eos_text));
    json_object_set_new(c, "legacy", json_true());
    json_object_set_new(c, "model_max_length", json_integer(131072));
    json_object_set_new(c, "pad_token", config_token(eos_text));
    json_object_set_new(c, "sp_model_kwargs", json_object());
    json_object_set_new(c, "unk_token", json_null());
    json_object_set_new(c, "tokenizer_class", json_string("LlamaTokenizerFast"));
    int rc = json_dump_file(c, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 ? 0 : -1;
    json_decref(c);
    return rc;
}

/* ---- Tensors -------------------------------------------------------------- */

enum kind {
    K_LINEAR,       /* a linear weight: F8_E4M3 in FP8 checkpoints, else BF16 */
    K_BF16,         /* a matrix that stays BF16: embeddings, heads, router, eh_proj */
    K_NORM,         /* BF16, 1 + noise */
    K_BIAS,         /* F32 */
    K_SCALE,        /* F32 block scales of tensor `src` */
};

struct v3t {
    char name[128];
    int64_t rows, cols;     /* cols == 0: a vector */
    enum kind kind;
    double half_width;      /* of the uniform values (K_LINEAR, K_BF16, K_NORM, K_BIAS) */
    int src;                /* K_SCALE: the weight's index */
    int fp8;                /* K_LINEAR stored as F8_E4M3 */
    int shard;
};

struct list {
    struct v3t *t;
    int n, cap;
    int fp8;
    uint64_t seed;
    int oom;
};

static int64_t blocks(int64_t n)
{
    return (n + 127) / 128;
}

static const char *dtype_of(const struct v3t *t)
{
    switch (t->kind) {
    case K_LINEAR:
        return t->fp8 ? "F8_E4M3" : "BF16";
    case K_BF16:
    case K_NORM:
        return "BF16";
    default:
        return "F32";
    }
}

static size_t elem_size(const struct v3t *t)
{
    const char *d = dtype_of(t);
    return d[0] == 'F' && d[1] == '8' ? 1 : !strcmp(d, "BF16") ? 2 : 4;
}

static int64_t numel(const struct v3t *t)
{
    return t->cols ? t->rows * t->cols : t->rows;
}

static struct v3t *add(struct list *l, enum kind k, int64_t rows, int64_t cols, double hw,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static struct v3t *add(struct list *l, enum kind k, int64_t rows, int64_t cols, double hw,
                       const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        struct v3t *nt = realloc(l->t, sizeof(*nt) * (size_t)cap);
        if (!nt) {
            l->oom = 1;
            return NULL;
        }
        l->t = nt;
        l->cap = cap;
    }
    struct v3t *t = &l->t[l->n++];
    memset(t, 0, sizeof(*t));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    t->rows = rows;
    t->cols = cols;
    t->kind = k;
    t->half_width = hw;
    t->fp8 = k == K_LINEAR && l->fp8;
    t->src = -1;
    return t;
}

/* A linear weight [rows][cols] and, in FP8 checkpoints, its scale tensor. */
static void linear(struct list *l, int64_t rows, int64_t cols, const char *prefix,
                   const char *what)
{
    struct v3t *w = add(l, K_LINEAR, rows, cols, 1.0 / sqrt((double)cols), "%s%s.weight",
                        prefix, what);
    if (!w || !l->fp8)
        return;
    int src = l->n - 1;
    struct v3t *s = add(l, K_SCALE, blocks(rows), blocks(cols), 0.0, "%s%s.weight_scale_inv",
                        prefix, what);
    if (s)
        s->src = src;
}

static void norm(struct list *l, int64_t n, const char *prefix, const char *what)
{
    add(l, K_NORM, n, 0, 0.25, "%s%s.weight", prefix, what);
}

/* One decoder layer, as model.layers.<idx>.* of the real checkpoint. */
static void layer(struct list *l, const struct synth_v3_spec *s, int idx)
{
    char p[64];
    const int D = s->hidden, H = s->n_heads, qk = s->qk_nope_dim + s->qk_rope_dim;
    snprintf(p, sizeof(p), "model.layers.%d.", idx);
    norm(l, D, p, "input_layernorm");
    if (s->q_lora_rank > 0) {
        linear(l, s->q_lora_rank, D, p, "self_attn.q_a_proj");
        norm(l, s->q_lora_rank, p, "self_attn.q_a_layernorm");
        linear(l, (int64_t)H * qk, s->q_lora_rank, p, "self_attn.q_b_proj");
    } else {
        linear(l, (int64_t)H * qk, D, p, "self_attn.q_proj");
    }
    linear(l, s->kv_lora_rank + s->qk_rope_dim, D, p, "self_attn.kv_a_proj_with_mqa");
    norm(l, s->kv_lora_rank, p, "self_attn.kv_a_layernorm");
    linear(l, (int64_t)H * (s->qk_nope_dim + s->v_head_dim), s->kv_lora_rank, p,
           "self_attn.kv_b_proj");
    linear(l, D, (int64_t)H * s->v_head_dim, p, "self_attn.o_proj");
    norm(l, D, p, "post_attention_layernorm");
    if (idx < s->first_k_dense) {
        linear(l, s->intermediate, D, p, "mlp.gate_proj");
        linear(l, s->intermediate, D, p, "mlp.up_proj");
        linear(l, D, s->intermediate, p, "mlp.down_proj");
        return;
    }
    add(l, K_BF16, s->n_routed_experts, D, 3.0 / sqrt((double)D), "%smlp.gate.weight", p);
    add(l, K_BIAS, s->n_routed_experts, 0, 0.1, "%smlp.gate.e_score_correction_bias", p);
    for (int e = 0; e < s->n_routed_experts; e++) {
        char ep[96];
        snprintf(ep, sizeof(ep), "%smlp.experts.%d.", p, e);
        linear(l, s->moe_intermediate, D, ep, "gate_proj");
        linear(l, s->moe_intermediate, D, ep, "up_proj");
        linear(l, D, s->moe_intermediate, ep, "down_proj");
    }
    const int64_t si = (int64_t)s->n_shared_experts * s->moe_intermediate;
    linear(l, si, D, p, "mlp.shared_experts.gate_proj");
    linear(l, si, D, p, "mlp.shared_experts.up_proj");
    linear(l, D, si, p, "mlp.shared_experts.down_proj");
}

/* Every tensor of the checkpoint, in the order the model reads them. */
static void tensor_list(struct list *l, const struct synth_v3_spec *s, int vocab)
{
    const int D = s->hidden;
    add(l, K_BF16, vocab, D, 1.0, "model.embed_tokens.weight");
    for (int i = 0; i < s->n_layers; i++)
        layer(l, s, i);
    norm(l, D, "model.", "norm");
    add(l, K_BF16, vocab, D, 4.0 / sqrt((double)D), "lm_head.weight");
    /* Multi-token prediction: layer n_layers (+k) holds its own embedding,
     * enorm/hnorm, eh_proj [D][2D], a head and a whole decoder layer. */
    for (int k = 0; k < s->n_mtp_layers; k++) {
        char p[64];
        int idx = s->n_layers + k;
        snprintf(p, sizeof(p), "model.layers.%d.", idx);
        add(l, K_BF16, vocab, D, 1.0, "%sembed_tokens.weight", p);
        norm(l, D, p, "enorm");
        norm(l, D, p, "hnorm");
        add(l, K_BF16, D, 2 * D, 1.0 / sqrt(2.0 * D), "%seh_proj.weight", p);
        norm(l, D, p, "shared_head.norm");
        add(l, K_BF16, vocab, D, 4.0 / sqrt((double)D), "%sshared_head.head.weight", p);
        layer(l, s, idx);
    }
}

/* ---- Values and quantization ----------------------------------------------- */

/* Fill w[0..rows*cols) with the next rows of tensor t's stream. */
/* The magnitude of a linear weight's 128x128 block (rb, cb), in [0.5, 2):
 * without it every block of a uniform random matrix would have nearly the
 * same max|w|, hence the same FP8 scale, and a kernel that applied the wrong
 * block's scale (transposed, off by one) would still pass. Hashed from the
 * tensor's stream seed and the block, not drawn from the stream, so values
 * stay the same however the rows are banded. */
static double block_gain(uint64_t seed, int64_t rb, int64_t cb)
{
    uint64_t h = seed ^ ((uint64_t)rb * 0xd1b54a32d192ed03ull) ^ ((uint64_t)cb * 0x8cb92ba72f3d8dd7ull);
    return 0.5 + 1.5 * (double)(mix(&h) >> 11) / 9007199254740992.0;
}

/* Fill w[0..nr*cols) with rows r0.. of tensor t; st is its stream, at row r0. */
static void gen_rows(const struct v3t *t, uint64_t seed, uint64_t *st, float *w, int64_t r0,
                     int nr, int64_t cols)
{
    for (int r = 0; r < nr; r++)
        for (int64_t c = 0; c < cols; c++) {
            double u = unit(st), v;
            if (t->kind == K_NORM)
                v = 1.0 + t->half_width * u;
            else if (t->kind == K_LINEAR)
                v = t->half_width * u * block_gain(seed, (r0 + r) / 128, c / 128);
            else
                v = t->half_width * u;
            w[r * cols + c] = (float)v;
        }
}

/* One band of up to 128 rows of a [rows][cols] weight: the scale of each
 * 128x128 block (scale = max|w| / 448, 1 for an all-zero block, so zero
 * stays zero) and, when q is given, the e4m3 codes of w / scale. */
static void quant_band(const float *w, int nr, int64_t cols, float *scale, uint8_t *q)
{
    for (int64_t cb = 0; cb < blocks(cols); cb++) {
        int64_t c0 = cb * 128, c1 = c0 + 128 < cols ? c0 + 128 : cols;
        float amax = 0.0f;
        for (int r = 0; r < nr; r++)
            for (int64_t c = c0; c < c1; c++)
                amax = fmaxf(amax, fabsf(w[r * cols + c]));
        float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
        scale[cb] = sc;
        if (q)
            for (int r = 0; r < nr; r++)
                for (int64_t c = c0; c < c1; c++)
                    q[r * cols + c] = dtype_f32_to_e4m3(w[r * cols + c] / sc);
    }
}

struct writer {
    const struct list *l;
    const int *order;       /* st_out position -> tensor index, for this shard */
};

/* Write tensor `pos` of the current shard: generated in bands of 128 rows
 * (one row of scale blocks), so memory stays at 128 rows whatever the size. */
static int fill(void *ctx, size_t pos, FILE *f, size_t nbytes)
{
    const struct writer *wr = ctx;
    const struct v3t *t = &wr->l->t[wr->order[pos]];
    const struct v3t *g = t->kind == K_SCALE ? &wr->l->t[t->src] : t;  /* generated values */
    if ((size_t)numel(t) * elem_size(t) != nbytes)
        return -1;
    const int64_t cols = g->cols ? g->cols : 1, rows = g->rows;   /* a vector is one column */
    const uint64_t seed = stream_for(wr->l->seed, g->name);
    uint64_t st = seed;
    float *w = malloc(sizeof(float) * 128 * (size_t)cols);
    float *sc = malloc(sizeof(float) * (size_t)blocks(cols));
    unsigned char *out = malloc(4 * 128 * (size_t)cols);
    int rc = w && sc && out ? 0 : -1;
    for (int64_t r0 = 0; rc == 0 && r0 < rows; r0 += 128) {
        int nr = (int)(rows - r0 < 128 ? rows - r0 : 128);
        int64_t n = nr * cols;
        gen_rows(g, seed, &st, w, r0, nr, cols);
        size_t len;
        if (t->kind == K_SCALE) {
            quant_band(w, nr, cols, sc, NULL);
            memcpy(out, sc, sizeof(float) * (size_t)blocks(cols));
            len = sizeof(float) * (size_t)blocks(cols);
        } else if (t->fp8) {
            quant_band(w, nr, cols, sc, out);
            len = (size_t)n;
        } else if (!strcmp(dtype_of(t), "BF16")) {
            for (int64_t k = 0; k < n; k++) {
                uint16_t h = dtype_f32_to_bf16(w[k]);
                memcpy(out + 2 * k, &h, 2);
            }
            len = 2 * (size_t)n;
        } else {
            memcpy(out, w, sizeof(float) * (size_t)n);
            len = sizeof(float) * (size_t)n;
        }
        if (fwrite(out, 1, len, f) != len)
            rc = -1;
    }
    free(w);
    free(sc);
    free(out);
    return rc;
}

/* Order inside a shard: wider dtype first, then by name, as the safetensors
 * library writes (and so every tensor starts aligned to its element size). */
static const struct list *sort_list;
static int cmp_shard_order(const void *x, const void *y)
{
    const struct v3t *a = &sort_list->t[*(const int *)x], *b = &sort_list->t[*(const int *)y];
    if (elem_size(a) != elem_size(b))
        return elem_size(a) > elem_size(b) ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* ---- config.json ------------------------------------------------------------- */

/* Integral values as JSON integers, as the real config writes 10000 and 40. */
static json_t *num(double v)
{
    return v == floor(v) && fabs(v) < 1e15 ? json_integer((json_int_t)v) : json_real(v);
}

static json_t *config_json(const struct synth_v3_spec *s, int vocab)
{
    json_t *c = json_object();
    if (!c)
        return NULL;
    json_object_set_new(c, "architectures", json_pack("[s]", "DeepseekV3ForCausalLM"));
    json_object_set_new(c, "attention_bias", json_false());
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "bos_token_id", json_integer(0));
    json_object_set_new(c, "eos_token_id", json_integer(1));
    json_object_set_new(c, "first_k_dense_replace", json_integer(s->first_k_dense));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(s->hidden));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "intermediate_size", json_integer(s->intermediate));
    json_object_set_new(c, "kv_lora_rank", json_integer(s->kv_lora_rank));
    json_object_set_new(c, "max_position_embeddings", json_integer(s->max_pos));
    json_object_set_new(c, "model_type", json_string("deepseek_v3"));
    json_object_set_new(c, "moe_intermediate_size", json_integer(s->moe_intermediate));
    json_object_set_new(c, "moe_layer_freq", json_integer(1));
    json_object_set_new(c, "n_group", json_integer(s->n_group));
    json_object_set_new(c, "n_routed_experts", json_integer(s->n_routed_experts));
    json_object_set_new(c, "n_shared_experts", json_integer(s->n_shared_experts));
    json_object_set_new(c, "norm_topk_prob", json_true());
    json_object_set_new(c, "num_attention_heads", json_integer(s->n_heads));
    json_object_set_new(c, "num_experts_per_tok", json_integer(s->experts_per_tok));
    json_object_set_new(c, "num_hidden_layers", json_integer(s->n_layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(s->n_heads));
    json_object_set_new(c, "num_nextn_predict_layers", json_integer(s->n_mtp_layers));
    json_object_set_new(c, "q_lora_rank",
                        s->q_lora_rank > 0 ? json_integer(s->q_lora_rank) : json_null());
    json_object_set_new(c, "qk_nope_head_dim", json_integer(s->qk_nope_dim));
    json_object_set_new(c, "qk_rope_head_dim", json_integer(s->qk_rope_dim));
    if (s->fp8)
        json_object_set_new(c, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i, i]}", "activation_scheme", "dynamic",
                                      "fmt", "e4m3", "quant_method", "fp8", "weight_block_size",
                                      128, 128));
    json_object_set_new(c, "rms_norm_eps", json_real(s->norm_eps));
    json_t *rs = json_object();
    json_object_set_new(rs, "beta_fast", num(s->yarn_beta_fast));
    json_object_set_new(rs, "beta_slow", num(s->yarn_beta_slow));
    json_object_set_new(rs, "factor", num(s->yarn_factor));
    json_object_set_new(rs, "mscale", json_real(s->yarn_mscale));
    json_object_set_new(rs, "mscale_all_dim", json_real(s->yarn_mscale_all_dim));
    json_object_set_new(rs, "original_max_position_embeddings",
                        json_integer(s->yarn_original_max_pos));
    json_object_set_new(rs, "type", json_string("yarn"));
    json_object_set_new(c, "rope_scaling", rs);
    json_object_set_new(c, "rope_theta", num(s->rope_theta));
    json_object_set_new(c, "routed_scaling_factor", json_real(s->routed_scaling_factor));
    json_object_set_new(c, "scoring_func", json_string("sigmoid"));
    json_object_set_new(c, "tie_word_embeddings", json_false());
    json_object_set_new(c, "topk_group", json_integer(s->topk_group));
    json_object_set_new(c, "topk_method", json_string("noaux_tc"));
    json_object_set_new(c, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "v_head_dim", json_integer(s->v_head_dim));
    json_object_set_new(c, "vocab_size", json_integer(vocab));
    return c;
}

/* ---- The whole checkpoint ---------------------------------------------------- */

static int spec_ok(const struct synth_v3_spec *s)
{
    return s->hidden > 0 && s->intermediate > 0 && s->moe_intermediate > 0 &&
           s->n_layers > 0 && s->first_k_dense >= 0 && s->first_k_dense <= s->n_layers &&
           s->n_heads > 0 && s->q_lora_rank >= 0 && s->kv_lora_rank > 0 &&
           s->qk_nope_dim > 0 && s->qk_rope_dim > 0 && s->qk_rope_dim % 2 == 0 &&
           s->v_head_dim > 0 && s->n_routed_experts > 0 && s->n_shared_experts >= 0 &&
           s->n_group > 0 && s->n_routed_experts % s->n_group == 0 && s->topk_group > 0 &&
           s->topk_group <= s->n_group && s->experts_per_tok > 0 &&
           s->experts_per_tok <= s->topk_group * (s->n_routed_experts / s->n_group) &&
           s->n_mtp_layers >= 0 && s->n_shards >= 1 && s->n_shards <= 99999 &&
           s->yarn_factor >= 1.0 && s->yarn_original_max_pos > 0 && s->max_pos > 0;
}

int synth_v3_write(const struct synth_v3_spec *s, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    struct bpe *v = NULL;
    struct list l = {.fp8 = s->fp8, .seed = s->seed};
    int *order = NULL;
    struct st_out *out = NULL;
    json_t *map = NULL, *cfg = NULL;
    int rc = -1;

    if (!spec_ok(s)) {
        snprintf(err, errlen, "bad DeepSeek-V3 spec (dims must be positive, experts divisible "
                              "into groups, topk_group <= n_group, rope dim even)");
        return -1;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    v = malloc(sizeof(*v));
    if (!v || bpe_train(v) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    const int vocab = vocab_total(v);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    if (write_tokenizer_json(v, path) != 0)
        goto fail_write;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (write_tokenizer_config(path) != 0)
        goto fail_write;

    tensor_list(&l, s, vocab);
    order = calloc((size_t)l.n + 1, sizeof(*order));
    out = calloc((size_t)l.n + 1, sizeof(*out));
    map = json_object();
    if (l.oom || !order || !out || !map) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Shards by count, in model order (a weight and its scale usually land
     * together, but the index maps each on its own, as HF's does). */
    uint64_t total = 0;
    for (int i = 0; i < l.n; i++) {
        l.t[i].shard = (int)((int64_t)i * s->n_shards / l.n);
        total += (uint64_t)numel(&l.t[i]) * elem_size(&l.t[i]);
    }
    for (int sh = 0; sh < s->n_shards; sh++) {
        int m = 0;
        for (int i = 0; i < l.n; i++)
            if (l.t[i].shard == sh)
                order[m++] = i;
        sort_list = &l;
        qsort(order, (size_t)m, sizeof(*order), cmp_shard_order);
        for (int k = 0; k < m; k++) {
            const struct v3t *t = &l.t[order[k]];
            out[k] = (struct st_out){t->name, dtype_of(t), t->cols ? 2 : 1, {t->rows, t->cols},
                                     NULL};
        }
        char file[64];
        if (s->n_shards == 1)
            snprintf(file, sizeof(file), "model.safetensors");
        else
            snprintf(file, sizeof(file), "model-%05d-of-%05d.safetensors", sh + 1, s->n_shards);
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        struct writer wr = {&l, order};
        if (safetensors_write(path, out, (size_t)m, fill, &wr, err, errlen) != 0)
            goto fail;
        for (int k = 0; k < m; k++)
            json_object_set_new(map, l.t[order[k]].name, json_string(file));
    }
    if (s->n_shards > 1) {
        json_t *idx = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)total,
                                "weight_map", map);
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        int wrc = idx ? json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS) : -1;
        json_decref(idx);
        if (wrc != 0)
            goto fail_write;
    }
    cfg = config_json(s, vocab);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (!cfg || json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                              JSON_REAL_PRECISION(15)) != 0)
        goto fail_write;
    rc = 0;
    goto done;
fail_write:
    snprintf(err, errlen, "cannot write %s", path);
fail:
done:
    json_decref(cfg);
    json_decref(map);
    free(out);
    free(order);
    free(l.t);
    free(v);
    return rc;
}
