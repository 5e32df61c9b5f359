/* httpd.c: see httpd.h for the contract.
 *
 * The bytes of a request are judged by common/http1.c (the grammar and its
 * limits); this file moves bytes between the socket and those functions, and
 * keeps each connection in one of the states of enum conn_state.
 *
 * One request at a time is "at the front": its head hook runs, its body is
 * read and it goes to the handler; only the front request's response is
 * written, so answers go out in request order. While the front request is
 * with the handler, later pipelined requests are read ahead:
 *
 *   C_HEAD ──head──> front? ──yes──> hook, 100-continue, C_BODY ──body──> handler ──> C_HEAD
 *                       │
 *                       └──no──> no body: queued (at most max_pipelined; then reading pauses)
 *                                a body or Expect: C_PARKED until it is at the front
 *                                (its body is not read ahead: the hook must see the head first)
 *   bad input:  at the front: error reply, C_CLOSING;  else queued as a refusal, C_STOPPED
 *   Connection: close (or draining): C_STOPPED after that request; answer what is queued, close
 *
 * Timers, so that no connection can wait forever: the head timer runs while
 * a connection has nothing at the front (idle keep-alive, or a head arriving
 * slowly); the read timeout while a body is read; the write timeout while
 * output is pending. In every other state a request is with the handler,
 * which always answers (the engines' own timeouts bound it).
 *
 * The request object outlives its connection when the client leaves while a
 * handler holds it: conn_free() detaches it (req->conn = NULL) and the
 * handler's final reply call frees it.
 *
 * Writing, over plain TCP: everything queued during one turn of the event
 * loop goes out in one writev() at the end of that turn (flush_cb), straight
 * from the output buffer, and libevent's write event is armed only when the
 * socket would block. Waiting for the socket to say it is writable, as a
 * bufferevent does, cost two epoll_ctl() and one more epoll_wait() per answer
 * (bench/gateway/callgrind.sh counts them); the socket of a client that reads
 * its answers nearly always has room.
 *
 * TLS: a connection is a libevent OpenSSL bufferevent on the socket instead
 * of a plain one; everything above reads and writes its plaintext buffers the
 * same way. Three things differ, each marked where it happens: the input is
 * bounded by conn_arm() rather than by a read watermark (accept_cb says why),
 * the handshake's completion is an event to ignore, and a graceful close
 * sends TLS's close_notify first.
 */
#include "common/httpd.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/bevwrite.h"
#include "common/clock.h"
#include "common/http1.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"

#define DEFAULT_MAX_CONNECTIONS 10000
#define DEFAULT_MAX_PIPELINED 16
/* How long the listener rests after accept() ran out of descriptors or
 * memory: long enough that a full fd table is not retried in a busy loop,
 * short enough that clients barely notice once descriptors free up. */
#define ACCEPT_BACKOFF_MS 200
/* A client that pipelines requests but does not read the answers would make
 * us buffer answers without bound: past this much unsent output, no new
 * request is read from it until the output drains to half. */
#define OUTPUT_PAUSE_BYTES (2 * HTTPD_DRAIN_LOW_BYTES)

/* What the connection is reading (the response side is c->front). */
enum conn_state {
    C_HEAD,         /* between requests: reading (or waiting for) a request head */
    C_BODY,         /* reading the body of the front request */
    C_PARKED,       /* a pipelined head with a body waits in c->parked for its turn */
    C_STOPPED,      /* no more requests are read: answer those queued, then close */
    C_CLOSING,      /* the last answer is queued: free once it is written */
};

/* Where a request is in its life. */
enum req_state {
    R_QUEUED,       /* parsed ahead, waiting in the connection's queue (or parked) */
    R_BODY,         /* at the front, its body being read */
    R_HANDLER,      /* at the front, held by the handler until it replies */
    R_REFUSED,      /* a refusal queued behind earlier requests: only its error is sent */
};

struct conn;

struct httpd_req {
    struct conn *conn;              /* NULL once the client has gone */
    struct httpd *h;
    struct event_base *base;
    struct httpd_req *next;         /* in the connection's queue */
    enum req_state state;
    char *head_buf;                 /* the request head; head's strings point into it */
    struct http1_head head;
    int refuse_status;              /* R_REFUSED: the status and reason to answer with */
    const char *refuse_why;
    struct evbuffer *body;
    char *body_flat;                /* pulled up and NUL-terminated at dispatch */
    size_t body_len;
    char *resp_hdrs;                /* "Name: value\r\n" lines from httpd_resp_header */
    size_t resp_hdrs_len, resp_hdrs_cap;
    int keep_alive;                 /* the connection carries on after this answer */
    int streaming;
    int chunked_out;                /* streaming with chunked encoding (HTTP/1.1) */
    httpd_close_cb on_close;
    void *on_close_arg;
    httpd_drain_cb on_drain;        /* a paused producer waiting for the client */
    void *on_drain_arg;
    char peer[64];
    unsigned char note[HTTPD_NOTE_MAX]; /* httpd_req_set_note */
    size_t note_len;
};

struct conn {
    struct httpd *h;
    struct bufferevent *bev;
    SSL *ssl;                       /* TLS: the session, owned by bev; NULL for plain HTTP */
    struct event *head_timer;
    struct event *flush_ev;         /* plain TCP: flush_cb, made active when output is queued */
    struct evbuffer_cb_entry *out_cb; /* plain TCP: output_added_cb on the output buffer */
    int flush_armed;                /* flush_ev is active */
    struct conn *prev, *next;
    enum conn_state state;
    struct httpd_req *front;        /* the request being read or answered, or NULL */
    struct httpd_req *parked;       /* C_PARKED: the head waiting for its turn */
    struct httpd_req *queue, *queue_tail;
    size_t queued;
    int in_process;                 /* conn_process() is on the stack */
    struct http1_scan scan;         /* the head being received */
    uint64_t to_read;               /* Content-Length left */
    struct http1_chunked ck;        /* the chunked body being received */
    char peer[64];
};

struct httpd {
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_timer;     /* re-enables the listener after a backoff */
    struct httpd_limits lim;
    struct httpd_tls *tls;          /* borrowed; NULL: plain HTTP */
    httpd_handler handler;
    httpd_reject_cb reject;
    httpd_head_cb on_head;
    void *arg;
    struct conn *conns;
    size_t n_conns, inflight;
    int draining;
    uint64_t log_at_us;             /* accept trouble is logged once a second at most */
    unsigned long log_skipped;
    /* "Keep-Alive: timeout=N\r\n", made once in httpd_new(). It tells a
     * client that pools connections (undici, the openai SDK) how long an
     * idle one lives here, so it drops the connection before we close it,
     * instead of sending its next request into a socket we are closing. */
    char keep_alive_hdr[40];
    size_t keep_alive_hdr_len;
};

struct httpd_tls {
    SSL_CTX *ctx;
};

static void conn_process(struct conn *c);
static void conn_free(struct conn *c);
static void conn_free_graceful(struct conn *c);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static struct timeval ms_tv(unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

const char *httpd_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* ---- requests ---------------------------------------------------------- */

static struct httpd_req *req_new(struct conn *c)
{
    struct httpd_req *r = xcalloc(1, sizeof *r);
    r->conn = c;
    r->h = c->h;
    r->base = c->h->base;
    r->body = evbuffer_new();
    if (!r->body)
        abort(); /* the out-of-memory policy of common/mem.h: a small bounded allocation */
    memcpy(r->peer, c->peer, sizeof r->peer);
    return r;
}

static void req_free(struct httpd_req *r)
{
    free(r->head_buf);
    free(r->body_flat);
    evbuffer_free(r->body);
    free(r->resp_hdrs);
    free(r);
}

const char *httpd_req_method(const struct httpd_req *r) { return r->head.method; }
const char *httpd_req_path(const struct httpd_req *r) { return r->head.path; }
const char *httpd_req_query(const struct httpd_req *r) { return r->head.query; }
const char *httpd_req_peer(const struct httpd_req *r) { return r->peer; }

void httpd_req_set_note(struct httpd_req *r, const void *p, size_t n)
{
    r->note_len = n < HTTPD_NOTE_MAX ? n : HTTPD_NOTE_MAX;
    memcpy(r->note, p, r->note_len);
}

const void *httpd_req_note(const struct httpd_req *r, size_t *n)
{
    *n = r->note_len;
    return r->note_len ? r->note : NULL;
}
struct event_base *httpd_req_base(const struct httpd_req *r) { return r->base; }
int httpd_req_client_gone(const struct httpd_req *r) { return r->conn == NULL; }

const char *httpd_req_header(const struct httpd_req *r, const char *name)
{
    return http1_field(&r->head, name);
}

const char *httpd_req_body(const struct httpd_req *r, size_t *len)
{
    *len = r->body_len;
    return r->body_flat;
}

void httpd_req_on_close(struct httpd_req *r, httpd_close_cb cb, void *arg)
{
    r->on_close = cb;
    r->on_close_arg = arg;
}

void httpd_req_on_drain(struct httpd_req *r, httpd_drain_cb cb, void *arg)
{
    r->on_drain = cb;
    r->on_drain_arg = arg;
}

void httpd_resp_header(struct httpd_req *r, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value), need = r->resp_hdrs_len + nl + vl + 4;
    if (need > r->resp_hdrs_cap) {
        r->resp_hdrs_cap = need < 512 ? 512 : 2 * need;
        r->resp_hdrs = xrealloc(r->resp_hdrs, r->resp_hdrs_cap);
    }
    char *p = r->resp_hdrs + r->resp_hdrs_len;
    memcpy(p, name, nl);
    p += nl;
    *p++ = ':';
    *p++ = ' ';
    /* Values come from us or are echoed client headers; strip CR/LF so an
     * echoed value cannot split the response. */
    for (size_t i = 0; i < vl; i++)
        if (value[i] != '\r' && value[i] != '\n')
            *p++ = value[i];
    *p++ = '\r';
    *p++ = '\n';
    r->resp_hdrs_len = (size_t)(p - r->resp_hdrs);
}

/* ---- responses --------------------------------------------------------- */

static int req_is_head(const struct httpd_req *r)
{
    return r->head.method && strcmp(r->head.method, "HEAD") == 0;
}

/* Decimal or hex digits of v into the end of buf; returns the first digit.
 * (printf on every response showed up in perf; this is all we need.) */
static char *utoa(char *end, unsigned long long v, unsigned base)
{
    static const char digits[] = "0123456789abcdef";
    *--end = '\0';
    do {
        *--end = digits[v % base];
        v /= base;
    } while (v);
    return end;
}

/* Bytes for the output, gathered so that they reach it in one evbuffer_add:
 * each add runs the output's callbacks (the bufferevent's, and the flush
 * arming), and a head took a dozen adds and a stream event four
 * (bench/gateway/callgrind.sh). One add also keeps a small answer in one
 * buffer chain, so over TLS it goes out as one record and one write(2). */
struct gather {
    struct evbuffer *out;
    size_t n;
    char buf[2048];
};

static void gather_put(struct gather *g, const void *s, size_t n)
{
    if (n == 0)
        return; /* s may be NULL then (no headers yet), which memcpy must not see */
    if (g->n + n > sizeof g->buf) {
        evbuffer_add(g->out, g->buf, g->n);
        g->n = 0;
        if (n > sizeof g->buf) {
            evbuffer_add(g->out, s, n);
            return;
        }
    }
    memcpy(g->buf + g->n, s, n);
    g->n += n;
}

static void gather_str(struct gather *g, const char *s)
{
    gather_put(g, s, strlen(s));
}

static void gather_end(struct gather *g)
{
    if (g->n)
        evbuffer_add(g->out, g->buf, g->n);
}

static void write_head(struct httpd_req *r, struct gather *g, int status, const char *content_type,
                       long long length)
{
    struct conn *c = r->conn;
    char num[24];
    /* A body we never read (the head hook answered first) leaves the stream
     * unframeable: this answer is the connection's last. So is any answer
     * while draining. */
    if (c->h->draining || (r->state == R_BODY && r->head.framing != HTTP1_BODY_NONE))
        r->keep_alive = 0;
    gather_put(g, "HTTP/1.1 ", 9);
    gather_str(g, utoa(num + sizeof num, (unsigned)status, 10));
    gather_put(g, " ", 1);
    gather_str(g, httpd_status_text(status));
    gather_put(g, "\r\n", 2);
    if (content_type) {
        gather_put(g, "Content-Type: ", 14);
        gather_str(g, content_type);
        gather_put(g, "\r\n", 2);
    }
    if (length >= 0) {
        gather_put(g, "Content-Length: ", 16);
        gather_str(g, utoa(num + sizeof num, (unsigned long long)length, 10));
        gather_put(g, "\r\n", 2);
    } else if (r->chunked_out)
        gather_put(g, "Transfer-Encoding: chunked\r\n", 28);
    gather_put(g, r->resp_hdrs, r->resp_hdrs_len);
    r->resp_hdrs_len = 0;
    if (!r->keep_alive) {
        gather_put(g, "Connection: close\r\n", 19);
    } else {
        if (r->head.minor == 0)
            /* An HTTP/1.0 client keeps the connection only when told so. */
            gather_put(g, "Connection: keep-alive\r\n", 24);
        gather_put(g, c->h->keep_alive_hdr, c->h->keep_alive_hdr_len);
    }
    gather_put(g, "\r\n", 2);
}

static void close_when_flushed_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_free_graceful(arg);
}

/* Free the requests read ahead; the connection is closing. */
static void drop_queue(struct conn *c)
{
    while (c->queue) {
        struct httpd_req *q = c->queue;
        c->queue = q->next;
        req_free(q);
    }
    c->queue_tail = NULL;
    c->queued = 0;
    if (c->parked) {
        req_free(c->parked);
        c->parked = NULL;
    }
}

/* The connection's last answer is queued: stop reading, free once written. */
static void conn_close_after_output(struct conn *c)
{
    drop_queue(c);
    c->state = C_CLOSING;
    evtimer_del(c->head_timer);
    bufferevent_disable(c->bev, EV_READ);
    /* The write callback must now mean "all sent": no low watermark. */
    bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
    bufferevent_setcb(c->bev, NULL, close_when_flushed_cb, event_cb, c);
    /* The write callback fires when the output drains; with nothing left to
     * write it would never fire, so check now -- unless conn_process() is on
     * the stack: it frees c itself on the way out. */
    if (!c->in_process && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_free_graceful(c);
}

/* The response to the front request is fully queued: free the request and go
 * on with the next one, or close once the bytes are out. */
static void finish_response(struct httpd_req *r)
{
    struct conn *c = r->conn;
    int keep = r->keep_alive;
    if (c && r->state == R_HANDLER)
        c->h->inflight--;
    req_free(r);
    if (!c)
        return;
    c->front = NULL;
    if (!keep || c->h->draining) {
        conn_close_after_output(c);
        return;
    }
    if (!c->in_process)
        conn_process(c);
}

void httpd_reply(struct httpd_req *r, int status, const char *content_type, const char *body, size_t len)
{
    if (r->conn) {
        struct gather g = {.out = bufferevent_get_output(r->conn->bev)};
        write_head(r, &g, status, content_type, (long long)len);
        /* A response to HEAD has the headers of the GET answer and no body
         * (RFC 9110 9.3.2): body bytes here would be read by the client as
         * the start of the next response. */
        if (len && !req_is_head(r))
            gather_put(&g, body, len);
        gather_end(&g);
    }
    finish_response(r);
}

void httpd_reply_error(struct httpd_req *r, int status, const char *type, const char *code,
                       const char *param, const char *message)
{
    struct openai_error e;
    openai_error_set(&e, status, type, code, param, "%s", message);
    char *js = openai_error_json(&e);
    httpd_reply(r, status, "application/json", js, strlen(js));
    free(js);
}

void httpd_stream_begin(struct httpd_req *r, int status, const char *content_type)
{
    r->streaming = 1;
    if (!r->conn)
        return;
    /* HTTP/1.0 has no chunked encoding: the end of the body is the close. */
    r->chunked_out = r->head.minor >= 1;
    if (!r->chunked_out)
        r->keep_alive = 0;
    struct gather g = {.out = bufferevent_get_output(r->conn->bev)};
    write_head(r, &g, status, content_type, -1);
    gather_end(&g);
}

void httpd_stream_write(struct httpd_req *r, const char *data, size_t len)
{
    if (!r->conn || len == 0 || req_is_head(r))
        return;
    struct gather g = {.out = bufferevent_get_output(r->conn->bev)};
    if (r->chunked_out) {
        char num[24];
        gather_str(&g, utoa(num + sizeof num, len, 16));
        gather_put(&g, "\r\n", 2);
        gather_put(&g, data, len);
        gather_put(&g, "\r\n", 2);
    } else {
        gather_put(&g, data, len);
    }
    gather_end(&g);
}

void httpd_stream_end(struct httpd_req *r)
{
    if (r->conn && r->chunked_out && !req_is_head(r))
        evbuffer_add(bufferevent_get_output(r->conn->bev), "0\r\n\r\n", 5);
    finish_response(r);
}

size_t httpd_stream_backlog(const struct httpd_req *r)
{
    return r->conn ? evbuffer_get_length(bufferevent_get_output(r->conn->bev)) : 0;
}

/* ---- the queue of requests read ahead ------------------------------------ */

static void queue_push(struct conn *c, struct httpd_req *r)
{
    r->state = R_QUEUED;
    r->next = NULL;
    if (c->queue_tail)
        c->queue_tail->next = r;
    else
        c->queue = r;
    c->queue_tail = r;
    c->queued++;
}

static struct httpd_req *queue_pop(struct conn *c)
{
    struct httpd_req *r = c->queue;
    c->queue = r->next;
    if (!c->queue)
        c->queue_tail = NULL;
    c->queued--;
    r->next = NULL;
    return r;
}

/* ---- refusing ---------------------------------------------------------- */

/* Answer r (at the front) with the server's own error and close after it. */
static void refuse_now(struct conn *c, struct httpd_req *r, int status, const char *why)
{
    c->front = r;
    r->keep_alive = 0;
    if (c->h->reject)
        c->h->reject(r, status, c->h->arg);
    httpd_reply_error(r, status, "invalid_request_error", NULL, NULL, why);
}

/* An error found while reading a request. The rest of the stream can no
 * longer be framed, so nothing more is read. At the front the error is sent
 * now; behind earlier requests it waits its turn, so answers stay in order.
 * status 0: close without a word. r may be NULL (no head yet). */
static void conn_fail(struct conn *c, struct httpd_req *r, int status, const char *why)
{
    if (status == 0) {
        if (r && r != c->front)
            req_free(r);
        conn_free(c);
        return;
    }
    if (!r)
        r = req_new(c);
    if (r == c->front || (!c->front && !c->queue)) {
        refuse_now(c, r, status, why);
        return;
    }
    queue_push(c, r);
    r->state = R_REFUSED;
    r->refuse_status = status;
    r->refuse_why = why;
    c->state = C_STOPPED;
    bufferevent_disable(c->bev, EV_READ);
}

/* ---- reading requests -------------------------------------------------- */

/* Receive a request head. Returns the parsed request, or NULL when more
 * bytes are needed or the head was refused (then c->state says which). */
static struct httpd_req *read_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    /* Empty lines before a request line are allowed (RFC 9112 2.2). */
    if (c->scan.len == 0) {
        unsigned char two[2];
        while (evbuffer_copyout(in, two, 2) == 2 && two[0] == '\r' && two[1] == '\n')
            evbuffer_drain(in, 2);
    }
    size_t avail = evbuffer_get_length(in), head_len = 0;
    const char *why = NULL;
    int rc = HTTP1_MORE;
    /* Scan only the bytes not scanned before, chain by chain: a head that
     * trickles in a byte at a time costs O(n), not O(n^2). */
    while (rc == HTTP1_MORE && c->scan.len < avail) {
        struct evbuffer_ptr pos;
        struct evbuffer_iovec v;
        if (evbuffer_ptr_set(in, &pos, c->scan.len, EVBUFFER_PTR_SET) < 0 ||
            evbuffer_peek(in, (ev_ssize_t)(avail - c->scan.len), &pos, &v, 1) < 1)
            break;
        size_t n = v.iov_len < avail - c->scan.len ? v.iov_len : avail - c->scan.len;
        rc = http1_scan_head(&c->scan, v.iov_base, n, c->h->lim.max_header_bytes, &head_len, &why);
    }
    if (rc == HTTP1_MORE)
        return NULL;
    memset(&c->scan, 0, sizeof c->scan);
    if (rc != HTTP1_DONE) {
        conn_fail(c, NULL, rc, why);
        return NULL;
    }
    struct httpd_req *r = req_new(c);
    r->head_buf = xmalloc(head_len + 1);
    evbuffer_remove(in, r->head_buf, head_len);
    r->head_buf[head_len] = '\0';
    struct http1_limits lim = {c->h->lim.max_header_bytes, c->h->lim.max_body_bytes};
    int status = http1_parse_head(r->head_buf, head_len, &lim, &r->head, &why);
    if (status) {
        conn_fail(c, r, status, why);
        return NULL;
    }
    r->keep_alive = r->head.keep_alive;
    return r;
}

/* Move body bytes of the front request out of the input. HTTP1_DONE when the
 * body is complete, HTTP1_MORE when more are needed, -1 when refused. */
static int read_body(struct conn *c)
{
    struct httpd_req *r = c->front;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (r->head.framing == HTTP1_BODY_LENGTH) {
        size_t avail = evbuffer_get_length(in);
        size_t n = (uint64_t)avail < c->to_read ? avail : (size_t)c->to_read;
        if (n) {
            evbuffer_remove_buffer(in, r->body, n);
            c->to_read -= n;
        }
        return c->to_read == 0 ? HTTP1_DONE : HTTP1_MORE;
    }
    if (r->head.framing == HTTP1_BODY_NONE)
        return HTTP1_DONE;
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            return HTTP1_MORE;
        size_t used = 0, data = 0;
        const char *why = NULL;
        int rc = http1_chunked_parse(&c->ck, v.iov_base, v.iov_len, &used, &data, &why);
        if (rc >= 400) {
            conn_fail(c, r, rc, why);
            return -1;
        }
        evbuffer_drain(in, used - data);
        if (data)
            evbuffer_remove_buffer(in, r->body, data);
        if (rc == HTTP1_DONE)
            return HTTP1_DONE;
    }
}

/* The request r is now at the front: ask the head hook. 0 when r goes on;
 * -1 when the hook answered it (the reply freed r and, when a body was due,
 * set the connection closing). */
static int front_hook(struct conn *c, struct httpd_req *r)
{
    c->front = r;
    r->state = R_BODY;
    evtimer_del(c->head_timer);
    if (c->h->on_head && c->h->on_head(r, c->h->arg) != 0)
        return -1;
    return 0;
}

/* Start reading the front request's body (reading is at this request). */
static void begin_body(struct conn *c, struct httpd_req *r)
{
    /* Only now, after the hook, is an Expect: 100-continue client told to
     * send its body; and only now is nothing else being written. */
    if (r->head.expect_continue && r->head.framing != HTTP1_BODY_NONE)
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->to_read = r->head.content_length;
    if (r->head.framing == HTTP1_BODY_CHUNKED)
        http1_chunked_init(&c->ck, c->h->lim.max_body_bytes);
    c->state = C_BODY;
    struct timeval rt = ms_tv(c->h->lim.read_timeout_ms);
    struct timeval wt = ms_tv(c->h->lim.write_timeout_ms);
    bufferevent_set_timeouts(c->bev, &rt, &wt);
}

/* The front request's body is complete: hand it to the handler. */
static void dispatch(struct conn *c, struct httpd_req *r)
{
    r->body_len = evbuffer_get_length(r->body);
    r->body_flat = xmalloc(r->body_len + 1);
    evbuffer_remove(r->body, r->body_flat, r->body_len);
    r->body_flat[r->body_len] = '\0';
    r->state = R_HANDLER;
    c->h->inflight++;
    if (c->state == C_BODY) {
        /* Reading was at this request: go on to the next head. A request
         * popped from the queue leaves the reading side where it is. */
        c->state = r->keep_alive ? C_HEAD : C_STOPPED;
        /* The body has been read: only a stalled write times out now. */
        struct timeval wt = ms_tv(c->h->lim.write_timeout_ms);
        bufferevent_set_timeouts(c->bev, NULL, &wt);
    }
    c->h->handler(r, c->h->arg);
}

/* Reading is on in the states that read, unless max_pipelined requests
 * already wait; the head timer runs whenever nothing is at the front. */
static void conn_arm(struct conn *c)
{
    if (c->state == C_CLOSING)
        return;
    int reading = (c->state == C_HEAD || c->state == C_BODY || c->state == C_PARKED) &&
                  evbuffer_get_length(bufferevent_get_output(c->bev)) < OUTPUT_PAUSE_BYTES &&
                  c->queued < c->h->lim.max_pipelined;
    /* TLS has no read watermark (accept_cb): unread input is bounded here,
     * after each read callback, to what the watermark allows plain HTTP.
     * Each TLS read adds at most a few KiB and one record (16 KiB) to it. */
    if (c->ssl && evbuffer_get_length(bufferevent_get_input(c->bev)) > c->h->lim.max_header_bytes)
        reading = 0;
    if (reading)
        bufferevent_enable(c->bev, EV_READ);
    else
        bufferevent_disable(c->bev, EV_READ);
    if (c->state == C_HEAD && !c->front && !c->queue) {
        if (!evtimer_pending(c->head_timer, NULL)) {
            struct timeval tv = ms_tv(c->h->lim.header_timeout_ms);
            evtimer_add(c->head_timer, &tv);
        }
    } else {
        evtimer_del(c->head_timer);
    }
}

/* Advance the connection as far as its buffered input and its queue allow.
 * Nothing here frees c except at the marked returns (a reply made inside
 * the loop only marks it C_CLOSING; see conn_close_after_output()). */
static void conn_process(struct conn *c)
{
    struct httpd *h = c->h;
    c->in_process = 1;
    for (;;) {
        if (c->state == C_CLOSING)
            break;
        /* Nothing at the front: the oldest waiting request goes first. */
        if (!c->front && c->queue) {
            struct httpd_req *r = queue_pop(c);
            if (r->state == R_REFUSED) {
                refuse_now(c, r, r->refuse_status, r->refuse_why); /* closes the connection */
                break;
            }
            if (front_hook(c, r) == 0)
                dispatch(c, r); /* queued requests have no body */
            continue;
        }
        if (!c->front && c->state == C_PARKED) {
            struct httpd_req *r = c->parked;
            c->parked = NULL;
            c->state = C_HEAD;
            if (front_hook(c, r) == 0)
                begin_body(c, r);
            continue;
        }
        if (c->state == C_HEAD) {
            if (!c->front && h->draining && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
                conn_close_after_output(c);
                break;
            }
            if (c->queued >= h->lim.max_pipelined ||
                evbuffer_get_length(bufferevent_get_output(c->bev)) >= OUTPUT_PAUSE_BYTES)
                break; /* conn_arm() pauses reading until answers drain */
            struct httpd_req *r = read_head(c);
            if (!r)
                break;
            if (!c->front && !c->queue) {
                if (front_hook(c, r) == 0)
                    begin_body(c, r);
            } else if (r->head.framing != HTTP1_BODY_NONE) {
                /* Its body waits until it is at the front: the head hook must
                 * see the head before we accept a byte of the body. */
                c->parked = r;
                c->state = C_PARKED;
            } else {
                queue_push(c, r);
                if (!r->keep_alive)
                    c->state = C_STOPPED;
            }
            continue;
        }
        if (c->state == C_BODY) {
            if (read_body(c) != HTTP1_DONE)
                break;
            dispatch(c, c->front);
            continue; /* the handler may have replied already */
        }
        if (c->state == C_STOPPED && !c->front && !c->queue)
            conn_close_after_output(c);
        break; /* C_PARKED or C_STOPPED behind the front request */
    }
    c->in_process = 0;
    if (c->state == C_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_free_graceful(c);
        return;
    }
    conn_arm(c);
}

/* ---- connection events ------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

/* Output drained to HTTPD_DRAIN_LOW_BYTES (the write low watermark): tell
 * a streaming producer waiting on it, then read and parse again if a full
 * output was what held us back. */
static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    struct httpd_req *r = c->front;
    if (r && r->streaming && r->on_drain)
        r->on_drain(r, r->on_drain_arg);
    if (c->state == C_HEAD || c->state == C_PARKED)
        conn_process(c);
}

/* Plain TCP: bytes were queued on the output; write them at the end of this
 * loop turn, so that all that this turn queues (a head and its body, a read's
 * worth of stream events) goes out in one writev(). */
static void output_added_cb(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    (void)out;
    struct conn *c = arg;
    if (info->n_added && !c->flush_armed) {
        c->flush_armed = 1;
        event_active(c->flush_ev, EV_WRITE, 0);
    }
}

/* The end of the loop turn in which output was queued: write it
 * (bevwrite.h). Some left over means the socket is full; the bufferevent
 * then writes the rest when it can. May free c (close_when_flushed_cb). */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    c->flush_armed = 0;
    bev_write_now(c->bev);
}

/* A handshake that failed on bad bytes (plain HTTP to the TLS port, a
 * client that does not trust our certificate, no common protocol) is worth
 * a line to whoever debugs a client; a flood of them (a scanner) is not. A
 * client that merely closed before finishing is not worth one. */
static void tls_log_failure(struct conn *c)
{
    static struct log_limit limit;
    /* libevent keeps the OpenSSL errors of the failure; the latest comes first. */
    unsigned long e = bufferevent_get_openssl_error(c->bev);
    if (!e || !ERR_GET_LIB(e))
        return;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
    /* A TCP health check (connect, close) ends in "unexpected eof". */
    if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        return;
#endif
    const char *why = ERR_reason_error_string(e);
    log_limited(&limit, 1000, LOG_INFO, "tls handshake with %s failed: %s", c->peer, why ? why : "unknown error");
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    /* TLS: the handshake is done; the read callback comes with the request. */
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (c->ssl && !SSL_is_init_finished(c->ssl))
        tls_log_failure(c);
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && c->state == C_BODY && c->front) {
        conn_fail(c, c->front, 408, "timed out reading the request body");
        return;
    }
    /* EOF, an error, or a write that made no progress: the client is gone. */
    conn_free(c);
}

static void head_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    /* Idle keep-alive, or a head too slow (slowloris), or a TLS handshake
     * never finished: close quietly. */
    if (c->state == C_HEAD && !c->front && !c->queue)
        conn_free_graceful(c);
}

static void conn_free(struct conn *c)
{
    struct httpd *h = c->h;
    struct httpd_req *r = c->front;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_conns--;
    drop_queue(c);
    event_free(c->head_timer);
    if (c->flush_ev) {
        evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
        event_free(c->flush_ev);
    }
    bufferevent_free(c->bev);
    free(c);
    if (!r)
        return;
    if (r->state != R_HANDLER) {
        req_free(r); /* never reached the handler */
        return;
    }
    /* The handler still holds the request: detach it and say so. The
     * callback may reply, which then only frees the request. */
    h->inflight--;
    r->conn = NULL;
    if (r->on_close)
        r->on_close(r, r->on_close_arg);
}

/* Close a connection that ends normally (its last answer sent, or idle).
 * Over TLS, say so first with close_notify: a client reading an answer to
 * the end of the stream (HTTP/1.0, Connection: close) can then tell the end
 * from a cut. Best effort: the alert goes straight to the socket (no output
 * is pending here) and its reply is not awaited. */
static void conn_free_graceful(struct conn *c)
{
    if (c->ssl && SSL_is_init_finished(c->ssl) && !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN)) {
        SSL_shutdown(c->ssl);
        ERR_clear_error(); /* a peer already gone leaves errors for the next user of this thread */
    }
    conn_free(c);
}

/* ---- accepting ---------------------------------------------------------- */

/* Accept trouble comes in floods (a full fd table fails every accept): log
 * the first, then at most one line a second saying how many were skipped. */
static void accept_log(struct httpd *h, const char *what, int err)
{
    uint64_t now = clock_mono_us();
    if (h->log_at_us && now - h->log_at_us < 1000000) {
        h->log_skipped++;
        return;
    }
    log_msg(LOG_WARN, "%s: %s (%lu similar in the last second)", what, strerror(err), h->log_skipped);
    h->log_at_us = now;
    h->log_skipped = 0;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)l;
    (void)salen;
    struct httpd *h = arg;
    /* Past the limit a connection is closed at once: it costs a descriptor
     * only for this instant, and the client sees a clean close. */
    if (h->n_conns >= h->lim.max_connections) {
        close(fd);
        accept_log(h, "connection refused: max_connections_per_worker reached", EMFILE);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = xcalloc(1, sizeof *c);
    c->h = h;
    if (h->tls) {
        /* The bufferevent owns the SSL from here on, also when making it
         * fails (BEV_OPT_CLOSE_ON_FREE). It writes straight to the socket,
         * so its output buffer holds exactly the plaintext not yet taken by
         * SSL_write: httpd_stream_backlog() and the pause marks count the
         * same bytes as over plain TCP. */
        c->ssl = SSL_new(h->tls->ctx);
        c->bev = c->ssl ? bufferevent_openssl_socket_new(h->base, fd, c->ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                         BEV_OPT_CLOSE_ON_FREE)
                        : NULL;
    } else {
        c->bev = bufferevent_socket_new(h->base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    c->head_timer = evtimer_new(h->base, head_timeout_cb, c);
    if (c->bev && !c->ssl) {
        c->flush_ev = event_new(h->base, -1, 0, flush_cb, c);
        c->out_cb = c->flush_ev ? evbuffer_add_cb(bufferevent_get_output(c->bev), output_added_cb, c) : NULL;
    }
    if (!c->bev || !c->head_timer || (!c->ssl && !c->out_cb)) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->head_timer)
            event_free(c->head_timer);
        if (c->flush_ev)
            event_free(c->flush_ev);
        free(c);
        return;
    }
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof c->peer);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, c->peer, sizeof c->peer);
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
    c->state = C_HEAD;
    bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
    /* write_cb runs once the output has drained to half the pause mark. */
    bufferevent_setwatermark(c->bev, EV_WRITE, HTTPD_DRAIN_LOW_BYTES, 0);
    /* Unread input is bounded: a head cannot exceed the limit anyway, and a
     * body is moved out as it arrives. Past this much, libevent stops
     * reading from the socket until we consume (a pipelining client that
     * runs ahead is held back by TCP, not by our memory).
     * Not over TLS: there libevent can stop reading a record half-way when
     * the input reaches the mark (it reads into the space it reserved), and
     * the rest of the record, decrypted and held inside OpenSSL, is read
     * only when more bytes reach the socket -- a pipelining client that
     * waits for its answers waits forever (tls_listener.test.mjs saw 1982 of
     * 2009 answered with a 2 KiB limit). There conn_arm() bounds the input. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, c->ssl ? 0 : h->lim.max_header_bytes + 1);
    struct timeval wt = ms_tv(h->lim.write_timeout_ms);
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    if (c->ssl)
        bufferevent_enable(c->bev, EV_WRITE);
    /* else flush_cb writes, and arms the write event only when it must */
    conn_arm(c);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct httpd *h = arg;
    if (h->listener && !h->draining)
        evconnlistener_enable(h->listener);
}

/* accept() failed with something other than "try again". Out of
 * descriptors or memory, the listener would be readable again at once and
 * spin the loop: rest it a moment instead. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct httpd *h = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        evconnlistener_disable(l);
        struct timeval tv = ms_tv(ACCEPT_BACKOFF_MS);
        evtimer_add(h->accept_timer, &tv);
        accept_log(h, "accept failed, pausing accepts for 200 ms", err);
        return;
    }
    accept_log(h, "accept failed", err);
}

struct httpd *httpd_new(struct event_base *base, int listen_fd, const struct httpd_limits *limits,
                        httpd_handler handler, httpd_reject_cb reject, void *arg)
{
    struct httpd *h = xcalloc(1, sizeof *h);
    h->base = base;
    h->lim = *limits;
    if (!h->lim.max_connections)
        h->lim.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!h->lim.max_pipelined)
        h->lim.max_pipelined = DEFAULT_MAX_PIPELINED;
    /* Whole seconds, rounded down: the client's idle clock starts after ours
     * (when the answer reaches it), so it must not be told more. Under a
     * second says timeout=0, which clients take as "do not reuse". */
    h->keep_alive_hdr_len = (size_t)snprintf(h->keep_alive_hdr, sizeof h->keep_alive_hdr,
                                             "Keep-Alive: timeout=%u\r\n", h->lim.header_timeout_ms / 1000);
    h->handler = handler;
    h->reject = reject;
    h->arg = arg;
    h->accept_timer = evtimer_new(base, accept_resume_cb, h);
    if (!h->accept_timer)
        goto fail;
    h->listener = evconnlistener_new(base, accept_cb, h, LEV_OPT_CLOSE_ON_FREE, 0, listen_fd);
    if (!h->listener)
        goto fail_timer;
    evconnlistener_set_error_cb(h->listener, accept_error_cb);
    return h;

fail_timer:
    event_free(h->accept_timer);
fail:
    free(h);
    return NULL;
}

void httpd_set_head_hook(struct httpd *h, httpd_head_cb on_head)
{
    h->on_head = on_head;
}

void httpd_set_tls(struct httpd *h, struct httpd_tls *tls)
{
    h->tls = tls;
}

/* ---- TLS context -------------------------------------------------------- */

/* err = "<what> <file>: <OpenSSL's reason>"; clears this thread's OpenSSL
 * errors, which would otherwise be blamed on the next TLS call here. */
static void tls_err(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    const char *lib = e ? ERR_lib_error_string(e) : NULL;
    if (reason && lib)
        snprintf(err, errlen, "%s %s: %s (%s)", what, file, reason, lib);
    else
        snprintf(err, errlen, "%s %s: %s", what, file, reason ? reason : "not valid PEM");
    ERR_clear_error();
}

/* Fail early, and with the system's words, on a file we cannot open: OpenSSL
 * would say only "system lib". */
static int tls_readable(const char *what, const char *file, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "%s %s: %s", what, file, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

/* Both binaries speak HTTP/1.1 only: settle on it when the client offers it
 * (curl and browsers offer h2 first); a client that offers only other
 * protocols gets no ALPN answer, and finds out from the first response. */
static int tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, outlen, http11, sizeof http11 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

struct httpd_tls *httpd_tls_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    ERR_clear_error();
    if (tls_readable("certificate chain", cert_file, err, errlen) < 0 ||
        tls_readable("private key", key_file, err, errlen) < 0)
        return NULL;
    struct httpd_tls *t = xcalloc(1, sizeof *t);
    t->ctx = SSL_CTX_new(TLS_server_method());
    if (!t->ctx) {
        tls_err(err, errlen, "cannot make a TLS context for", cert_file);
        goto fail;
    }
    /* TLS 1.0 and 1.1 are deprecated (RFC 8996). Client-initiated
     * renegotiation would let one client make us redo handshakes at will. */
    if (!SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION)) {
        tls_err(err, errlen, "cannot require TLS 1.2 for", cert_file);
        goto fail_ctx;
    }
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    /* An idle keep-alive connection gives back its record buffers (~34 KiB
     * each): thousands of them are the normal case for a gateway. */
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(t->ctx, tls_alpn_cb, NULL);
    if (SSL_CTX_use_certificate_chain_file(t->ctx, cert_file) != 1) {
        tls_err(err, errlen, "cannot load the certificate chain", cert_file);
        goto fail_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(t->ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        /* Also where a key of the wrong pair is caught: "key values mismatch". */
        tls_err(err, errlen, "cannot load the private key", key_file);
        goto fail_ctx;
    }
    if (SSL_CTX_check_private_key(t->ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "private key %s does not match the certificate in %s", key_file, cert_file);
        goto fail_ctx;
    }
    /* An expired certificate still loads (clients will refuse it): say so
     * at start-up rather than leave it to the first failed handshake. */
    X509 *leaf = SSL_CTX_get0_certificate(t->ctx);
    if (leaf && X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0)
        log_warn("tls: the certificate in %s has expired: clients will refuse it", cert_file);
    else if (leaf && X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0)
        log_warn("tls: the certificate in %s is not valid yet: clients will refuse it", cert_file);
    return t;

fail_ctx:
    SSL_CTX_free(t->ctx);
fail:
    free(t);
    return NULL;
}

void httpd_tls_free(struct httpd_tls *tls)
{
    if (!tls)
        return;
    SSL_CTX_free(tls->ctx); /* an SSL still open holds its own reference */
    free(tls);
}

void httpd_drain(struct httpd *h)
{
    if (h->draining)
        return;
    h->draining = 1;
    if (h->listener) {
        evconnlistener_free(h->listener);
        h->listener = NULL;
    }
    evtimer_del(h->accept_timer);
    /* Idle connections close now; the others after their current answer
     * (write_head() adds Connection: close while draining). */
    struct conn *c = h->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state == C_HEAD && !c->front && !c->queue &&
            evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            conn_free_graceful(c);
    }
}

void httpd_free(struct httpd *h)
{
    if (!h)
        return;
    if (h->listener)
        evconnlistener_free(h->listener);
    while (h->conns)
        conn_free(h->conns);
    event_free(h->accept_timer);
    free(h);
}

size_t httpd_inflight(const struct httpd *h)
{
    return h->inflight;
}

size_t httpd_connections(const struct httpd *h)
{
    return h->n_conns;
}

/* Both servers listen the same way; SO_REUSEPORT lets the gateway's workers
 * each bind the port, and is harmless for one listener. */
int httpd_listen(const char *host, int port, int *bound, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc) {
        snprintf(err, errlen, "cannot resolve listen host %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}
