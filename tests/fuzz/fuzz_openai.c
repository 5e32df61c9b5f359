/* fuzz_openai: the OpenAI request parsers (common/openai.c chat, and
 * common/completions.c legacy completions, which reuses the chat schema) on
 * arbitrary request bodies.
 *
 * Beyond memory errors it checks what the callers rely on: an accepted
 * request has at least one message, each content NUL-terminated at its length
 * and valid UTF-8, at most 4 stop strings, max_tokens -1 or positive; a
 * refused one carries status 400 and an error JSON that is itself valid
 * JSON and carries the parser's message (not the fallback for a message
 * that is not UTF-8). */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/completions.h"
#include "common/openai.h"
#include "common/utf8.h"

static void check_error(const struct openai_error *err)
{
    if (err->status != 400)
        abort();
    char *js = openai_error_json(err);
    if (!js)
        abort();
    json_t *back = json_loads(js, 0, NULL);
    json_t *eo = json_object_get(back, "error");
    /* The error says what the parser said: its message is valid UTF-8, not
     * replaced by the writer's fallback. */
    if (!json_is_object(eo) ||
        strcmp(json_string_value(json_object_get(eo, "message")), err->message) != 0)
        abort();
    json_decref(back);
    free(js);
}

static void check_chat(const struct chat_request *req)
{
    if (!req->root || !req->model || req->n_messages == 0 || req->n_stop > 4)
        abort();
    if (!(req->max_tokens == -1 || req->max_tokens > 0))
        abort();
    for (size_t i = 0; i < req->n_messages; i++) {
        const struct chat_message *m = &req->messages[i];
        if (m->content[m->content_len] != '\0' || !utf8_valid(m->content, m->content_len))
            abort();
        (void)chat_role_name(m->role);
    }
    for (size_t i = 0; i < req->n_stop; i++)
        if (!req->stop[i] || !req->stop[i][0])
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct chat_request req;
    struct openai_error err;
    memset(&err, 0, sizeof err);
    if (chat_request_parse((const char *)data, size, &req, &err) == 0)
        check_chat(&req);
    else
        check_error(&err);
    chat_request_free(&req);

    struct completion_request creq;
    memset(&err, 0, sizeof err);
    if (completion_request_parse((const char *)data, size, &creq, &err) == 0) {
        check_chat(&creq.chat);
        if (!creq.prompt || creq.prompt[creq.prompt_len] != '\0' ||
            !utf8_valid(creq.prompt, creq.prompt_len) || creq.logprobs < -1 ||
            creq.logprobs > COMPLETIONS_MAX_LOGPROBS)
            abort();
    } else {
        check_error(&err);
    }
    completion_request_free(&creq);
    return 0;
}
