/* redis.c: see redis.h. One struct redis per worker; hiredis async attached to
 * the worker's event_base. Every command is an `op` with its own timer, freed
 * when hiredis hands its reply back (hiredis calls each reply callback exactly
 * once, with NULL when the connection goes away). */
#include "cache/redis.h"

#include <event2/event.h>
#include <openssl/sha.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/mem.h"

#define MAX_CONNS 256
#define MAX_SCRIPTS 8
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define MAX_CONSECUTIVE_TIMEOUTS 3

enum conn_state { R_DOWN, R_CONNECTING, R_UP };

struct redis_shared {
    char *host;
    int port;
    char *unix_path;
    char *password;
    int db;
    unsigned timeout_ms;
    char *display;                  /* the URL without its password, for logs */
    pthread_mutex_t mu;
    struct redis *conns[MAX_CONNS];
    atomic_size_t n_conns;
    atomic_int outage_logged;       /* one log line per outage, per process */
    atomic_int aof_warned;          /* the AOF-off warning, once per Redis up-time */
    char *scripts[MAX_SCRIPTS];     /* Lua sources, loaded on every connect */
    char script_sha[MAX_SCRIPTS][41];
    int n_scripts;
    void (*error_hook)(void *ctx);
    void *error_ctx;
};

struct op {
    struct redis *r;
    redis_reply_cb cb;
    void *ctx;
    struct event *timer;
    int done;                       /* the caller was answered (timeout) */
};

struct redis {
    struct redis_shared *rs;
    struct event_base *base;
    redisAsyncContext *ac;
    enum conn_state state;
    struct event *retry_timer;
    struct event *connect_timer;
    struct event *flush_ev;         /* flush_cb, made active by redis_call */
    int flush_armed;                /* flush_ev is active */
    unsigned backoff_ms;
    int consecutive_timeouts;
    int dropping;                   /* we are dropping it for timeouts: an outage */
    int refused;                    /* Redis refused AUTH or SELECT on this connection */
    int closing;
};

static void start_connect(struct redis *r);

/* ---- URLs --------------------------------------------------------------- */

static int parse_url(const char *url, struct redis_shared *rs, char *err, size_t errlen)
{
    rs->port = 6379;
    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || p[0] != '/') {
            snprintf(err, errlen, "unix:// URL needs an absolute socket path");
            return -1;
        }
        rs->unix_path = xstrndup(p, n);
        if (q) {
            if (strncmp(q, "?db=", 4) != 0 || !q[4] || strspn(q + 4, "0123456789") != strlen(q + 4)) {
                snprintf(err, errlen, "unix:// URL may only carry ?db=N");
                return -1;
            }
            rs->db = atoi(q + 4);
        }
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "must start with redis:// or unix://");
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        /* [user]:password@ ; the user part is ignored (Redis before ACLs) */
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        rs->password = xstrndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hostport = slash ? (size_t)(slash - p) : strlen(p);
    const char *colon = memchr(p, ':', hostport);
    size_t hl = colon ? (size_t)(colon - p) : hostport;
    if (hl == 0) {
        snprintf(err, errlen, "redis:// URL needs a host");
        return -1;
    }
    rs->host = xstrndup(p, hl);
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (end != p + hostport || port < 1 || port > 65535) {
            snprintf(err, errlen, "bad port in redis:// URL");
            return -1;
        }
        rs->port = (int)port;
    }
    if (slash && slash[1]) {
        if (strspn(slash + 1, "0123456789") != strlen(slash + 1)) {
            snprintf(err, errlen, "the path of a redis:// URL is the database number");
            return -1;
        }
        rs->db = atoi(slash + 1);
    }
    return 0;
}

static void shared_fields_free(struct redis_shared *rs)
{
    for (int i = 0; i < rs->n_scripts; i++)
        free(rs->scripts[i]);
    free(rs->host);
    free(rs->unix_path);
    free(rs->password);
    free(rs->display);
}

int redis_url_check(const char *url, char *err, size_t errlen)
{
    struct redis_shared tmp = {0};
    int rc = parse_url(url, &tmp, err, errlen);
    shared_fields_free(&tmp);
    return rc;
}

struct redis_shared *redis_shared_new(const struct redis_settings *s, char *err, size_t errlen)
{
    struct redis_shared *rs = xcalloc(1, sizeof *rs);
    if (parse_url(s->url, rs, err, errlen) < 0) {
        shared_fields_free(rs);
        free(rs);
        return NULL;
    }
    if (s->password) {
        free(rs->password);
        rs->password = xstrdup(s->password);
    }
    rs->timeout_ms = s->timeout_ms ? s->timeout_ms : 100;
    char d[300];
    if (rs->unix_path)
        snprintf(d, sizeof d, "unix://%s", rs->unix_path);
    else
        snprintf(d, sizeof d, "redis://%s:%d/%d", rs->host, rs->port, rs->db);
    rs->display = xstrdup(d);
    pthread_mutex_init(&rs->mu, NULL);
    return rs;
}

/* ---- state changes ------------------------------------------------------ */

static struct timeval ms_tv(unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* The connection is gone; reconnect after the backoff. outage says whether
 * Redis itself is in doubt (a connect or a command failed or timed out), or
 * only this connection ended: an idle connection may learn that the Redis it
 * knew was restarted long after the others are back, and a Redis may close
 * idle clients (its `timeout` setting). Only an outage is logged; a dropped
 * connection whose reconnect fails becomes one then. */
static void went_down(struct redis *r, const char *why, int outage)
{
    r->state = R_DOWN;
    r->ac = NULL;
    evtimer_del(r->connect_timer);
    if (r->closing)
        return;
    if (outage && atomic_exchange(&r->rs->outage_logged, 1) == 0) {
        log_warn("redis %s unavailable (%s): serving without it until it returns", r->rs->display, why);
        /* The Redis that comes back may be another one: check it again. */
        atomic_store(&r->rs->aof_warned, 0);
    }
    struct timeval tv = ms_tv(r->backoff_ms);
    evtimer_add(r->retry_timer, &tv);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;
    if (status != REDIS_OK) {
        went_down(r, ac->errstr[0] ? ac->errstr : "connect failed", 1); /* hiredis frees ac */
        return;
    }
    /* Commands may flow (they queue behind AUTH and SELECT), but Redis is
     * not back until it has accepted them: see setup_done_cb. */
    r->state = R_UP;
    r->consecutive_timeouts = 0;
    evtimer_del(r->connect_timer);
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
    (void)status;
    struct redis *r = ac->data;
    /* Closed by the other side (only this connection), dropped by us for
     * timeouts, or by us because Redis refused our setup (both an outage).
     * hiredis frees ac. */
    if (r->refused)
        went_down(r, "it refused AUTH or SELECT", 1);
    else
        went_down(r, r->dropping ? "timed out" : ac->errstr[0] ? ac->errstr : "connection closed", r->dropping);
}

/* Replies to AUTH and SELECT: a refusal leaves us as good as down. A wrong
 * password is refused on every reconnect, so the refusal is logged through
 * a limiter and the reconnects back off as for any outage (the backoff is
 * reset only by setup_done_cb), instead of a line every 100 ms per worker. */
static void setup_reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    redisReply *rep = reply;
    struct redis *r = ac->data;
    if (rep && rep->type == REDIS_REPLY_ERROR && !r->refused) {
        static struct log_limit refusals;
        log_limited(&refusals, 60000, LOG_ERROR, "redis %s refused setup: %s", r->rs->display, rep->str);
        r->refused = 1;
        redisAsyncDisconnect(ac);
    }
}

/* The reply to the PING queued after AUTH and SELECT: a PONG means Redis
 * took them (after a refusal the connection is closing, and this reply is
 * NULL or an error), so it is really back. PING rather than a command with
 * a result we use, because managed Redis services rename or disable some
 * (INFO, CONFIG) and none of those would tell a refusal from a rename. */
static void setup_done_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    redisReply *rep = reply;
    struct redis *r = ac->data;
    if (!rep || rep->type == REDIS_REPLY_ERROR || r->refused)
        return;
    r->backoff_ms = BACKOFF_MIN_MS;
    if (atomic_exchange(&r->rs->outage_logged, 0) == 1)
        log_info("redis %s is available again", r->rs->display);
}

/* The reply to INFO persistence, asked on every connect. Spend lives only in
 * Redis (DESIGN.md, failure rules): without AOF a Redis restart silently
 * resets every tenant's spend, and budgets with it, so say so once, loudly.
 * INFO rather than CONFIG GET appendonly, because managed Redis services often
 * disable CONFIG; an error reply (INFO renamed away) or a reply without the
 * field means we cannot tell, and we stay quiet rather than cry wolf. */
static void persistence_reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    redisReply *rep = reply;
    if (!rep || rep->type != REDIS_REPLY_STRING || !rep->str)
        return;
    struct redis_shared *rs = ((struct redis *)ac->data)->rs;
    const char *f = strstr(rep->str, "aof_enabled:");
    if (!f || f[12] != '0')
        return;
    if (atomic_exchange(&rs->aof_warned, 1) == 0)
        log_warn("redis %s has AOF off (aof_enabled:0): tenants' spend is lost when Redis restarts; "
                 "run it with appendonly yes",
                 rs->display);
}

static void drop_connection(struct redis *r)
{
    /* Frees the context: pending replies come back NULL, and, when it was
     * connected, disconnect_cb runs and schedules the reconnect. */
    redisAsyncContext *ac = r->ac;
    r->dropping = 1;
    redisAsyncFree(ac);
    r->dropping = 0;
    if (r->ac == ac) /* not connected yet: no disconnect callback ran */
        went_down(r, "timed out", 1);
}

static void connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis *r = arg;
    if (r->state == R_CONNECTING && r->ac)
        drop_connection(r);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_connect(arg);
}

static void start_connect(struct redis *r)
{
    struct redis_shared *rs = r->rs;
    redisAsyncContext *ac = rs->unix_path ? redisAsyncConnectUnix(rs->unix_path)
                                          : redisAsyncConnect(rs->host, rs->port);
    if (!ac || ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        r->state = R_CONNECTING; /* so went_down logs and schedules */
        went_down(r, why, 1);
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->state = R_CONNECTING;
    r->refused = 0;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    /* Queued now, sent as soon as the socket is up, before any command. */
    if (rs->password)
        redisAsyncCommand(ac, setup_reply_cb, NULL, "AUTH %s", rs->password);
    if (rs->db)
        redisAsyncCommand(ac, setup_reply_cb, NULL, "SELECT %d", rs->db);
    for (int i = 0; i < rs->n_scripts; i++)
        redisAsyncCommand(ac, setup_reply_cb, NULL, "SCRIPT LOAD %s", rs->scripts[i]);
    redisAsyncCommand(ac, setup_done_cb, NULL, "PING");
    /* Asked of every connection, answered by whichever comes first; nothing
     * waits for it, so start-up never blocks on Redis. */
    redisAsyncCommand(ac, persistence_reply_cb, NULL, "INFO persistence");
    struct timeval tv = ms_tv(rs->timeout_ms);
    evtimer_add(r->connect_timer, &tv);
}

/* ---- commands ----------------------------------------------------------- */

static void op_free(struct op *op)
{
    event_free(op->timer);
    free(op);
}

static void count_error(struct redis_shared *rs)
{
    if (rs->error_hook)
        rs->error_hook(rs->error_ctx);
}

void redis_shared_set_error_hook(struct redis_shared *rs, void (*hook)(void *ctx), void *ctx)
{
    rs->error_hook = hook;
    rs->error_ctx = ctx;
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct op *op = priv;
    redisReply *rep = reply;
    if (!op->done && (!rep || rep->type == REDIS_REPLY_ERROR))
        count_error(op->r->rs);
    if (!op->done) {
        op->done = 1;
        if (reply)
            op->r->consecutive_timeouts = 0;
        op->cb(op->ctx, reply ? REDIS_CALL_OK : REDIS_CALL_DOWN, reply);
    }
    op_free(op);
}

static void op_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct op *op = arg;
    struct redis *r = op->r;
    count_error(r->rs);
    op->done = 1; /* the late reply, if any, is dropped in reply_cb */
    op->cb(op->ctx, REDIS_CALL_TIMEOUT, NULL);
    /* A Redis that keeps timing out is as good as down: stop waiting on it
     * and reconnect with backoff, so requests fail fast meanwhile. */
    if (++r->consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS && r->ac && r->state == R_UP) {
        r->consecutive_timeouts = 0;
        drop_connection(r);
    }
}

struct deferred {
    redis_reply_cb cb;
    void *ctx;
    struct redis_shared *rs;
};

static void deferred_down_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct deferred *d = arg;
    if (d->rs)
        count_error(d->rs);
    d->cb(d->ctx, REDIS_CALL_DOWN, NULL);
    free(d);
}

/* Write what hiredis has queued at the end of the loop turn that queued it,
 * instead of from its write event after the next epoll_wait. Two reasons:
 *   - order: a cache fill (SET) is queued before the answer it caches, and
 *     answers are written at the end of their turn too (common/httpd.c), so
 *     the SET reaches Redis first and a client that asks again at once finds
 *     the entry, even through another worker's connection;
 *   - cost: the commands of every request in a turn still go out in one
 *     write, a turn sooner, and the write event hiredis armed is disarmed in
 *     the same turn, which libevent's changelist folds into no epoll_ctl.
 * A write error is only recorded (c->err): hiredis's write event, still
 * armed, reports it in its own turn, so callbacks never run inside
 * redis_call(). */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis *r = arg;
    r->flush_armed = 0;
    if (r->state != R_UP || !r->ac)
        return;
    int done = 0;
    if (redisBufferWrite(&r->ac->c, &done) == REDIS_OK && done && r->ac->ev.delWrite)
        r->ac->ev.delWrite(r->ac->ev.data);
}

void redis_call(struct redis *r, redis_reply_cb cb, void *ctx, int argc, const char **argv, const size_t *argvlen)
{
    if (!r || r->state == R_DOWN || !r->ac) {
        struct deferred *d = xmalloc(sizeof *d);
        d->cb = cb;
        d->ctx = ctx;
        d->rs = r ? r->rs : NULL;
        event_base_once(r ? r->base : NULL, -1, EV_TIMEOUT, deferred_down_cb, d, NULL);
        return;
    }
    struct op *op = xcalloc(1, sizeof *op);
    op->r = r;
    op->cb = cb;
    op->ctx = ctx;
    op->timer = evtimer_new(r->base, op_timeout_cb, op);
    if (redisAsyncCommandArgv(r->ac, reply_cb, op, argc, argv, argvlen) != REDIS_OK) {
        /* hiredis did not take it (the context is closing): fail later. */
        op_free(op);
        struct deferred *d = xmalloc(sizeof *d);
        d->cb = cb;
        d->ctx = ctx;
        d->rs = r->rs;
        event_base_once(r->base, -1, EV_TIMEOUT, deferred_down_cb, d, NULL);
        return;
    }
    struct timeval tv = ms_tv(r->rs->timeout_ms);
    evtimer_add(op->timer, &tv);
    if (r->state == R_UP && !r->flush_armed && r->flush_ev) {
        r->flush_armed = 1;
        event_active(r->flush_ev, EV_WRITE, 0);
    }
}

int redis_connected(const struct redis *r)
{
    return r && r->state == R_UP;
}

int redis_usable(const struct redis *r)
{
    return r && r->state != R_DOWN && r->ac;
}

/* ---- per-worker connections --------------------------------------------- */

struct redis *redis_for_base(struct redis_shared *rs, struct event_base *base)
{
    size_t n = atomic_load(&rs->n_conns);
    for (size_t i = 0; i < n; i++)
        if (rs->conns[i]->base == base)
            return rs->conns[i];
    pthread_mutex_lock(&rs->mu);
    struct redis *r = NULL;
    n = atomic_load(&rs->n_conns);
    if (n < MAX_CONNS) {
        r = xcalloc(1, sizeof *r);
        r->rs = rs;
        r->base = base;
        r->backoff_ms = BACKOFF_MIN_MS;
        r->retry_timer = evtimer_new(base, retry_cb, r);
        r->connect_timer = evtimer_new(base, connect_timeout_cb, r);
        r->flush_ev = event_new(base, -1, 0, flush_cb, r);
        rs->conns[n] = r;
        atomic_store(&rs->n_conns, n + 1);
    }
    pthread_mutex_unlock(&rs->mu);
    if (r)
        start_connect(r);
    return r;
}

void redis_shared_close_all(struct redis_shared *rs)
{
    if (!rs)
        return;
    size_t n = atomic_load(&rs->n_conns);
    for (size_t i = 0; i < n; i++) {
        struct redis *r = rs->conns[i];
        r->closing = 1;
        if (r->ac)
            redisAsyncFree(r->ac);
        r->ac = NULL;
        event_free(r->retry_timer);
        event_free(r->connect_timer);
        if (r->flush_ev)
            event_free(r->flush_ev);
        free(r);
    }
    atomic_store(&rs->n_conns, 0);
}

void redis_shared_free(struct redis_shared *rs)
{
    if (!rs)
        return;
    redis_shared_close_all(rs);
    pthread_mutex_destroy(&rs->mu);
    shared_fields_free(rs);
    free(rs);
}

void redis_shared_add_script(struct redis_shared *rs, const char *lua, char sha[41])
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)lua, strlen(lua), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(sha + 2 * i, 3, "%02x", d[i]);
    if (rs->n_scripts < MAX_SCRIPTS) {
        rs->scripts[rs->n_scripts] = xstrdup(lua);
        memcpy(rs->script_sha[rs->n_scripts], sha, 41);
        rs->n_scripts++;
    }
}

/* EVALSHA, and on NOSCRIPT the same call as EVAL with the source. */
struct eval_call {
    struct redis *r;
    redis_reply_cb cb;
    void *ctx;
    const char *lua;
    int argc;
    char **argv;                    /* "EVALSHA", sha, nkeys, keys..., args... */
};

static void eval_call_free(struct eval_call *e)
{
    for (int i = 0; i < e->argc; i++)
        free(e->argv[i]);
    free(e->argv);
    free(e);
}

static void eval_reply_cb(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct eval_call *e = ctx;
    if (st == REDIS_CALL_OK && reply->type == REDIS_REPLY_ERROR && e->lua &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        free(e->argv[0]);
        free(e->argv[1]);
        e->argv[0] = xstrdup("EVAL");
        e->argv[1] = xstrdup(e->lua);
        e->lua = NULL; /* once */
        redis_call(e->r, eval_reply_cb, e, e->argc, (const char **)e->argv, NULL);
        return;
    }
    e->cb(e->ctx, st, reply);
    eval_call_free(e);
}

void redis_eval(struct redis *r, redis_reply_cb cb, void *ctx, const char *sha, int nkeys, int argc, const char **argv)
{
    struct eval_call *e = xcalloc(1, sizeof *e);
    e->r = r;
    e->cb = cb;
    e->ctx = ctx;
    for (int i = 0; r && i < r->rs->n_scripts; i++)
        if (strcmp(r->rs->script_sha[i], sha) == 0)
            e->lua = r->rs->scripts[i];
    e->argc = argc + 3;
    e->argv = xcalloc((size_t)e->argc, sizeof *e->argv);
    e->argv[0] = xstrdup("EVALSHA");
    e->argv[1] = xstrdup(sha);
    char nk[16];
    snprintf(nk, sizeof nk, "%d", nkeys);
    e->argv[2] = xstrdup(nk);
    for (int i = 0; i < argc; i++)
        e->argv[3 + i] = xstrdup(argv[i]);
    redis_call(r, eval_reply_cb, e, e->argc, (const char **)e->argv, NULL);
}
