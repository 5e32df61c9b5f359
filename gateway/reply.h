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

/* Send o as the body (compact, key order kept) and drop the reference to o. */
void reply_json(struct httpd_req *r, int status, json_t *o);
/* An OpenAI error with x-cascade-tier: none; returns status, for the access log. */
int reply_error(struct httpd_req *r, int status, const char *type, const char *code, const char *msg);

#endif
