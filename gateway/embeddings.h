/* embeddings.h: POST /v1/embeddings.
 *
 *   parse -> tier -> count -> admit (policy) -> engine (remote tier) -> reply
 *                                                  └ retryable failure -> the tier's fallback
 *
 * A request names its tier in `model` (a tier's name or model id, as for
 * chat); the tier must be allowed for the key's tenant and serve embeddings
 * (tiers[].endpoints). "auto" is refused: the router picks among chat
 * models, and two embedding models do not give comparable vectors, so a
 * client must choose one. There is no cache and no cascade. The prompt is
 * counted for the budget reservation (the gateway's tokenizer when loaded,
 * else a deliberately high estimate from the bytes; token-id inputs count
 * their ids), the engine posts the body upstream as sent (model replaced by
 * the tier's model id, engines/engine.h ENGINE_EP_EMBEDDINGS), and the
 * upstream's whole answer goes back to the client with `model` set to the
 * tier's model id. The request is charged the upstream's prompt tokens at
 * the tier's input price (our estimate when it reports none), never more
 * than it reserved, and recorded in the fleet stats, the metrics and the
 * access log as a chat request is, under path /v1/embeddings.
 *
 * Failures: bad input gets OpenAI's 400 naming the param; an upstream that
 * failed before answering (engine_error.retryable) hands the request to the
 * tier's fallback when that tier serves embeddings and the tenant allows it
 * (each tier once), else the engine's error goes back (502/503/504); an
 * answer that is not an embeddings list is a 502. Nothing is charged for an
 * answer the client did not get.
 *
 * Like chat_handle, it runs on the worker thread that accepted the request
 * and sees the gateway only through struct chat_services, which must
 * outlive the request.
 */
#ifndef CASCADE_GATEWAY_EMBEDDINGS_H
#define CASCADE_GATEWAY_EMBEDDINGS_H

#include <stdint.h>

#include "gateway/chat.h"

struct httpd_req;
struct config_snap;
struct tenant_config;

/* Takes over r: answers it, now or later, and the reference to snap (which
 * tenant and key_id point into). request_id is copied. Counts itself in the
 * in-flight gauge for its whole life. */
void embeddings_handle(const struct chat_services *svc, struct httpd_req *r, struct config_snap *snap,
                       const struct tenant_config *tenant, const char *key_id, const char *request_id, uint64_t t0);

#endif
