/* chat.h: POST /v1/chat/completions, the request state machine.
 *
 *   parse -> pick tier -> engine_submit -> on_token* -> on_done | on_error
 *
 * Non-streaming answers are assembled and sent whole; streaming answers go
 * out as SSE chunks as tokens arrive. The stream's HTTP status is committed
 * only at the first token, so a request that fails before producing anything
 * still gets a proper error status. A client that disconnects cancels the
 * engine request. Runs on the worker thread that accepted the request. */
#ifndef CASCADE_CHAT_H
#define CASCADE_CHAT_H

#include <stdint.h>

struct worker;
struct httpd_req;
struct tenant_config;
struct config_snap;

/* Takes over r: answers it, now or later, and the reference to snap (which
 * tenant points into). request_id is copied. */
void chat_handle(struct worker *w, struct httpd_req *r, struct config_snap *snap, const struct tenant_config *tenant,
                 const char *request_id, uint64_t t0);

#endif
