/* chat_template.c: the DeepSeek-V3 chat template (see chat_template.h).
 *
 * One walk over the conversation drives two sinks: a text sink that builds
 * the rendered string, and an id sink that pushes marker ids and encodes the
 * text between markers. Text between two markers is gathered first and
 * encoded as one piece, because the reference splits the rendered string at
 * markers and nowhere else ("content" then "\n" before a later tool turn
 * are one piece). */
#include "tokenizer/chat_template.h"

#include <stdlib.h>
#include <string.h>

enum marker {
    M_BOS,
    M_EOS,
    M_USER,
    M_ASSISTANT,
    M_OUTPUTS_BEGIN,
    M_OUTPUTS_END,
    M_OUTPUT_BEGIN,
    M_OUTPUT_END,
    M_COUNT
};

/* The markers as the template writes them; their ids are looked up in the
 * tokenizer at encode time, so the template works with any tokenizer that
 * has DeepSeek-V3's added tokens and refuses one that lacks them. */
static const char *const marker_text[M_COUNT] = {
    [M_BOS] = "<｜begin▁of▁sentence｜>",
    [M_EOS] = "<｜end▁of▁sentence｜>",
    [M_USER] = "<｜User｜>",
    [M_ASSISTANT] = "<｜Assistant｜>",
    [M_OUTPUTS_BEGIN] = "<｜tool▁outputs▁begin｜>",
    [M_OUTPUTS_END] = "<｜tool▁outputs▁end｜>",
    [M_OUTPUT_BEGIN] = "<｜tool▁output▁begin｜>",
    [M_OUTPUT_END] = "<｜tool▁output▁end｜>",
};

/* A growable byte string: the rendered text, or the pending text between
 * two markers. */
struct text {
    char *p;
    size_t n, cap;
};

static int text_add(struct text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n + 1)
            cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np)
            return TOK_ENOMEM;
        t->p = np;
        t->cap = cap;
    }
    if (n)
        memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = '\0';
    return TOK_OK;
}

/* Where the walk's output goes. With tok set, ids are produced: text waits
 * in pending until the next marker (or the end) encodes it. Without tok,
 * everything is appended to pending as text. */
struct sink {
    const struct tokenizer *tok;
    unsigned flags;
    struct tok_ids *ids;
    int32_t marker_id[M_COUNT];
    struct text pending;
};

/* Encode the pending text as one piece (see the file comment for why it
 * waits). In text mode there is nothing to flush: pending is the output. */
static int sink_flush(struct sink *s)
{
    if (!s->tok || s->pending.n == 0)
        return TOK_OK;
    int rc = tokenizer_encode(s->tok, s->pending.p, s->pending.n, s->flags, s->ids);
    s->pending.n = 0;
    return rc;
}

static int emit_text(struct sink *s, const char *p, size_t n)
{
    return text_add(&s->pending, p, n);
}

static int emit_marker(struct sink *s, enum marker m)
{
    if (!s->tok)
        return text_add(&s->pending, marker_text[m], strlen(marker_text[m]));
    int rc = sink_flush(s);
    if (rc < 0)
        return rc;
    return tok_ids_push(s->ids, s->marker_id[m]);
}

static int role_is(const struct chat_turn *t, const char *name)
{
    return t->role && strcmp(t->role, name) == 0;
}

/* The template, in the order of its Jinja source. is_tool and
 * is_output_first are the template's namespace variables of the same names;
 * is_output_first is never reset, which is why only the first tool turn of
 * a conversation opens with <｜tool▁outputs▁begin｜>. Roles are checked
 * before anything is emitted, so a refused conversation emits nothing. */
static int walk(struct sink *s, const struct chat_turn *turns, size_t n, int add_generation_prompt)
{
    int rc, is_tool = 0, is_output_first = 1;

    for (size_t i = 0; i < n; i++)
        if (!role_is(&turns[i], "system") && !role_is(&turns[i], "user") &&
            !role_is(&turns[i], "assistant") && !role_is(&turns[i], "tool"))
            return TOK_EINVAL;

    if ((rc = emit_marker(s, M_BOS)) < 0)
        return rc;
    /* The system prompt comes first, whatever the position of its turns. */
    int first_sp = 1;
    for (size_t i = 0; i < n; i++) {
        if (!role_is(&turns[i], "system"))
            continue;
        if (!first_sp && (rc = emit_text(s, "\n\n", 2)) < 0)
            return rc;
        if (turns[i].content && (rc = emit_text(s, turns[i].content, turns[i].len)) < 0)
            return rc;
        first_sp = 0;
    }
    for (size_t i = 0; i < n && rc >= 0; i++) {
        const struct chat_turn *t = &turns[i];
        if (role_is(t, "user")) {
            is_tool = 0;
            if ((rc = emit_marker(s, M_USER)) >= 0 && t->content)
                rc = emit_text(s, t->content, t->len);
        } else if (role_is(t, "assistant") && !t->content) {
            /* Only tool calls, which are not plain text: nothing to show. */
            is_tool = 0;
        } else if (role_is(t, "assistant")) {
            rc = emit_marker(s, is_tool ? M_OUTPUTS_END : M_ASSISTANT);
            if (rc >= 0)
                rc = emit_text(s, t->content, t->len);
            if (rc >= 0)
                rc = emit_marker(s, M_EOS);
            is_tool = 0;
        } else if (role_is(t, "tool")) {
            is_tool = 1;
            if (is_output_first) {
                rc = emit_marker(s, M_OUTPUTS_BEGIN);
                is_output_first = 0;
            } else {
                rc = emit_text(s, "\n", 1);
            }
            if (rc >= 0)
                rc = emit_marker(s, M_OUTPUT_BEGIN);
            if (rc >= 0 && t->content)
                rc = emit_text(s, t->content, t->len);
            if (rc >= 0)
                rc = emit_marker(s, M_OUTPUT_END);
        }
    }
    if (rc >= 0 && is_tool)
        rc = emit_marker(s, M_OUTPUTS_END);
    if (rc >= 0 && add_generation_prompt && !is_tool)
        rc = emit_marker(s, M_ASSISTANT);
    if (rc >= 0)
        rc = sink_flush(s);
    return rc;
}

int chat_template_encode(const struct tokenizer *t, const struct chat_turn *turns, size_t n,
                         int add_generation_prompt, unsigned flags, struct tok_ids *out)
{
    struct sink s = { .tok = t, .flags = flags, .ids = out };
    for (int m = 0; m < M_COUNT; m++) {
        s.marker_id[m] = tokenizer_lookup(t, marker_text[m]);
        if (s.marker_id[m] < 0)
            return TOK_EINVAL;
    }
    int rc = walk(&s, turns, n, add_generation_prompt);
    free(s.pending.p);
    return rc;
}

/* Counting encodes and throws the ids away: the count must be exactly the
 * length the engine will see, and encoding is fast enough (tens of MB/s)
 * that a separate counting path would only be a second thing to get right. */
int chat_template_count(const struct tokenizer *t, const struct chat_turn *turns, size_t n,
                        int add_generation_prompt, unsigned flags, size_t *count)
{
    struct tok_ids ids = { 0 };
    int rc = chat_template_encode(t, turns, n, add_generation_prompt, flags, &ids);
    *count = rc < 0 ? 0 : ids.n;
    tok_ids_free(&ids);
    return rc;
}

int chat_template_render(const struct chat_turn *turns, size_t n, int add_generation_prompt,
                         char **out, size_t *len)
{
    struct sink s = { 0 };
    int rc = walk(&s, turns, n, add_generation_prompt);
    if (rc >= 0 && !s.pending.p)
        rc = text_add(&s.pending, "", 0);
    if (rc < 0) {
        free(s.pending.p);
        *out = NULL;
        *len = 0;
        return rc;
    }
    *out = s.pending.p;
    *len = s.pending.n;
    return TOK_OK;
}
