/* reply.c: JSON and OpenAI-error replies of the gateway's own endpoints. See reply.h. */
#include "gateway/reply.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/httpd.h"
#include "policies/policy.h"

void reply_json(struct httpd_req *r, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    /* json_dumps fails only on out-of-memory; an empty object still answers. */
    httpd_reply(r, status, "application/json", s ? s : "{}", s ? strlen(s) : 2);
    free(s);
    json_decref(o);
}

int reply_error(struct httpd_req *r, int status, const char *type, const char *code, const char *msg)
{
    httpd_resp_header(r, "x-cascade-tier", "none");
    httpd_reply_error(r, status, type, code, NULL, msg);
    return status;
}

void reply_admit_headers(struct httpd_req *r, const struct admit_result *res)
{
    char v[32];
    if (res->limit_requests > 0) {
        snprintf(v, sizeof v, "%" PRId64, res->limit_requests);
        httpd_resp_header(r, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%" PRId64, res->remaining_requests);
        httpd_resp_header(r, "x-ratelimit-remaining-requests", v);
        snprintf(v, sizeof v, "%.3fs", (double)res->reset_requests_ms / 1000.0);
        httpd_resp_header(r, "x-ratelimit-reset-requests", v);
    }
    if (res->limit_tokens > 0) {
        snprintf(v, sizeof v, "%" PRId64, res->limit_tokens);
        httpd_resp_header(r, "x-ratelimit-limit-tokens", v);
        snprintf(v, sizeof v, "%" PRId64, res->remaining_tokens);
        httpd_resp_header(r, "x-ratelimit-remaining-tokens", v);
        snprintf(v, sizeof v, "%.3fs", (double)res->reset_tokens_ms / 1000.0);
        httpd_resp_header(r, "x-ratelimit-reset-tokens", v);
    }
    if (res->status == ADMIT_OK || res->status == ADMIT_DOWNGRADED)
        return;
    snprintf(v, sizeof v, "%" PRId64, res->retry_after_s);
    httpd_resp_header(r, "Retry-After", v);
    if (res->status == ADMIT_BUDGET)
        httpd_resp_header(r, "x-should-retry", "false");
}

void reply_admit_error(const struct admit_result *res, const char **type, const char **code, const char **msg)
{
    *type = "rate_limit_exceeded";
    *code = "rate_limit_exceeded";
    switch (res->status) {
    case ADMIT_LIMIT_REQUESTS:
        *msg = "Rate limit reached for requests per minute";
        return;
    case ADMIT_LIMIT_TOKENS:
        *msg = "Rate limit reached for tokens per minute";
        return;
    case ADMIT_LIMIT_CONCURRENCY:
        *code = "concurrency_limit_exceeded";
        *msg = "Too many concurrent requests for this tenant";
        return;
    default:
        *type = "insufficient_quota";
        *code = "budget_exceeded";
        *msg = "The tenant's budget is exhausted";
        return;
    }
}
