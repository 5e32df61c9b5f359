/* reply.c: JSON and OpenAI-error replies of the gateway's own endpoints. See reply.h. */
#include "gateway/reply.h"

#include <stdlib.h>
#include <string.h>

#include "common/httpd.h"

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
