/* loadgen.c: an open-loop HTTP/1.1 load generator for Cascade's benchmarks.
 *
 * Open loop (--rate R > 0): request i is due at t0 + i/R whatever happened to
 * request i-1, and its latency is measured from that due time, not from when a
 * connection was free to send it. A server that stalls therefore shows its
 * queueing in the percentiles instead of slowing the generator down and hiding
 * it ("coordinated omission"). Requests ride a fixed pool of keep-alive
 * connections; a request due while all of them are busy waits in a FIFO, and
 * the wait counts.
 *
 * Closed loop (--rate 0): every connection sends its next request as soon as
 * the last one ends. That finds the saturation throughput; latency is then
 * measured from the actual send.
 *
 * Each thread (--threads) runs its own libevent loop over its share of the
 * connections and of the rate. Latencies are stored per request and sorted at
 * the end, so percentiles are exact. The result is one JSON line on stdout:
 *   sent = ok + non2xx + errors, counted over requests due in the measured
 *   window (after --warmup, for --duration seconds); percentiles cover ok
 *   (2xx) responses; ttfb is the time to the first byte of the body.
 *
 * --requests N (closed loop only) stops after N requests in all, whatever the
 * time: a fixed amount of work, for counting instructions per request under
 * callgrind (bench/gateway/callgrind.sh). Every request is then measured.
 *
 * --unique makes every request's body differ, so that a gateway's response
 * cache misses on each one and the whole path (lookup, upstream, store) runs:
 * the body must hold the 16-byte marker LG_UNIQUE_MARK once, and each send
 * writes 16 hex digits over it (a per-run nonce, the worker, a sequence
 * number), so the length and Content-Length never change.
 *
 * Responses are parsed with Content-Length, chunked transfer encoding, or
 * read-until-close. Pipelining is never used: one request per connection at a
 * time, as real clients of an LLM gateway do.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#define LG_MAX_HEAD 65536           /* a response head larger than this is an error */
#define LG_SWEEP_US 20000           /* how often timeouts and the drain are checked */
#define LG_RECONNECT_US 50000       /* back-off after a failed connect */
#define LG_UNIQUE_MARK "@@UNIQUE@@@@@@@@" /* --unique: rewritten per request */
#define LG_UNIQUE_LEN 16

struct lg_opts {
    const char *url;
    char host[256];
    char port[16];
    char path[2048];
    double rate;            /* requests per second in all; 0 = closed loop */
    double duration;        /* measured seconds */
    double warmup;          /* seconds before the measured window */
    double timeout;         /* per-request inactivity limit and final drain, seconds */
    int connections;
    int threads;
    int stream;
    const char *method;
    char *request;          /* the whole request, built once */
    size_t request_len;
    uint64_t requests;      /* --requests: stop after this many (0: by time) */
    int unique;             /* --unique: rewrite the marker per request */
    size_t unique_off;      /* where the marker sits in `request` */
    uint64_t unique_nonce;  /* differs between runs, so no run hits an old entry */
    struct sockaddr_storage addr;
    socklen_t addr_len;
};

/* A growable array of nanosecond samples. */
struct lg_samples {
    uint64_t *v;
    size_t n, cap;
};

enum lg_parse {
    LG_HEAD,                /* waiting for the status line and headers */
    LG_BODY_LENGTH,         /* Content-Length bytes left in `remaining` */
    LG_CHUNK_SIZE,          /* waiting for a chunk-size line */
    LG_CHUNK_DATA,          /* `remaining` bytes of chunk data left */
    LG_CHUNK_CRLF,          /* the CRLF after chunk data */
    LG_TRAILERS,            /* trailer lines until an empty one */
    LG_BODY_EOF,            /* body runs until the server closes */
};

struct lg_worker;

struct lg_conn {
    struct lg_worker *w;
    int fd;
    int connected;
    int busy;               /* a request is in flight on this connection */
    struct event *rev, *wev, *retry;
    struct evbuffer *in;
    size_t wpos;            /* bytes of the request already written */
    char *req;              /* the bytes sent: o->request, or (--unique) this
                             * connection's own copy, since a partial send
                             * must finish with the same bytes */
    /* the request in flight */
    uint64_t due_ns;        /* when it was due (open loop) or sent (closed) */
    uint64_t first_body_ns;
    uint64_t last_io_ns;
    int measured;
    /* response parser */
    enum lg_parse state;
    int status;
    int close_after;        /* server said Connection: close, or HTTP/1.0 */
    uint64_t remaining;
    struct lg_conn *next_idle;
};

struct lg_worker {
    int idx;
    const struct lg_opts *o;
    pthread_t thread;
    struct event_base *base;
    struct lg_conn *conns;
    int n_conns;
    struct lg_conn *idle;           /* connected, nothing in flight */
    /* due times of requests waiting for a connection (a ring) */
    uint64_t *queue;
    size_t q_head, q_len, q_cap;
    /* schedule */
    uint64_t t0, measure_from, measure_to;  /* the measured window, in due time */
    double interval_ns;             /* open loop: between this worker's requests */
    double offset_ns;               /* open loop: this worker's phase */
    uint64_t next_i, n_total;
    int draining;
    uint64_t drain_deadline;
    struct event *tick, *sweep;
    int in_flight;
    /* results */
    uint64_t sent, ok, errors, non2xx, connect_errors;
    uint64_t unique_seq;            /* --unique: requests this worker has sent */
    uint64_t budget, issued;        /* --requests: this worker's share; sent so far */
    struct lg_samples lat, ttfb;
    struct lg_samples lag;          /* open loop: how late each send was dispatched */
};

/* lg_now: monotonic nanoseconds; every timestamp in this file is one. */
static uint64_t lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void lg_die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

/* lg_samples_push: append; the arrays only grow, and die with the process. */
static void lg_samples_push(struct lg_samples *s, uint64_t v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof(*s->v));
        if (!s->v)
            lg_die("out of memory");
    }
    s->v[s->n++] = v;
}

/* lg_queue_push: a request that found every connection busy. The ring
 * doubles when full; under a stalled server it holds up to rate x run time
 * entries, 8 bytes each, which is why it stores only the due time. */
static void lg_queue_push(struct lg_worker *w, uint64_t due)
{
    if (w->q_len == w->q_cap) {
        size_t cap = w->q_cap ? w->q_cap * 2 : 1024;
        uint64_t *q = malloc(cap * sizeof(*q));
        if (!q)
            lg_die("out of memory");
        for (size_t i = 0; i < w->q_len; i++)
            q[i] = w->queue[(w->q_head + i) % w->q_cap];
        free(w->queue);
        w->queue = q;
        w->q_cap = cap;
        w->q_head = 0;
    }
    w->queue[(w->q_head + w->q_len) % w->q_cap] = due;
    w->q_len++;
}

static uint64_t lg_queue_pop(struct lg_worker *w)
{
    uint64_t due = w->queue[w->q_head];
    w->q_head = (w->q_head + 1) % w->q_cap;
    w->q_len--;
    return due;
}

/* lg_is_measured: requests count by when they were due, so the warmup's
 * stragglers never leak into the window and the window's stragglers (still
 * running when sending stops) are waited for by the drain. */
static int lg_is_measured(const struct lg_worker *w, uint64_t due)
{
    return due >= w->measure_from && due < w->measure_to;
}

static void lg_conn_connect(struct lg_conn *c);
static void lg_conn_send(struct lg_conn *c, uint64_t due);
static void lg_start_drain(struct lg_worker *w);
static void lg_read_cb(evutil_socket_t fd, short what, void *arg);

/* lg_conn_ready: the connection can take a request; give it the oldest
 * waiting one, or in closed loop a new one, or park it as idle. */
static void lg_conn_ready(struct lg_conn *c)
{
    struct lg_worker *w = c->w;
    uint64_t now;

    if (w->q_len) {
        lg_conn_send(c, lg_queue_pop(w));
        return;
    }
    if (w->o->rate == 0 && !w->draining) {
        /* before t0 the tick has not started the run: park */
        now = lg_now();
        if (now >= w->t0 && now < w->measure_to && (!w->budget || w->issued < w->budget)) {
            lg_conn_send(c, now);
            return;
        }
    }
    c->next_idle = w->idle;
    w->idle = c;
}

/* lg_conn_drop: close the socket; a request in flight is an error. The
 * connection reconnects after a short pause. */
static void lg_conn_drop(struct lg_conn *c, int connect_failed)
{
    struct lg_worker *w = c->w;
    struct timeval tv = { 0, LG_RECONNECT_US };

    if (c->busy) {
        if (c->measured)
            w->errors++;
        c->busy = 0;
        w->in_flight--;
    }
    /* unlink from the idle stack if parked there */
    for (struct lg_conn **p = &w->idle; *p; p = &(*p)->next_idle) {
        if (*p == c) {
            *p = c->next_idle;
            break;
        }
    }
    event_del(c->rev);
    event_del(c->wev);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->connected = 0;
    evbuffer_drain(c->in, evbuffer_get_length(c->in));
    if (connect_failed) {
        w->connect_errors++;
        evtimer_add(c->retry, &tv);
    } else {
        lg_conn_connect(c);
    }
}

static void lg_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lg_conn_connect(arg);
}

/* lg_write_some: write what is left of the request; arm the write event when
 * the socket buffer is full (only large bodies get there). */
static int lg_write_some(struct lg_conn *c)
{
    const struct lg_opts *o = c->w->o;

    while (c->wpos < o->request_len) {
        ssize_t n = send(c->fd, c->req + c->wpos, o->request_len - c->wpos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(c->wev, NULL);
                return 0;
            }
            return -1;
        }
        c->wpos += (size_t)n;
    }
    return 0;
}

static void lg_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    int err = 0;
    socklen_t len = sizeof(err);

    (void)what;
    if (!c->connected) {
        /* the non-blocking connect finished, one way or the other */
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            lg_conn_drop(c, 1);
            return;
        }
        c->connected = 1;
        event_add(c->rev, NULL);
        lg_conn_ready(c);
        return;
    }
    if (lg_write_some(c) < 0)
        lg_conn_drop(c, 0);
}

/* lg_conn_connect: open a socket and start a non-blocking connect; the
 * write event tells when it is done (lg_write_cb). */
static void lg_conn_connect(struct lg_conn *c)
{
    const struct lg_opts *o = c->w->o;
    int one = 1;

    c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        lg_die("socket() failed");
    /* requests are small and latency is the point: no Nagle delay */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    event_assign(c->rev, c->w->base, c->fd, EV_READ | EV_PERSIST, lg_read_cb, c);
    event_assign(c->wev, c->w->base, c->fd, EV_WRITE, lg_write_cb, c);
    c->state = LG_HEAD;
    if (connect(c->fd, (const struct sockaddr *)&o->addr, o->addr_len) < 0 && errno != EINPROGRESS) {
        lg_conn_drop(c, 1);
        return;
    }
    event_add(c->wev, NULL);
}

/* lg_conn_send: put the request due at `due` on an idle connection. The
 * bytes go out with send() right here rather than on the next loop turn, so
 * the generator adds no scheduling delay of its own. */
static void lg_conn_send(struct lg_conn *c, uint64_t due)
{
    struct lg_worker *w = c->w;

    c->busy = 1;
    w->in_flight++;
    c->due_ns = due;
    /* --requests: the last one is out; the drain ends the run when it is back */
    if (w->budget && ++w->issued >= w->budget && !w->draining)
        lg_start_drain(w);
    c->measured = lg_is_measured(w, due);
    /* open loop counts a request when it falls due (lg_dispatch), so one
     * that never found a connection still counts, as an error */
    if (c->measured && w->o->rate == 0)
        w->sent++;
    c->first_body_ns = 0;
    c->last_io_ns = lg_now();
    c->state = LG_HEAD;
    c->wpos = 0;
    if (w->o->unique) {
        /* nonce (16 bits) | worker (8 bits) | sequence (40 bits), as hex */
        uint64_t v = (w->o->unique_nonce << 48) | ((uint64_t)(w->idx & 0xff) << 40) |
                     (w->unique_seq++ & 0xffffffffffu);
        for (int i = LG_UNIQUE_LEN - 1; i >= 0; i--, v >>= 4)
            c->req[w->o->unique_off + (size_t)i] = "0123456789abcdef"[v & 0xf];
    }
    if (lg_write_some(c) < 0)
        lg_conn_drop(c, 0);
}

/* lg_dispatch: request due at `due`: send it now if a connection is idle,
 * else it waits its turn (and its latency keeps counting). */
static void lg_dispatch(struct lg_worker *w, uint64_t due)
{
    struct lg_conn *c = w->idle;

    if (lg_is_measured(w, due))
        w->sent++;
    if (c && w->q_len == 0) {
        w->idle = c->next_idle;
        lg_conn_send(c, due);
    } else {
        lg_queue_push(w, due);
    }
}

/* lg_due: the i-th due time of this worker, computed from i rather than
 * accumulated, so rounding never drifts the rate. */
static uint64_t lg_due(const struct lg_worker *w, uint64_t i)
{
    return w->t0 + (uint64_t)llround(w->offset_ns + (double)i * w->interval_ns);
}

/* lg_start_drain: no more requests will be sent; give those in flight
 * --timeout seconds to finish. */
static void lg_start_drain(struct lg_worker *w)
{
    w->draining = 1;
    w->drain_deadline = lg_now() + (uint64_t)(w->o->timeout * 1e9);
}

/* lg_tick_cb: open loop: send everything now due, then sleep until the
 * next due time. Closed loop: the tick only marks the end of sending. */
static void lg_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg_worker *w = arg;
    uint64_t now = lg_now(), due;
    struct timeval tv;

    (void)fd;
    (void)what;
    if (w->o->rate == 0) {
        if (now < w->measure_to) {
            /* closed loop starts: every connected connection gets work */
            while (w->idle && !w->draining) {
                struct lg_conn *c = w->idle;
                w->idle = c->next_idle;
                lg_conn_send(c, lg_now());
            }
            due = w->measure_to - now;
            tv.tv_sec = (time_t)(due / 1000000000u);
            tv.tv_usec = (suseconds_t)(due % 1000000000u / 1000);
            evtimer_add(w->tick, &tv);
        } else {
            lg_start_drain(w);
        }
        return;
    }
    while (w->next_i < w->n_total && (due = lg_due(w, w->next_i)) <= now) {
        if (lg_is_measured(w, due))
            lg_samples_push(&w->lag, now - due);
        lg_dispatch(w, due);
        w->next_i++;
    }
    if (w->next_i >= w->n_total) {
        lg_start_drain(w);
        return;
    }
    due = lg_due(w, w->next_i) - now;
    tv.tv_sec = (time_t)(due / 1000000000u);
    tv.tv_usec = (suseconds_t)(due % 1000000000u / 1000);
    evtimer_add(w->tick, &tv);
}

/* lg_sweep_cb: every LG_SWEEP_US: fail requests idle past --timeout, and end
 * the loop once the drain is over. Requests still waiting or in flight at
 * the drain deadline are errors. */
static void lg_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg_worker *w = arg;
    uint64_t now = lg_now(), limit = (uint64_t)(w->o->timeout * 1e9);

    (void)fd;
    (void)what;
    for (int i = 0; i < w->n_conns; i++) {
        struct lg_conn *c = &w->conns[i];
        if (c->busy && now - c->last_io_ns > limit)
            lg_conn_drop(c, 0);
    }
    if (!w->draining)
        return;
    if ((w->in_flight == 0 && w->q_len == 0) || now > w->drain_deadline) {
        while (w->q_len)
            if (lg_is_measured(w, lg_queue_pop(w)))
                w->errors++;
        for (int i = 0; i < w->n_conns; i++) {
            struct lg_conn *c = &w->conns[i];
            if (c->busy && c->measured)
                w->errors++;
        }
        event_base_loopbreak(w->base);
    }
}

/* lg_response_done: one response fully read. */
static void lg_response_done(struct lg_conn *c, uint64_t now)
{
    struct lg_worker *w = c->w;

    c->busy = 0;
    w->in_flight--;
    if (c->measured) {
        if (c->status >= 200 && c->status < 300) {
            w->ok++;
            lg_samples_push(&w->lat, now - c->due_ns);
            lg_samples_push(&w->ttfb, (c->first_body_ns ? c->first_body_ns : now) - c->due_ns);
        } else {
            w->non2xx++;
        }
    }
    c->state = LG_HEAD;
    if (c->close_after) {
        lg_conn_drop(c, 0);
        return;
    }
    lg_conn_ready(c);
}

/* lg_header_is: does the header line start with "name:" (any case)? */
static int lg_header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

/* lg_has_token: does the header value contain `tok` (case-insensitive)? */
static int lg_has_token(const char *v, size_t len, const char *tok)
{
    size_t n = strlen(tok);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(v + i, tok, n) == 0)
            return 1;
    return 0;
}

/* lg_parse_head: parse the status line and headers in head[0..len) (which
 * ends with CRLF CRLF) and choose how the body is framed. -1 on garbage. */
static int lg_parse_head(struct lg_conn *c, const char *head, size_t len)
{
    const char *p = head, *end = head + len;
    int chunked = 0, has_length = 0, http10;
    uint64_t length = 0;

    if (len < 12 || strncmp(head, "HTTP/1.", 7) != 0)
        return -1;
    http10 = head[7] == '0';
    c->status = atoi(head + 9);
    c->close_after = http10;
    p = memchr(p, '\n', (size_t)(end - p)) + 1;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = (size_t)(nl - p);
        if (l && p[l - 1] == '\r')
            l--;
        if (l == 0)
            break;
        const char *colon = memchr(p, ':', l);
        const char *v = colon ? colon + 1 : p + l;
        size_t vl = (size_t)(p + l - v);
        if (lg_header_is(p, l, "content-length")) {
            char num[32];
            size_t k = vl < sizeof(num) - 1 ? vl : sizeof(num) - 1;
            memcpy(num, v, k);
            num[k] = 0;
            length = strtoull(num, NULL, 10);
            has_length = 1;
        } else if (lg_header_is(p, l, "transfer-encoding")) {
            chunked = lg_has_token(v, vl, "chunked");
        } else if (lg_header_is(p, l, "connection")) {
            if (lg_has_token(v, vl, "close"))
                c->close_after = 1;
            else if (lg_has_token(v, vl, "keep-alive"))
                c->close_after = 0;
        }
        p = nl + 1;
    }
    if (c->status < 100 || c->status > 999)
        return -1;
    if (c->status < 200) {
        c->state = LG_HEAD;         /* 1xx: the real head follows */
    } else if (c->status == 204 || c->status == 304) {
        c->state = LG_BODY_LENGTH;
        c->remaining = 0;
    } else if (chunked) {
        c->state = LG_CHUNK_SIZE;
    } else if (has_length) {
        c->state = LG_BODY_LENGTH;
        c->remaining = length;
    } else {
        c->state = LG_BODY_EOF;
        c->close_after = 1;
    }
    return 0;
}

/* lg_take_line: copy one CRLF-terminated line (without it) into buf and drain
 * it. 1 when a line was taken, 0 when more input is needed, -1 when too long. */
static int lg_take_line(struct evbuffer *in, char *buf, size_t cap)
{
    size_t eol_len = 0;
    struct evbuffer_ptr pos = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);

    if (pos.pos < 0)
        return evbuffer_get_length(in) >= cap ? -1 : 0;
    if ((size_t)pos.pos >= cap)
        return -1;
    evbuffer_remove(in, buf, (size_t)pos.pos);
    buf[pos.pos] = 0;
    evbuffer_drain(in, eol_len);
    return 1;
}

/* lg_consume_body: drain up to `remaining` body bytes; note the first one. */
static void lg_consume_body(struct lg_conn *c, uint64_t now)
{
    size_t have = evbuffer_get_length(c->in);
    size_t n = have < c->remaining ? have : (size_t)c->remaining;

    if (n && !c->first_body_ns)
        c->first_body_ns = now;
    evbuffer_drain(c->in, n);
    c->remaining -= n;
}

/* lg_parse: advance the response parser over buffered input. 0 when it
 * needs more input, -1 on a protocol error. */
static int lg_parse(struct lg_conn *c, uint64_t now)
{
    char line[1024];
    int r;

    for (;;) {
        if (!c->busy) {
            /* bytes with no request in flight: the server is confused */
            return evbuffer_get_length(c->in) ? -1 : 0;
        }
        switch (c->state) {
        case LG_HEAD: {
            struct evbuffer_ptr pos = evbuffer_search(c->in, "\r\n\r\n", 4, NULL);
            if (pos.pos < 0)
                return evbuffer_get_length(c->in) > LG_MAX_HEAD ? -1 : 0;
            size_t hl = (size_t)pos.pos + 4;
            if (lg_parse_head(c, (const char *)evbuffer_pullup(c->in, (ssize_t)hl), hl) < 0)
                return -1;
            evbuffer_drain(c->in, hl);
            break;
        }
        case LG_BODY_LENGTH:
            lg_consume_body(c, now);
            if (c->remaining)
                return 0;
            lg_response_done(c, now);
            break;
        case LG_CHUNK_SIZE:
            if ((r = lg_take_line(c->in, line, sizeof(line))) <= 0)
                return r;
            c->remaining = strtoull(line, NULL, 16);    /* stops at ';' extensions */
            c->state = c->remaining ? LG_CHUNK_DATA : LG_TRAILERS;
            break;
        case LG_CHUNK_DATA:
            lg_consume_body(c, now);
            if (c->remaining)
                return 0;
            c->state = LG_CHUNK_CRLF;
            break;
        case LG_CHUNK_CRLF: {
            char crlf[2];
            if (evbuffer_get_length(c->in) < 2)
                return 0;
            evbuffer_remove(c->in, crlf, 2);
            if (crlf[0] != '\r' || crlf[1] != '\n')
                return -1;
            c->state = LG_CHUNK_SIZE;
            break;
        }
        case LG_TRAILERS:
            if ((r = lg_take_line(c->in, line, sizeof(line))) <= 0)
                return r;
            if (line[0] == 0)
                lg_response_done(c, now);
            break;
        case LG_BODY_EOF:
            if (evbuffer_get_length(c->in) && !c->first_body_ns)
                c->first_body_ns = now;
            evbuffer_drain(c->in, evbuffer_get_length(c->in));
            return 0;
        }
        if (c->fd < 0)
            return 0;       /* response_done closed the connection */
    }
}

/* lg_read_cb: one read per wake-up, timestamped once: the time a byte
 * became readable is the time the response (or its first byte) arrived. */
static void lg_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg_conn *c = arg;
    uint64_t now;
    int n;

    (void)what;
    n = evbuffer_read(c->in, fd, 65536);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    now = lg_now();
    c->last_io_ns = now;
    if (n <= 0) {
        /* EOF ends a read-until-close body; otherwise it is an error */
        if (c->busy && c->state == LG_BODY_EOF) {
            c->close_after = 1;
            lg_response_done(c, now);
        } else {
            lg_conn_drop(c, 0);
        }
        return;
    }
    if (lg_parse(c, now) < 0)
        lg_conn_drop(c, 0);
}

/* lg_worker_run: a thread's whole life: connect, wait for t0, run the
 * schedule, drain, return. Results stay in the worker for main to merge. */
static void *lg_worker_run(void *arg)
{
    struct lg_worker *w = arg;
    struct timeval sweep = { 0, LG_SWEEP_US }, start;
    uint64_t now = lg_now();

    for (int i = 0; i < w->n_conns; i++)
        lg_conn_connect(&w->conns[i]);
    /* the first tick fires at t0 (all workers share it) */
    uint64_t wait = w->t0 > now ? w->t0 - now : 0;
    start.tv_sec = (time_t)(wait / 1000000000u);
    start.tv_usec = (suseconds_t)(wait % 1000000000u / 1000);
    evtimer_add(w->tick, &start);
    event_add(w->sweep, &sweep);
    event_base_dispatch(w->base);
    return NULL;
}

static void lg_worker_init(struct lg_worker *w, int idx, const struct lg_opts *o, uint64_t t0)
{
    struct event_config *cfg = event_config_new();

    memset(w, 0, sizeof(*w));
    w->idx = idx;
    w->o = o;
    /* timerfd-backed timers: epoll's millisecond timeouts would smear the
     * schedule at thousands of requests per second */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    w->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!w->base)
        lg_die("event_base_new failed");
    w->n_conns = o->connections / o->threads + (idx < o->connections % o->threads);
    w->conns = calloc((size_t)w->n_conns, sizeof(*w->conns));
    if (!w->conns)
        lg_die("out of memory");
    for (int i = 0; i < w->n_conns; i++) {
        struct lg_conn *c = &w->conns[i];
        c->w = w;
        c->fd = -1;
        c->in = evbuffer_new();
        c->rev = event_new(w->base, -1, 0, lg_read_cb, c);
        c->wev = event_new(w->base, -1, 0, lg_write_cb, c);
        c->retry = evtimer_new(w->base, lg_retry_cb, c);
        c->req = o->unique ? malloc(o->request_len) : o->request;
        if (!c->in || !c->rev || !c->wev || !c->retry || !c->req)
            lg_die("out of memory");
        if (o->unique)
            memcpy(c->req, o->request, o->request_len);
    }
    w->t0 = t0;
    w->measure_from = t0 + (uint64_t)(o->warmup * 1e9);
    if (o->requests)
        w->budget = o->requests / (uint64_t)o->threads + ((uint64_t)idx < o->requests % (uint64_t)o->threads);
    w->measure_to = w->measure_from + (uint64_t)(o->duration * 1e9);
    if (o->rate > 0) {
        /* worker k sends requests k, k+T, k+2T, ... of one global schedule */
        w->interval_ns = 1e9 * o->threads / o->rate;
        w->offset_ns = 1e9 * idx / o->rate;
        double span = (o->warmup + o->duration) * 1e9 - w->offset_ns;
        w->n_total = span > 0 ? (uint64_t)ceil(span / w->interval_ns) : 0;
    }
    w->tick = evtimer_new(w->base, lg_tick_cb, w);
    w->sweep = event_new(w->base, -1, EV_PERSIST, lg_sweep_cb, w);
    if (!w->tick || !w->sweep)
        lg_die("out of memory");
}

/* lg_worker_free: after the thread is joined; closes what is still open. */
static void lg_worker_free(struct lg_worker *w)
{
    for (int i = 0; i < w->n_conns; i++) {
        struct lg_conn *c = &w->conns[i];
        if (c->fd >= 0)
            close(c->fd);
        event_free(c->rev);
        event_free(c->wev);
        event_free(c->retry);
        evbuffer_free(c->in);
        if (c->req != w->o->request)
            free(c->req);
    }
    free(w->conns);
    free(w->queue);
    free(w->lat.v);
    free(w->ttfb.v);
    free(w->lag.v);
    event_free(w->tick);
    event_free(w->sweep);
    event_base_free(w->base);
}

static int lg_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* lg_pct: nearest-rank percentile of sorted v[0..n): the smallest sample with
 * at least p of all samples at or below it. Printed in microseconds. */
static void lg_print_pct(const char *name, const uint64_t *v, size_t n, double p)
{
    if (!n) {
        printf(",\"%s\":null", name);
        return;
    }
    size_t rank = (size_t)ceil(p * (double)n);
    if (rank < 1)
        rank = 1;
    printf(",\"%s\":%.1f", name, (double)v[rank - 1] / 1000.0);
}

/* lg_parse_url: http://host[:port]/path only; no TLS in a loopback benchmark. */
static void lg_parse_url(struct lg_opts *o)
{
    const char *u = o->url, *h, *slash, *colon;
    struct addrinfo hints, *res = NULL;

    if (strncmp(u, "http://", 7) != 0)
        lg_die("--url must start with http://");
    h = u + 7;
    slash = strchr(h, '/');
    if (!slash)
        slash = h + strlen(h);
    colon = memchr(h, ':', (size_t)(slash - h));
    size_t hl = (size_t)((colon ? colon : slash) - h);
    if (hl == 0 || hl >= sizeof(o->host))
        lg_die("bad host in --url");
    memcpy(o->host, h, hl);
    o->host[hl] = 0;
    if (colon) {
        size_t pl = (size_t)(slash - colon - 1);
        if (pl == 0 || pl >= sizeof(o->port))
            lg_die("bad port in --url");
        memcpy(o->port, colon + 1, pl);
        o->port[pl] = 0;
    } else {
        strcpy(o->port, "80");
    }
    if (strlen(*slash ? slash : "/") >= sizeof(o->path))
        lg_die("path in --url too long");
    strcpy(o->path, *slash ? slash : "/");
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(o->host, o->port, &hints, &res) != 0 || !res)
        lg_die("cannot resolve --url host");
    memcpy(&o->addr, res->ai_addr, res->ai_addrlen);
    o->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* lg_read_file: the --body file, whole; it is sent as is, byte for byte. */
static char *lg_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    char *buf;

    if (!f || fstat(fileno(f), &st) < 0)
        lg_die("cannot open --body file");
    buf = malloc((size_t)st.st_size + 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        lg_die("cannot read --body file");
    fclose(f);
    *len = (size_t)st.st_size;
    return buf;
}

/* lg_build_request: the request bytes every send reuses. */
static void lg_build_request(struct lg_opts *o, const char *body, size_t body_len,
                             const char *headers, int has_ctype)
{
    struct evbuffer *b = evbuffer_new();
    const char *method = o->method ? o->method : (body ? "POST" : "GET");

    evbuffer_add_printf(b, "%s %s HTTP/1.1\r\nHost: %s:%s\r\n", method, o->path, o->host, o->port);
    if (body) {
        if (!has_ctype)
            evbuffer_add_printf(b, "Content-Type: application/json\r\n");
        evbuffer_add_printf(b, "Content-Length: %zu\r\n", body_len);
    }
    if (o->stream)
        evbuffer_add_printf(b, "Accept: text/event-stream\r\n");
    evbuffer_add_printf(b, "%s\r\n", headers);
    if (body)
        evbuffer_add(b, body, body_len);
    o->request_len = evbuffer_get_length(b);
    o->request = malloc(o->request_len);
    if (!o->request)
        lg_die("out of memory");
    evbuffer_remove(b, o->request, o->request_len);
    evbuffer_free(b);
}

static void lg_usage(void)
{
    fprintf(stderr,
            "usage: loadgen --url http://HOST:PORT/PATH [--rate R] [--duration S] [--warmup S]\n"
            "               [--connections C] [--threads T] [--body FILE] [--header 'N: v']...\n"
            "               [--method M] [--stream] [--timeout S] [--unique] [--requests N]\n"
            "  --rate R        requests/s, open loop (0 = closed loop, as fast as possible); default 1000\n"
            "  --duration S    measured seconds (default 10); --warmup S before it (default 1)\n"
            "  --connections C keep-alive connections (default 64); --threads T loops (default 1)\n"
            "  --timeout S     a request idle this long fails; also the final drain (default 10)\n"
            "  --stream        ask for text/event-stream (ttfb is reported either way)\n"
            "  --requests N    closed loop only: stop after N requests (--duration bounds the time)\n"
            "  --unique        the body holds " LG_UNIQUE_MARK " once; each request gets its\n"
            "                  own 16 hex digits there (no two requests alike, so no cache hits)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "url", required_argument, NULL, 'u' },
        { "rate", required_argument, NULL, 'r' },
        { "duration", required_argument, NULL, 'd' },
        { "warmup", required_argument, NULL, 'w' },
        { "connections", required_argument, NULL, 'c' },
        { "threads", required_argument, NULL, 't' },
        { "body", required_argument, NULL, 'b' },
        { "header", required_argument, NULL, 'H' },
        { "method", required_argument, NULL, 'm' },
        { "stream", no_argument, NULL, 's' },
        { "timeout", required_argument, NULL, 'T' },
        { "unique", no_argument, NULL, 'U' },
        { "requests", required_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct lg_opts o = { .rate = 1000, .duration = 10, .warmup = 1, .timeout = 10,
                         .connections = 64, .threads = 1 };
    struct evbuffer *hdrs = evbuffer_new();
    char *body = NULL, *headers;
    size_t body_len = 0;
    int opt, has_ctype = 0;
    struct lg_worker *workers;
    struct lg_samples lat = { 0 }, ttfb = { 0 }, lag = { 0 };
    uint64_t sent = 0, ok = 0, errors = 0, non2xx = 0, conn_err = 0;

    while ((opt = getopt_long(argc, argv, "u:r:d:w:c:t:b:H:m:sT:Un:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'u': o.url = optarg; break;
        case 'r': o.rate = atof(optarg); break;
        case 'd': o.duration = atof(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'c': o.connections = atoi(optarg); break;
        case 't': o.threads = atoi(optarg); break;
        case 'b': body = lg_read_file(optarg, &body_len); break;
        case 'H':
            if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n"))
                lg_die("--header wants 'Name: value'");
            if (strncasecmp(optarg, "content-type:", 13) == 0)
                has_ctype = 1;
            evbuffer_add_printf(hdrs, "%s\r\n", optarg);
            break;
        case 'm': o.method = optarg; break;
        case 's': o.stream = 1; break;
        case 'T': o.timeout = atof(optarg); break;
        case 'U': o.unique = 1; break;
        case 'n': o.requests = strtoull(optarg, NULL, 10); break;
        default: lg_usage();
        }
    }
    if (!o.url || o.rate < 0 || o.duration <= 0 || o.warmup < 0 || o.timeout <= 0 ||
        o.connections < 1 || o.threads < 1 || o.threads > o.connections ||
        (o.requests && (o.rate > 0 || o.requests < (uint64_t)o.threads)))
        lg_usage();
    signal(SIGPIPE, SIG_IGN);
    lg_parse_url(&o);
    evbuffer_add(hdrs, "", 1);
    headers = (char *)evbuffer_pullup(hdrs, -1);
    lg_build_request(&o, body, body_len, headers, has_ctype);
    if (o.unique) {
        /* the marker must be in the body, exactly once */
        const char *m = body ? memmem(body, body_len, LG_UNIQUE_MARK, LG_UNIQUE_LEN) : NULL;
        if (!m || memmem(m + 1, body_len - (size_t)(m + 1 - body), LG_UNIQUE_MARK, LG_UNIQUE_LEN))
            lg_die("--unique wants the body to hold " LG_UNIQUE_MARK " exactly once");
        o.unique_off = o.request_len - body_len + (size_t)(m - body);
        o.unique_nonce = (lg_now() ^ ((uint64_t)getpid() << 16)) & 0xffff;
    }
    free(body);
    evbuffer_free(hdrs);

    workers = calloc((size_t)o.threads, sizeof(*workers));
    if (!workers)
        lg_die("out of memory");
    /* t0 leaves time for every connection to be established first */
    uint64_t t0 = lg_now() + 200000000u;
    for (int i = 0; i < o.threads; i++)
        lg_worker_init(&workers[i], i, &o, t0);
    for (int i = 0; i < o.threads; i++)
        if (pthread_create(&workers[i].thread, NULL, lg_worker_run, &workers[i]) != 0)
            lg_die("pthread_create failed");
    for (int i = 0; i < o.threads; i++) {
        struct lg_worker *w = &workers[i];
        pthread_join(w->thread, NULL);
        sent += w->sent;
        ok += w->ok;
        errors += w->errors;
        non2xx += w->non2xx;
        conn_err += w->connect_errors;
        for (size_t k = 0; k < w->lat.n; k++)
            lg_samples_push(&lat, w->lat.v[k]);
        for (size_t k = 0; k < w->ttfb.n; k++)
            lg_samples_push(&ttfb, w->ttfb.v[k]);
        for (size_t k = 0; k < w->lag.n; k++)
            lg_samples_push(&lag, w->lag.v[k]);
        lg_worker_free(w);
    }
    /* qsort(NULL, 0, ...) is undefined behaviour, hence the guards */
    if (lat.n)
        qsort(lat.v, lat.n, sizeof(*lat.v), lg_cmp_u64);
    if (ttfb.n)
        qsort(ttfb.v, ttfb.n, sizeof(*ttfb.v), lg_cmp_u64);
    if (lag.n)
        qsort(lag.v, lag.n, sizeof(*lag.v), lg_cmp_u64);

    double sum = 0;
    for (size_t k = 0; k < lat.n; k++)
        sum += (double)lat.v[k];
    printf("{\"url\":\"%s\",\"mode\":\"%s\",\"rate\":%g,\"duration_s\":%g,\"connections\":%d,"
           "\"threads\":%d,\"sent\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"non2xx\":%" PRIu64 ",\"connect_errors\":%" PRIu64 ",\"rate_achieved\":%.1f",
           o.url, o.rate > 0 ? "open" : "closed", o.rate, o.duration, o.connections, o.threads,
           sent, ok, errors, non2xx, conn_err, (double)(ok + non2xx) / o.duration);
    if (lat.n)
        printf(",\"mean_us\":%.1f", sum / (double)lat.n / 1000.0);
    else
        printf(",\"mean_us\":null");
    lg_print_pct("p50_us", lat.v, lat.n, 0.50);
    lg_print_pct("p90_us", lat.v, lat.n, 0.90);
    lg_print_pct("p99_us", lat.v, lat.n, 0.99);
    lg_print_pct("p999_us", lat.v, lat.n, 0.999);
    lg_print_pct("max_us", lat.v, lat.n, 1.0);
    lg_print_pct("ttfb_p50_us", ttfb.v, ttfb.n, 0.50);
    lg_print_pct("ttfb_p99_us", ttfb.v, ttfb.n, 0.99);
    /* the generator's own lateness: if this is large, the figures above
     * measure the generator, not the server */
    lg_print_pct("sched_lag_p99_us", lag.v, lag.n, 0.99);
    lg_print_pct("sched_lag_max_us", lag.v, lag.n, 1.0);
    printf("}\n");
    free(lag.v);
    free(lat.v);
    free(ttfb.v);
    free(workers);
    free(o.request);
    return 0;
}
