/* remote.c: see remote.h for the contract.
 *
 * The upstream HTTP client is libevent's evhttp client: one evhttp_connection
 * is one TCP connection that carries one request at a time, so a pool is a
 * stack of idle connections. State shared by all workers (replica health and
 * outstanding counts) is atomic; everything else lives in a per-worker
 * `struct remote_local` touched only by that worker's thread.
 */
#include "engines/remote/remote.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/cfgjson.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "common/sse.h"
#include "common/workpool.h"
#include "engines/engine.h"

#define MAX_LOCALS 256
#define MAX_REPLICAS 64
#define DOWN_BACKOFF_US 1000000u    /* after a connection failure, prefer others this long */
#define ERRBODY_MAX 8192            /* bytes of an upstream error body we keep */
/* Requests whose messages hold more text than this are serialized for the
 * upstream on the work pool: json_dumps of 10 MB takes longer than its
 * parse did, and on the worker's loop it would stall every other request. */
#define OFFLOAD_BODY_BYTES (64u << 10)

struct replica {
    char *url;
    char host[256];
    int port;
    char chat_path[512];            /* prefix + /chat/completions */
    char health_path[512];
    atomic_int outstanding;         /* requests in flight, all workers */
    atomic_int healthy;             /* last probe answered 2xx */
    atomic_int probed;              /* at least one probe finished */
    _Atomic uint64_t down_until_us; /* passive: a connection failed recently */
};

struct pool {
    struct evhttp_connection **idle;
    size_t n;
};

struct rreq;

struct remote_local {
    struct remote *r;
    struct event_base *base;
    size_t index;
    struct pool *pools;             /* one per replica */
    struct rreq *active;            /* for cancel by id */
};

struct remote {
    struct engine base;
    struct remote_config cfg;
    struct replica *replicas;
    size_t n;
    pthread_mutex_t mu;             /* guards adding a local */
    struct remote_local *locals[MAX_LOCALS];
    atomic_size_t n_locals;
    atomic_uint rr;
    atomic_uint_fast64_t next_seq;
    pthread_t prober;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    int stop;
    remote_error_hook error_hook;
    void *error_ctx;
    size_t replica_base;
    struct workpool *pool;          /* for serializing large bodies; may be NULL */
};

struct rreq {
    struct remote_local *L;
    struct rreq *prev, *next;
    uint64_t id;
    struct engine_callbacks cb;
    void *ctx;
    char *body;
    size_t body_len;
    int stream;
    char request_id[80];
    uint8_t tried[MAX_REPLICAS];
    int replica;                    /* index being tried, or -1 */
    struct evhttp_connection *conn;
    struct evhttp_request *req;     /* NULL once libevent is done with it */
    struct event *timer;            /* total timeout */
    struct sse_parser *sse;
    struct evbuffer *errbody;       /* a non-2xx streamed body, kept for its message */
    int got_headers;
    int status;
    int error_kind;                 /* enum evhttp_request_error, or -1 */
    int ended;                      /* the caller has been told (or cancelled) */
    int in_chunk_cb;
    int cancel_pending;             /* cancelled inside chunk_cb; a deferred call finishes it */
    int paused;                     /* reading stopped for a slow client (remote_pause) */
    int64_t max_tokens;             /* the request's output bound; 0: none */
    int64_t content_events;         /* stream events that carried content */
    /* a large body being serialized on the work pool (building set): the
     * job owns these until build_done; a cancel or timeout meanwhile only
     * marks the request ended, and build_done frees it */
    int building;
    json_t *build_root;             /* a reference to the caller's request */
    char *build_model;
    struct engine_usage usage;
    char finish_reason[32];
    int saw_done;
    int stream_error;               /* an error event arrived in the stream */
    char stream_error_msg[256];
};

/* ---- configuration ----------------------------------------------------- */

int remote_config_parse(json_t *j, const char *path, struct remote_config *cfg, char *err, size_t errlen)
{
    static const char *const keys[] = {"kind", "urls", "timeout_ms", "chunk_timeout_ms",
                                       "health_interval_ms", "health_path", "api_key",
                                       "max_response_bytes", "max_idle_per_replica", NULL};
    char p[256];
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = 120000;
    cfg->chunk_timeout_ms = 30000;
    cfg->health_interval_ms = 2000;
    cfg->max_response_bytes = 8u << 20;
    cfg->max_idle_per_replica = 64;
    if (cfgj_known_keys(j, path, keys, err, errlen) < 0)
        return -1;
    json_t *urls;
    if (cfgj_array(j, path, "urls", 1, &urls, err, errlen) < 0)
        return -1;
    cfgj_path(p, sizeof p, path, "urls");
    if (json_array_size(urls) == 0)
        return cfgj_fail(err, errlen, p, "must list at least one replica URL");
    if (json_array_size(urls) > MAX_REPLICAS)
        return cfgj_fail(err, errlen, p, "at most %d replicas", MAX_REPLICAS);
    cfg->urls = xcalloc(json_array_size(urls), sizeof *cfg->urls);
    size_t i;
    json_t *u;
    json_array_foreach(urls, i, u) {
        char up[280];
        cfgj_path_index(up, sizeof up, p, i);
        if (!json_is_string(u))
            return cfgj_fail(err, errlen, up, "must be a string");
        struct evhttp_uri *uri = evhttp_uri_parse(json_string_value(u));
        int ok = uri && evhttp_uri_get_scheme(uri) && strcmp(evhttp_uri_get_scheme(uri), "http") == 0 &&
                 evhttp_uri_get_host(uri) && *evhttp_uri_get_host(uri);
        if (uri)
            evhttp_uri_free(uri);
        if (!ok)
            return cfgj_fail(err, errlen, up, "not an http://host[:port][/prefix] URL");
        cfg->urls[cfg->n_urls++] = xstrdup(json_string_value(u));
    }
    unsigned long long v;
    v = cfg->timeout_ms;
    if (cfgj_uint(j, path, "timeout_ms", 1, 86400000, &v, err, errlen) < 0)
        return -1;
    cfg->timeout_ms = (unsigned)v;
    v = cfg->chunk_timeout_ms;
    if (cfgj_uint(j, path, "chunk_timeout_ms", 1, 86400000, &v, err, errlen) < 0)
        return -1;
    cfg->chunk_timeout_ms = (unsigned)v;
    v = cfg->health_interval_ms;
    if (cfgj_uint(j, path, "health_interval_ms", 50, 3600000, &v, err, errlen) < 0)
        return -1;
    cfg->health_interval_ms = (unsigned)v;
    v = cfg->max_response_bytes;
    if (cfgj_uint(j, path, "max_response_bytes", 1024, 1ull << 30, &v, err, errlen) < 0)
        return -1;
    cfg->max_response_bytes = (size_t)v;
    v = cfg->max_idle_per_replica;
    if (cfgj_uint(j, path, "max_idle_per_replica", 0, 100000, &v, err, errlen) < 0)
        return -1;
    cfg->max_idle_per_replica = (unsigned)v;
    const char *s = "/v1/models";
    if (cfgj_string(j, path, "health_path", 0, &s, err, errlen) < 0)
        return -1;
    if (s[0] != '/') {
        cfgj_path(p, sizeof p, path, "health_path");
        return cfgj_fail(err, errlen, p, "must start with '/'");
    }
    cfg->health_path = xstrdup(s);
    s = NULL;
    if (cfgj_string(j, path, "api_key", 0, &s, err, errlen) < 0)
        return -1;
    cfg->api_key = s ? xstrdup(s) : NULL;
    return 0;
}

void remote_config_free(struct remote_config *cfg)
{
    for (size_t i = 0; i < cfg->n_urls; i++)
        free(cfg->urls[i]);
    free(cfg->urls);
    free(cfg->health_path);
    free(cfg->api_key);
    memset(cfg, 0, sizeof *cfg);
}

static void config_copy(struct remote_config *dst, const struct remote_config *src)
{
    *dst = *src;
    dst->urls = xcalloc(src->n_urls, sizeof *dst->urls);
    for (size_t i = 0; i < src->n_urls; i++)
        dst->urls[i] = xstrdup(src->urls[i]);
    dst->health_path = xstrdup(src->health_path ? src->health_path : "/v1/models");
    dst->api_key = src->api_key ? xstrdup(src->api_key) : NULL;
}

/* ---- per-worker state -------------------------------------------------- */

/* The caller's worker state, created on its first request. Reads are
 * lock-free: the array only grows, and each slot is published by the count. */
static struct remote_local *local_for(struct remote *r, struct event_base *base)
{
    size_t n = atomic_load(&r->n_locals);
    for (size_t i = 0; i < n; i++)
        if (r->locals[i]->base == base)
            return r->locals[i];
    pthread_mutex_lock(&r->mu);
    n = atomic_load(&r->n_locals);
    struct remote_local *L = NULL;
    for (size_t i = 0; i < n && !L; i++)
        if (r->locals[i]->base == base)
            L = r->locals[i];
    if (!L && n < MAX_LOCALS) {
        L = xcalloc(1, sizeof *L);
        L->r = r;
        L->base = base;
        L->index = n;
        L->pools = xcalloc(r->n, sizeof *L->pools);
        r->locals[n] = L;
        atomic_store(&r->n_locals, n + 1);
    }
    pthread_mutex_unlock(&r->mu);
    return L;
}

static struct evhttp_connection *pool_get(struct remote_local *L, int ri)
{
    struct pool *p = &L->pools[ri];
    if (p->n)
        return p->idle[--p->n];
    struct replica *rep = &L->r->replicas[ri];
    struct evhttp_connection *c = evhttp_connection_base_new(L->base, NULL, rep->host, (unsigned short)rep->port);
    if (!c)
        return NULL;
    struct timeval tv = {L->r->cfg.chunk_timeout_ms / 1000, (L->r->cfg.chunk_timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    evhttp_connection_set_max_headers_size(c, 64 * 1024);
    return c;
}

static void free_conn_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

/* Return a connection for reuse. evhttp resets a failed connection itself and
 * reconnects on next use, so every connection is reusable; past the pool's
 * size it is freed, later, since we may be inside one of its callbacks. */
static void pool_put(struct remote_local *L, int ri, struct evhttp_connection *c)
{
    struct pool *p = &L->pools[ri];
    if (p->n < L->r->cfg.max_idle_per_replica) {
        if (!p->idle)
            p->idle = xcalloc(L->r->cfg.max_idle_per_replica, sizeof *p->idle);
        p->idle[p->n++] = c;
        return;
    }
    event_base_once(L->base, -1, EV_TIMEOUT, free_conn_cb, c, NULL);
}

/* ---- replica choice ---------------------------------------------------- */

static int replica_up(struct replica *rep, uint64_t now)
{
    int probed = atomic_load(&rep->probed);
    return (!probed || atomic_load(&rep->healthy)) && atomic_load(&rep->down_until_us) <= now;
}

/* Least outstanding requests among untried replicas, up ones first; the
 * rotating start breaks ties so equal replicas share the load. */
static int pick_replica(struct remote *r, const uint8_t *tried)
{
    uint64_t now = clock_mono_us();
    size_t start = atomic_fetch_add(&r->rr, 1) % r->n;
    int best = -1;
    long best_score = 0;
    for (size_t k = 0; k < r->n; k++) {
        size_t i = (start + k) % r->n;
        if (tried[i])
            continue;
        long score = atomic_load(&r->replicas[i].outstanding) + (replica_up(&r->replicas[i], now) ? 0 : 1L << 30);
        if (best < 0 || score < best_score) {
            best = (int)i;
            best_score = score;
        }
    }
    return best;
}

/* ---- delivering results ------------------------------------------------ */

static void rreq_free(struct rreq *q)
{
    struct remote_local *L = q->L;
    if (q->prev)
        q->prev->next = q->next;
    else if (L->active == q)
        L->active = q->next;
    if (q->next)
        q->next->prev = q->prev;
    if (q->timer)
        event_free(q->timer);
    sse_parser_free(q->sse);
    if (q->errbody)
        evbuffer_free(q->errbody);
    json_decref(q->build_root);
    free(q->build_model);
    free(q->body);
    free(q);
}

/* Let go of the upstream side: the connection goes back to the pool. */
static void release_upstream(struct rreq *q)
{
    if (q->replica >= 0) {
        atomic_fetch_sub(&q->L->r->replicas[q->replica].outstanding, 1);
        if (q->conn)
            pool_put(q->L, q->replica, q->conn);
    }
    q->conn = NULL;
    q->replica = -1;
}

void remote_engine_set_pool(struct engine *e, struct workpool *pool)
{
    ((struct remote *)e)->pool = pool;
}

void remote_engine_set_error_hook(struct engine *e, remote_error_hook hook, void *ctx, size_t replica_base)
{
    struct remote *r = (struct remote *)e;
    r->error_hook = hook;
    r->error_ctx = ctx;
    r->replica_base = replica_base;
}

static void count_error(struct remote *r, int replica)
{
    if (r->error_hook && replica >= 0)
        r->error_hook(r->error_ctx, r->replica_base + (size_t)replica);
}

static void finish_error(struct rreq *q, int status, const char *type, const char *code, const char *msg)
{
    if (!q->ended) {
        q->ended = 1;
        struct engine_error e = {.status = status, .type = type, .code = code, .message = msg};
        q->cb.on_error(q->ctx, &e);
    }
    rreq_free(q);
}

static void finish_done(struct rreq *q)
{
    if (!q->ended) {
        q->ended = 1;
        q->cb.on_done(q->ctx, &q->usage, q->finish_reason[0] ? q->finish_reason : "stop");
    }
    rreq_free(q);
}

/* ---- parsing upstream answers ------------------------------------------ */

/* Send the tokens of one choice: with logprob entries whose text adds up to
 * the content, one callback per token (what the cascade needs); otherwise
 * the content as one piece. */
static void emit_choice_tokens(struct rreq *q, const char *content, size_t len, json_t *lp_content)
{
    size_t n = json_is_array(lp_content) ? json_array_size(lp_content) : 0;
    if (n) {
        size_t sum = 0, i;
        json_t *e;
        json_array_foreach(lp_content, i, e) {
            json_t *t = json_object_get(e, "token");
            sum += json_is_string(t) ? json_string_length(t) : (size_t)-1 / 2;
        }
        if (sum == len) {
            size_t off = 0;
            json_array_foreach(lp_content, i, e) {
                json_t *t = json_object_get(e, "token");
                json_t *top = json_object_get(e, "top_logprobs");
                struct engine_top_logprob tops[21];
                size_t k = 0, ti;
                json_t *te;
                json_array_foreach(top, ti, te) {
                    json_t *tt = json_object_get(te, "token");
                    if (k < 21 && json_is_string(tt)) {
                        tops[k].token = json_string_value(tt);
                        tops[k].logprob = json_number_value(json_object_get(te, "logprob"));
                        k++;
                    }
                }
                struct engine_token tok = {.text = content + off, .len = json_string_length(t), .has_logprob = 1,
                                           .logprob = json_number_value(json_object_get(e, "logprob")),
                                           .top = tops, .n_top = k};
                off += json_string_length(t);
                q->cb.on_token(q->ctx, &tok);
                if (q->ended)
                    return;
            }
            return;
        }
    }
    if (len) {
        struct engine_token tok = {.text = content, .len = len};
        q->cb.on_token(q->ctx, &tok);
    }
}

static void read_usage(struct rreq *q, json_t *root)
{
    json_t *u = json_object_get(root, "usage");
    if (!json_is_object(u))
        return;
    q->usage.prompt_tokens = json_integer_value(json_object_get(u, "prompt_tokens"));
    q->usage.completion_tokens = json_integer_value(json_object_get(u, "completion_tokens"));
}

static void read_finish(struct rreq *q, json_t *choice)
{
    json_t *fr = json_object_get(choice, "finish_reason");
    if (json_is_string(fr))
        snprintf(q->finish_reason, sizeof q->finish_reason, "%s", json_string_value(fr));
}

static void cancel_deferred_cb(evutil_socket_t fd, short what, void *arg);

/* Inside chunk_cb, where libevent still holds the request: stop reading at
 * once and drop the connection on the next loop turn (as remote_cancel
 * does), so the upstream sees the close and stops sending. */
static void drop_upstream_later(struct rreq *q)
{
    if (q->conn)
        bufferevent_disable(evhttp_connection_get_bufferevent(q->conn), EV_READ);
    q->cancel_pending = 1;
    event_base_once(q->L->base, -1, EV_TIMEOUT, cancel_deferred_cb, q, NULL);
}

/* A stream past its max_tokens: done, with what came before the excess. */
static void cut_stream(struct rreq *q)
{
    q->ended = 1;
    q->cb.on_done(q->ctx, &q->usage, "length");
    drop_upstream_later(q);
}

static int on_sse_event(void *ctx, const char *event, const char *data, size_t len)
{
    (void)event;
    struct rreq *q = ctx;
    if (q->ended || q->saw_done)
        return 0;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        q->saw_done = 1;
        return 0;
    }
    json_t *root = json_loadb(data, len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        q->stream_error = 1;
        snprintf(q->stream_error_msg, sizeof q->stream_error_msg, "upstream sent a malformed stream event");
        return -1;
    }
    json_t *err = json_object_get(root, "error");
    if (err) {
        json_t *m = json_object_get(err, "message");
        q->stream_error = 1;
        snprintf(q->stream_error_msg, sizeof q->stream_error_msg, "upstream error: %s",
                 json_is_string(m) ? json_string_value(m) : "unknown");
        json_decref(root);
        return -1;
    }
    read_usage(q, root);
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    if (choice) {
        json_t *c = json_object_get(json_object_get(choice, "delta"), "content");
        json_t *lp = json_object_get(json_object_get(choice, "logprobs"), "content");
        if (json_is_string(c) && json_string_length(c) > 0 && q->max_tokens > 0 &&
            q->content_events >= q->max_tokens) {
            /* Every content event carries at least one token, so this one
             * is past max_tokens: the upstream ignores the bound. The
             * answer ends here, as a bounded one would ("length"). */
            json_decref(root);
            cut_stream(q);
            return -1;
        }
        if (json_is_string(c) && json_string_length(c) > 0)
            q->content_events++;
        if (json_is_string(c))
            emit_choice_tokens(q, json_string_value(c), json_string_length(c), lp);
        read_finish(q, choice);
    }
    json_decref(root);
    return 0;
}

static void finish_nonstream(struct rreq *q, const char *body, size_t len)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(msg)) {
        json_decref(root);
        finish_error(q, 502, "upstream_error", "bad_upstream_response",
                     "upstream returned a malformed chat completion");
        return;
    }
    json_t *c = json_object_get(msg, "content");
    json_t *lp = json_object_get(json_object_get(choice, "logprobs"), "content");
    read_usage(q, root);
    read_finish(q, choice);
    if (json_is_string(c))
        emit_choice_tokens(q, json_string_value(c), json_string_length(c), lp);
    json_decref(root);
    finish_done(q);
}

/* An upstream 4xx is the client's problem: pass its error through. */
static void finish_upstream_status(struct rreq *q, const char *body, size_t len, const char *url)
{
    char msg[300];
    if (q->status >= 400 && q->status < 500) {
        json_t *root = json_loadb(body, len, 0, NULL);
        json_t *e = json_object_get(root, "error");
        json_t *m = json_object_get(e, "message"), *t = json_object_get(e, "type"), *c = json_object_get(e, "code");
        snprintf(msg, sizeof msg, "%s", json_is_string(m) ? json_string_value(m) : "upstream rejected the request");
        char type[64], code[64];
        snprintf(type, sizeof type, "%s", json_is_string(t) ? json_string_value(t) : "invalid_request_error");
        snprintf(code, sizeof code, "%s", json_is_string(c) ? json_string_value(c) : "");
        json_decref(root);
        finish_error(q, q->status, type, code[0] ? code : NULL, msg);
        return;
    }
    snprintf(msg, sizeof msg, "upstream %s answered HTTP %d", url, q->status);
    finish_error(q, 502, "upstream_error", "upstream_error", msg);
}

/* ---- evhttp callbacks -------------------------------------------------- */

/* A stream that went bad (a malformed or error event, an event over the
 * size limit): tell the caller now and drop the connection, rather than
 * wait for an upstream that may never stop sending. */
static void abort_stream(struct rreq *q)
{
    count_error(q->L->r, q->replica);
    q->ended = 1;
    struct engine_error e = {.status = 502, .type = "upstream_error", .code = "bad_upstream_stream", .message = q->stream_error_msg};
    q->cb.on_error(q->ctx, &e);
    drop_upstream_later(q);
}

static int header_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    q->got_headers = 1;
    q->status = evhttp_request_get_response_code(req);
    atomic_store(&q->L->r->replicas[q->replica].down_until_us, 0);
    return 0;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    if (q->status != 200) {
        if (!q->errbody)
            q->errbody = evbuffer_new();
        size_t room = ERRBODY_MAX - evbuffer_get_length(q->errbody);
        size_t n = evbuffer_get_length(in);
        evbuffer_remove_buffer(in, q->errbody, n < room ? n : room);
        return;
    }
    if (q->ended || q->stream_error)
        return;
    /* Feed the parser straight from libevent's buffer, segment by segment. */
    int nvec = evbuffer_peek(in, -1, NULL, NULL, 0);
    struct evbuffer_iovec vs[16], *v = nvec <= 16 ? vs : xmalloc(sizeof *v * (size_t)nvec);
    evbuffer_peek(in, -1, NULL, v, nvec);
    q->in_chunk_cb = 1;
    for (int i = 0; i < nvec && !q->ended && !q->stream_error; i++) {
        int rc = sse_parser_feed(q->sse, v[i].iov_base, v[i].iov_len);
        if (rc == SSE_ETOOBIG) {
            q->stream_error = 1;
            snprintf(q->stream_error_msg, sizeof q->stream_error_msg, "upstream stream event too large");
        }
    }
    q->in_chunk_cb = 0;
    if (v != vs)
        free(v);
    if (q->stream_error && !q->ended)
        abort_stream(q);
}

static void error_cb(enum evhttp_request_error kind, void *arg)
{
    struct rreq *q = arg;
    q->error_kind = (int)kind;
}

static int start_attempt(struct rreq *q);

static void done_cb(struct evhttp_request *req, void *arg)
{
    struct rreq *q = arg;
    struct remote *r = q->L->r;
    q->req = NULL; /* libevent frees it after we return */
    int ri = q->replica;
    const char *url = ri >= 0 ? r->replicas[ri].url : "?";
    if (q->ended) { /* cancelled while a chunk callback was running */
        release_upstream(q);
        if (!q->cancel_pending)
            rreq_free(q);
        return;
    }
    if (!req || evhttp_request_get_response_code(req) == 0) {
        int timeout = q->error_kind == EVREQ_HTTP_TIMEOUT;
        count_error(r, ri);
        release_upstream(q);
        if (!q->got_headers && !timeout) {
            /* Refused or reset before any answer: this replica is down for
             * now, and the request may go to the next one. */
            atomic_store(&r->replicas[ri].down_until_us, clock_mono_us() + DOWN_BACKOFF_US);
            log_warn("upstream %s unreachable, trying the next replica", url);
            if (start_attempt(q) == 0)
                return;
            finish_error(q, 502, "upstream_error", "upstream_unreachable", "no upstream replica is reachable");
            return;
        }
        if (timeout)
            finish_error(q, 504, "upstream_error", "upstream_timeout", "upstream timed out");
        else if (q->error_kind == EVREQ_HTTP_DATA_TOO_LONG)
            /* Past max_response_bytes: evhttp has closed the connection,
             * so the upstream stops; the caller keeps what came before. */
            finish_error(q, 502, "upstream_error", "upstream_response_too_large",
                         "upstream response exceeded max_response_bytes");
        else
            finish_error(q, 502, "upstream_error", "upstream_disconnected", "upstream closed the connection mid-response");
        return;
    }
    q->status = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    if (q->status != 200) {
        if (q->status >= 500)
            count_error(r, ri);
        struct evbuffer *b = q->errbody ? q->errbody : in;
        size_t len = evbuffer_get_length(b);
        char *body = xmalloc(len + 1);
        evbuffer_copyout(b, body, len);
        body[len] = '\0';
        release_upstream(q);
        finish_upstream_status(q, body, len, url);
        free(body);
        return;
    }
    if (q->stream) {
        if (q->stream_error || !(q->saw_done || q->finish_reason[0]))
            count_error(r, ri);
        release_upstream(q);
        if (q->stream_error)
            finish_error(q, 502, "upstream_error", "bad_upstream_stream", q->stream_error_msg);
        else if (q->saw_done || q->finish_reason[0])
            finish_done(q);
        else
            finish_error(q, 502, "upstream_error", "upstream_incomplete", "upstream stream ended before it finished");
        return;
    }
    size_t len = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    release_upstream(q);
    finish_nonstream(q, body ? body : "", len);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->building) {
        /* The body is still being built: tell the caller now (unless it
         * cancelled); build_done frees the request. */
        if (!q->ended) {
            q->ended = 1;
            struct engine_error e = {.status = 504, .type = "upstream_error", .code = "upstream_timeout", .message = "upstream timed out", .retryable = 1};
            q->cb.on_error(q->ctx, &e);
        }
        return;
    }
    if (q->req) {
        evhttp_cancel_request(q->req); /* closes the upstream connection */
        q->req = NULL;
    }
    count_error(q->L->r, q->replica);
    release_upstream(q);
    finish_error(q, 504, "upstream_error", "upstream_timeout", "upstream timed out");
}

/* Send the request to the best untried replica. 0, or -1 when none is left. */
static int start_attempt(struct rreq *q)
{
    struct remote *r = q->L->r;
    for (;;) {
        int ri = pick_replica(r, q->tried);
        if (ri < 0)
            return -1;
        q->tried[ri] = 1;
        struct replica *rep = &r->replicas[ri];
        struct evhttp_connection *c = pool_get(q->L, ri);
        if (!c)
            continue;
        /* max_response_bytes caps a whole answer, streamed or not: evhttp
         * counts the body as it reads it (chunk sizes included) and fails
         * the request with EVREQ_HTTP_DATA_TOO_LONG past the cap, which is
         * what stops an upstream that streams without end. */
        evhttp_connection_set_max_body_size(c, (ev_ssize_t)r->cfg.max_response_bytes);
        struct evhttp_request *req = evhttp_request_new(done_cb, q);
        evhttp_request_set_header_cb(req, header_cb);
        if (q->stream) /* with a chunk callback, evhttp drains the body as it goes */
            evhttp_request_set_chunked_cb(req, chunk_cb);
        evhttp_request_set_error_cb(req, error_cb);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        char hostport[300];
        snprintf(hostport, sizeof hostport, "%s:%d", rep->host, rep->port);
        evhttp_add_header(h, "Host", hostport);
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "Accept", q->stream ? "text/event-stream" : "application/json");
        evhttp_add_header(h, "x-request-id", q->request_id);
        if (r->cfg.api_key) {
            char auth[512];
            snprintf(auth, sizeof auth, "Bearer %s", r->cfg.api_key);
            evhttp_add_header(h, "Authorization", auth);
        }
        evbuffer_add(evhttp_request_get_output_buffer(req), q->body, q->body_len);
        q->got_headers = 0;
        q->status = 0;
        q->error_kind = -1;
        q->replica = ri;
        q->conn = c;
        q->req = req;
        atomic_fetch_add(&rep->outstanding, 1);
        if (q->stream) {
            sse_parser_free(q->sse);
            q->sse = sse_parser_new(r->cfg.max_response_bytes, on_sse_event, q);
        }
        if (evhttp_make_request(c, req, EVHTTP_REQ_POST, rep->chat_path) == 0)
            return 0;
        /* Could not even start: the request was not queued, so free it. */
        evhttp_request_free(req);
        q->req = NULL;
        release_upstream(q);
        atomic_store(&rep->down_until_us, clock_mono_us() + DOWN_BACKOFF_US);
    }
}

/* ---- engine operations ------------------------------------------------- */

/* The upstream's body: the client's request with our model, stream and
 * output bound. Reads root only, so a pool thread may run it while the
 * caller holds a reference. */
static char *build_body(json_t *root, const char *model, int stream, int64_t max_tokens, size_t *len)
{
    /* A shallow copy shares the (read-only) values; only our edits differ. */
    json_t *o = json_copy(root);
    json_object_set_new(o, "model", json_string(model));
    json_object_set_new(o, "stream", json_boolean(stream));
    if (stream)
        json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
    else
        json_object_del(o, "stream_options");
    /* The output bound is the caller's typed one (what its budget
     * reservation covers), never the client's number: written under the
     * key(s) the client used, so an upstream that knows only one of them
     * (older servers: max_tokens; OpenAI's reasoning models:
     * max_completion_tokens) sees what it expects. */
    if (max_tokens > 0) {
        int mct = json_object_get(o, "max_completion_tokens") != NULL;
        int mt = json_object_get(o, "max_tokens") != NULL;
        if (mct)
            json_object_set_new(o, "max_completion_tokens", json_integer((json_int_t)max_tokens));
        if (mt || !mct)
            json_object_set_new(o, "max_tokens", json_integer((json_int_t)max_tokens));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    *len = strlen(s);
    return s;
}

static void deferred_fail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->ended) { /* cancelled before we got here */
        rreq_free(q);
        return;
    }
    finish_error(q, 502, "upstream_error", "upstream_unreachable", "no upstream replica is reachable");
}

/* Work pool: serialize a large body. */
static void build_work(void *arg)
{
    struct rreq *q = arg;
    q->body = build_body(q->build_root, q->build_model, q->stream, q->max_tokens, &q->body_len);
}

/* Loop thread: the body is ready; send it, unless the request ended
 * (cancelled or timed out) meanwhile. */
static void build_done(void *arg)
{
    struct rreq *q = arg;
    q->building = 0;
    json_decref(q->build_root);
    q->build_root = NULL;
    if (q->ended) {
        rreq_free(q);
        return;
    }
    if (start_attempt(q) < 0)
        finish_error(q, 502, "upstream_error", "upstream_unreachable", "no upstream replica is reachable");
}

/* The text a request's messages hold: what its body's size grows with. */
static size_t body_text_bytes(const struct chat_request *chat)
{
    size_t n = 0;
    for (size_t i = 0; i < chat->n_messages; i++)
        n += chat->messages[i].content_len;
    return n;
}

static int remote_submit(struct engine *e, const struct engine_request *er, const struct engine_callbacks *cb,
                         void *ctx, uint64_t *id)
{
    struct remote *r = (struct remote *)e;
    struct remote_local *L = local_for(r, er->base);
    if (!L)
        return -EMFILE;
    struct rreq *q = xcalloc(1, sizeof *q);
    q->L = L;
    q->cb = *cb;
    q->ctx = ctx;
    q->stream = er->stream;
    q->max_tokens = er->max_tokens > 0 ? er->max_tokens : 0;
    q->replica = -1;
    snprintf(q->request_id, sizeof q->request_id, "%s", er->request_id ? er->request_id : "");
    q->id = ((uint64_t)L->index << 48) | (atomic_fetch_add(&r->next_seq, 1) & 0xFFFFFFFFFFFFull);
    q->next = L->active;
    if (L->active)
        L->active->prev = q;
    L->active = q;
    *id = q->id;
    q->timer = evtimer_new(L->base, timeout_cb, q);
    struct timeval tv = {r->cfg.timeout_ms / 1000, (r->cfg.timeout_ms % 1000) * 1000};
    evtimer_add(q->timer, &tv);
    if (r->pool && body_text_bytes(er->chat) > OFFLOAD_BODY_BYTES) {
        /* jansson's reference counts are atomic: the job's reference keeps
         * the request alive even if the caller cancels and frees its own. */
        q->build_root = json_incref(er->chat->root);
        q->build_model = xstrdup(er->model);
        q->building = 1;
        if (workpool_submit(r->pool, L->base, build_work, build_done, q) == 0)
            return 0;
        q->building = 0;
        json_decref(q->build_root);
        q->build_root = NULL;
    }
    q->body = build_body(er->chat->root, er->model, er->stream, q->max_tokens, &q->body_len);
    if (start_attempt(q) < 0) {
        /* Callbacks never run inside submit: report on the next loop turn. */
        event_base_once(L->base, -1, EV_TIMEOUT, deferred_fail_cb, q, NULL);
    }
    return 0;
}

static void cancel_deferred_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rreq *q = arg;
    if (q->req) { /* still running: close it (done_cb has not run) */
        evhttp_cancel_request(q->req);
        q->req = NULL;
    }
    release_upstream(q);
    rreq_free(q);
}

/* The live request with this id, on the calling worker's list (the id's
 * top 16 bits name the worker), or NULL. */
static struct rreq *find_request(struct remote *r, uint64_t id)
{
    size_t li = (size_t)(id >> 48);
    if (li >= atomic_load(&r->n_locals))
        return NULL;
    struct rreq *q = r->locals[li]->active;
    while (q && q->id != id)
        q = q->next;
    return q;
}

static void remote_cancel(struct engine *e, uint64_t id)
{
    struct rreq *q = find_request((struct remote *)e, id);
    if (!q || q->ended)
        return;
    q->ended = 1; /* no callback from now on */
    if (q->building)
        return; /* build_done frees it */
    if (q->in_chunk_cb) {
        /* Inside libevent's delivery of this very request, which cannot be
         * cancelled from here: finish on the next loop turn. */
        q->cancel_pending = 1;
        event_base_once(q->L->base, -1, EV_TIMEOUT, cancel_deferred_cb, q, NULL);
        return;
    }
    if (q->req) {
        evhttp_cancel_request(q->req); /* resets the connection: the upstream sees the close */
        q->req = NULL;
        release_upstream(q);
        rreq_free(q);
    }
    /* else a deferred failure is pending and will free it */
}

/* Backpressure: a paused request's connection stops reading, so the
 * upstream's sends block in TCP instead of growing our buffers; reading
 * starts again on resume. Only once the answer has begun (got_headers):
 * before that evhttp is still connecting or writing, and it manages
 * reading itself. */
static void remote_pause(struct engine *e, uint64_t id, int paused)
{
    struct rreq *q = find_request((struct remote *)e, id);
    if (!q || q->ended || !q->req || !q->conn || !q->got_headers || q->paused == !!paused)
        return;
    q->paused = !!paused;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(q->conn);
    if (paused)
        bufferevent_disable(bev, EV_READ);
    else
        bufferevent_enable(bev, EV_READ);
}

static int remote_health(struct engine *e)
{
    struct remote *r = (struct remote *)e;
    for (size_t i = 0; i < r->n; i++)
        if (atomic_load(&r->replicas[i].healthy))
            return 1;
    return 0;
}

/* ---- health probing (its own thread; blocking sockets are fine here) --- */

static int probe(struct replica *rep, unsigned timeout_ms)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", rep->port);
    if (getaddrinfo(rep->host, port, &hints, &ai) != 0)
        return 0;
    int ok = 0;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto out;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
        goto out;
    struct pollfd pfd = {fd, POLLOUT, 0};
    if (poll(&pfd, 1, (int)timeout_ms) != 1)
        goto out;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr)
        goto out;
    char req[800];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n",
                     rep->health_path, rep->host, rep->port);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        goto out;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, (int)timeout_ms) != 1)
        goto out;
    char buf[32] = {0};
    ssize_t got = recv(fd, buf, sizeof buf - 1, 0);
    ok = got >= 12 && strncmp(buf, "HTTP/1.", 7) == 0 && buf[9] == '2';
out:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return ok;
}

static void *prober_main(void *arg)
{
    struct remote *r = arg;
    unsigned timeout = r->cfg.chunk_timeout_ms < 2000 ? r->cfg.chunk_timeout_ms : 2000;
    pthread_mutex_lock(&r->stop_mu);
    while (!r->stop) {
        pthread_mutex_unlock(&r->stop_mu);
        for (size_t i = 0; i < r->n; i++) {
            int ok = probe(&r->replicas[i], timeout);
            int was = atomic_exchange(&r->replicas[i].healthy, ok);
            if (was != ok && atomic_load(&r->replicas[i].probed))
                log_msg(ok ? LOG_INFO : LOG_WARN, "upstream %s is %s", r->replicas[i].url, ok ? "up" : "down");
            atomic_store(&r->replicas[i].probed, 1);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += r->cfg.health_interval_ms / 1000;
        ts.tv_nsec += (long)(r->cfg.health_interval_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->stop_mu);
        if (!r->stop)
            pthread_cond_timedwait(&r->stop_cv, &r->stop_mu, &ts);
    }
    pthread_mutex_unlock(&r->stop_mu);
    return NULL;
}

static void remote_destroy(struct engine *e)
{
    struct remote *r = (struct remote *)e;
    pthread_mutex_lock(&r->stop_mu);
    r->stop = 1;
    pthread_cond_signal(&r->stop_cv);
    pthread_mutex_unlock(&r->stop_mu);
    pthread_join(r->prober, NULL);
    size_t n = atomic_load(&r->n_locals);
    for (size_t i = 0; i < n; i++) {
        struct remote_local *L = r->locals[i];
        while (L->active) {
            struct rreq *q = L->active;
            if (q->req)
                evhttp_cancel_request(q->req);
            q->req = NULL;
            q->ended = 1;
            release_upstream(q);
            rreq_free(q);
        }
        for (size_t k = 0; k < r->n; k++) {
            for (size_t j = 0; j < L->pools[k].n; j++)
                evhttp_connection_free(L->pools[k].idle[j]);
            free(L->pools[k].idle);
        }
        free(L->pools);
        free(L);
    }
    for (size_t i = 0; i < r->n; i++)
        free(r->replicas[i].url);
    free(r->replicas);
    remote_config_free(&r->cfg);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->stop_mu);
    pthread_cond_destroy(&r->stop_cv);
    free(r);
}

static const struct engine_ops remote_ops = {
    .name = "remote",
    .submit = remote_submit,
    .cancel = remote_cancel,
    .health = remote_health,
    .destroy = remote_destroy,
    .pause = remote_pause,
};

struct engine *remote_engine_new(const struct remote_config *cfg, char *err, size_t errlen)
{
    struct remote *r = xcalloc(1, sizeof *r);
    r->base.ops = &remote_ops;
    config_copy(&r->cfg, cfg);
    r->n = cfg->n_urls;
    r->replicas = xcalloc(r->n, sizeof *r->replicas);
    for (size_t i = 0; i < r->n; i++) {
        struct replica *rep = &r->replicas[i];
        struct evhttp_uri *uri = evhttp_uri_parse(cfg->urls[i]);
        if (!uri) {
            snprintf(err, errlen, "bad upstream URL %s", cfg->urls[i]);
            goto fail;
        }
        rep->url = xstrdup(cfg->urls[i]);
        snprintf(rep->host, sizeof rep->host, "%s", evhttp_uri_get_host(uri));
        rep->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
        const char *path = evhttp_uri_get_path(uri);
        /* "http://h:p" serves /v1/...; "http://h:p/prefix" serves /prefix/... */
        size_t pl = path ? strlen(path) : 0;
        while (pl && path[pl - 1] == '/')
            pl--;
        if (pl == 0)
            snprintf(rep->chat_path, sizeof rep->chat_path, "/v1/chat/completions");
        else
            snprintf(rep->chat_path, sizeof rep->chat_path, "%.*s/chat/completions", (int)pl, path);
        snprintf(rep->health_path, sizeof rep->health_path, "%s", r->cfg.health_path);
        evhttp_uri_free(uri);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->stop_mu, NULL);
    pthread_cond_init(&r->stop_cv, NULL);
    if (pthread_create(&r->prober, NULL, prober_main, r) != 0) {
        snprintf(err, errlen, "cannot start the health prober thread");
        pthread_mutex_destroy(&r->mu);
        pthread_mutex_destroy(&r->stop_mu);
        pthread_cond_destroy(&r->stop_cv);
        goto fail;
    }
    return &r->base;
fail:
    for (size_t i = 0; i < r->n; i++)
        free(r->replicas[i].url);
    free(r->replicas);
    remote_config_free(&r->cfg);
    free(r);
    return NULL;
}
