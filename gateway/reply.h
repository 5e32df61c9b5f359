/* reply.h: the reply shapes the gateway's own endpoints share.
 *
 * The route table, the admin API and the public endpoints answer with JSON
 * bodies and, on failure, OpenAI's error object. An answer that no tier
 * produced says so with x-cascade-tier: none, so a client (and the access
 * log) can tell a gateway refusal from a model's answer. The chat state
 * machine writes its own replies, with the tier that served it.
 *
 * Any worker thread may call these on a request it owns; each one answers
 * the request, which frees it (see common/httpd.h).
 */
#ifndef CASCADE_REPLY_H
#define CASCADE_REPLY_H

#include <jansson.h>

struct httpd_req;
struct admit_result;

/* Send o as the body (compact, key order kept) and drop the reference to o. */
void reply_json(struct httpd_req *r, int status, json_t *o);
/* An OpenAI error with x-cascade-tier: none; returns status, for the access log. */
int reply_error(struct httpd_req *r, int status, const char *type, const char *code, const char *msg);

/* What admission (policies/policy.h) said, in the headers every endpoint
 * that admits through the policy sends, before its reply: OpenAI's
 * x-ratelimit-* for the limits the tenant has; for a refusal, Retry-After
 * as the real wait (for a budget, until its window resets: a short guess
 * only makes SDKs retry into the same refusal) and, for a budget,
 * x-should-retry: false, since no retry can pass before then. */
void reply_admit_headers(struct httpd_req *r, const struct admit_result *res);
/* The 429 error a refused admission answers with: its type, code and
 * message (static strings). res->status must not be ADMIT_OK or
 * ADMIT_DOWNGRADED. */
void reply_admit_error(const struct admit_result *res, const char **type, const char **code, const char **msg);

#endif
