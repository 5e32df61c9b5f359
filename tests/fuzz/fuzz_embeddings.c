/* fuzz_embeddings: the /v1/embeddings request parser (common/embeddings.c)
 * on arbitrary request bodies, and the same bytes as an upstream's answer
 * (embeddings_answer_relay).
 *
 * Beyond memory errors it checks what the gateway relies on when it counts
 * and reserves: an accepted request has a model, 1..EMBEDDINGS_MAX_INPUTS
 * inputs all of one kind, each text NUL-terminated at its length, non-empty
 * and valid UTF-8, each token input non-empty, and the totals (text_bytes,
 * n_ids) equal to the sums over the inputs and to what the body's `input`
 * holds; dimensions 0 or in range. A refused one carries status 400 and an
 * error JSON that is valid JSON and carries the parser's own message.
 * A relayed answer parses to exactly the upstream's object with model set
 * (nothing else changed, no duplicate key); an answer refused is one that
 * is not an object with a data array and a usage object. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/embeddings.h"
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
    if (!json_is_object(eo) || strcmp(json_string_value(json_object_get(eo, "message")), err->message) != 0)
        abort();
    json_decref(back);
    free(js);
}

/* The ids the body's `input` holds, counted again from the JSON. */
static size_t ids_in_body(json_t *input)
{
    json_t *first = json_array_get(input, 0);
    if (json_is_integer(first))
        return json_array_size(input);
    size_t n = 0, i;
    json_t *v;
    json_array_foreach(input, i, v)
        n += json_array_size(v);
    return n;
}

static void check_request(const struct embeddings_request *req)
{
    if (!json_is_object(req->root) || !req->model || !req->model[0])
        abort();
    if (req->n_inputs == 0 || req->n_inputs > EMBEDDINGS_MAX_INPUTS || !req->inputs)
        abort();
    if (req->dimensions < 0 || req->dimensions > EMBEDDINGS_MAX_DIMENSIONS)
        abort();
    if (req->encoding != EMBEDDINGS_FLOAT && req->encoding != EMBEDDINGS_BASE64)
        abort();
    size_t bytes = 0, ids = 0;
    for (size_t i = 0; i < req->n_inputs; i++) {
        const struct embeddings_input *in = &req->inputs[i];
        if (req->token_input) {
            if (in->text || in->n_ids == 0)
                abort();
            ids += in->n_ids;
        } else {
            if (!in->text || in->len == 0 || in->text[in->len] != '\0' || !utf8_valid(in->text, in->len))
                abort();
            bytes += in->len;
        }
    }
    if (bytes != req->text_bytes || ids != req->n_ids)
        abort();
    if (req->token_input && ids_in_body(json_object_get(req->root, "input")) != ids)
        abort();
}

/* The model id has bytes that need escaping, so a splice that forgets to
 * escape it breaks the output. */
static const char relay_model[] = "org/m\"odel\\\xc3\xa9";

static void check_relay(const char *body, size_t size)
{
    size_t n = 0;
    int64_t pt = -1;
    char *out = embeddings_answer_relay(body, size, relay_model, &n, &pt);
    if (pt < 0 || (!out && pt != 0))
        abort();
    json_t *up = json_loadb(body, size, JSON_REJECT_DUPLICATES, NULL);
    int shape = !memchr(body, '\0', size) && json_is_object(up) && json_is_array(json_object_get(up, "data")) &&
                json_is_object(json_object_get(up, "usage"));
    if (!out != !shape)
        abort();
    if (out) {
        if (strlen(out) != n)
            abort();
        json_t *got = json_loadb(out, n, JSON_REJECT_DUPLICATES, NULL);
        json_object_set_new(up, "model", json_string(relay_model));
        if (!got || !json_equal(got, up))
            abort();
        json_decref(got);
    }
    free(out);
    json_decref(up);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_relay((const char *)data, size);

    struct embeddings_request req;
    struct openai_error err;
    memset(&err, 0, sizeof err);
    if (embeddings_request_parse((const char *)data, size, &req, &err) == 0) {
        check_request(&req);
    } else {
        check_error(&err);
        if (req.root || req.inputs)
            abort(); /* a refusal leaves nothing behind */
    }
    embeddings_request_free(&req);
    return 0;
}
