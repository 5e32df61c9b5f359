/* prompt.c: chat formatting and tokenizer discovery; see prompt.h. */
#include "engines/native/runtime/prompt.h"

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer_bpe.h"
#include "tokenizer/tokenizer_llama2c.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "add_bos_token" of the tokenizer_config.json beside a tokenizer.json:
 * whether a raw prompt starts with BOS. Absent (no file, no key) it is true,
 * the default of Hugging Face's LlamaTokenizerFast that DeepSeek's configs
 * name. */
static int config_add_bos(const char *tok_path)
{
    const char *slash = strrchr(tok_path, '/');
    char cfg[4096];
    snprintf(cfg, sizeof(cfg), "%.*stokenizer_config.json", slash ? (int)(slash - tok_path + 1) : 0,
             tok_path);
    json_t *root = json_load_file(cfg, 0, NULL);
    int add = !json_is_false(json_object_get(root, "add_bos_token"));
    json_decref(root);
    return add;
}

/* The file type picks the tokenizer and with it the chat format: a
 * tokenizer.json means a DeepSeek model, a tokenizer.bin a stories model. A
 * tokenizer with more ids than the model has rows would index past the
 * embedding, so that mismatch is refused here. */
static int load_path(const struct native_model *m, const char *path, struct tokenizer **out,
                     enum prompt_style *style, char *err, size_t errlen)
{
    int rc;
    if (ends_with(path, ".json")) {
        rc = tok_bpe_load(path, out, err, errlen);
        /* The DeepSeek template needs its role markers; a tokenizer.json
         * without them (another model family) gets plain prompts. */
        *style = rc == TOK_OK && (*out)->ops->lookup(*out, "<\xef\xbd\x9c" "User\xef\xbd\x9c>") >= 0 &&
                         (*out)->ops->lookup(*out, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>") >= 0
                     ? PROMPT_DEEPSEEK
                     : PROMPT_PLAIN;
        if (rc == TOK_OK && !config_add_bos(path))
            *style |= PROMPT_NO_BOS;
    } else {
        rc = tok_llama2c_load(path, m->cfg.vocab_size, out, err, errlen);
        *style = PROMPT_PLAIN;
    }
    if (rc != TOK_OK)
        return -1;
    if ((*out)->vocab_size > m->cfg.vocab_size) {
        snprintf(err, errlen, "%s: %d tokens, but the model's vocabulary has %d", path,
                 (*out)->vocab_size, m->cfg.vocab_size);
        tokenizer_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

int prompt_tokenizer_load(const struct native_model *m, const char *path, struct tokenizer **out,
                          enum prompt_style *style, char *err, size_t errlen)
{
    *out = NULL;
    if (path)
        return load_path(m, path, out, style, err, errlen);

    char cand[3][4096];
    snprintf(cand[0], sizeof(cand[0]), "%s/tokenizer.json", m->dir);
    snprintf(cand[1], sizeof(cand[1]), "%s/tokenizer.bin", m->dir);
    snprintf(cand[2], sizeof(cand[2]), "%s/tok%d.bin", m->dir, m->cfg.vocab_size);
    for (int i = 0; i < 3; i++)
        if (is_file(cand[i]))
            return load_path(m, cand[i], out, style, err, errlen);
    snprintf(err, errlen, "no tokenizer for %s: none of tokenizer.json, tokenizer.bin, tok%d.bin in %s",
             m->path, m->cfg.vocab_size, m->dir);
    return -1;
}

/* The template's role names; OpenAI's "developer" is a system turn. */
static const char *role_name(enum chat_role r)
{
    switch (r) {
    case ROLE_SYSTEM:
    case ROLE_DEVELOPER:
        return "system";
    case ROLE_USER:
        return "user";
    case ROLE_ASSISTANT:
        return "assistant";
    default:
        return "tool";
    }
}

int prompt_encode_chat(const struct tokenizer *t, enum prompt_style style,
                       const struct chat_message *msgs, size_t n, struct tok_ids *out)
{
    if (!(style & PROMPT_DEEPSEEK)) {
        /* No template: the last user message is the prompt (the model's
         * README); an empty one is BOS alone, the reference's prompt. */
        const char *text = "";
        size_t len = 0;
        for (size_t i = 0; i < n; i++) {
            if (msgs[i].role == ROLE_USER) {
                text = msgs[i].content ? msgs[i].content : "";
                len = msgs[i].content ? msgs[i].content_len : 0;
            }
        }
        return prompt_encode_text(t, style, text, len, out);
    }

    struct chat_turn *turns = malloc(sizeof(*turns) * (n ? n : 1));
    if (!turns)
        return TOK_ENOMEM;
    for (size_t i = 0; i < n; i++)
        turns[i] = (struct chat_turn){role_name(msgs[i].role), msgs[i].content, msgs[i].content_len};
    int rc = chat_template_encode(t, turns, n, 1, TOK_ADDED_AS_TEXT, out);
    free(turns);
    return rc;
}

/* Both styles start a raw prompt with BOS, as both model families were
 * trained on documents that begin with it -- unless the tokenizer's config
 * says otherwise (add_bos_token false). */
int prompt_encode_text(const struct tokenizer *t, enum prompt_style style, const char *text,
                       size_t len, struct tok_ids *out)
{
    if (!(style & PROMPT_NO_BOS) && t->bos_id >= 0 && tok_ids_push(out, t->bos_id) != TOK_OK)
        return TOK_ENOMEM;
    return tokenizer_encode(t, text, len, 0, out);
}
