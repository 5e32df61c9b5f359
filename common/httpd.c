/* httpd.c: see httpd.h for the contract.
 *
 * A connection moves through these states:
 *
 *   HEAD ──headers──> BODY ──body complete──> HANDLING ──reply──> HEAD (keep-alive)
 *     │                 │                        │           └──> CLOSING (flush, then free)
 *     └─ bad input: error reply, CLOSING         └─ client EOF: free conn, tell the handler
 *
 * The request object outlives its connection when the client leaves while a
 * handler holds it: conn_free() detaches it (req->conn = NULL) and the
 * handler's final reply call frees it.
 */
#include "common/httpd.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/mem.h"
#include "common/openai.h"

#define MAX_HEADERS 100

enum conn_state { C_HEAD, C_BODY, C_HANDLING, C_CLOSING };
enum chunk_phase { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };

struct conn;

struct header {
    const char *name, *value;
};

struct httpd_req {
    struct conn *conn;              /* NULL once the client has gone */
    struct httpd *h;
    struct event_base *base;
    char *head;                     /* the request head, split in place */
    const char *method, *path, *query;
    int minor;                      /* HTTP/1.<minor> */
    struct header hdrs[MAX_HEADERS];
    int n_hdrs;
    struct evbuffer *body;
    char *body_flat;                /* pulled up and NUL-terminated at dispatch */
    size_t body_len;
    struct evbuffer *resp_hdrs;     /* "Name: value\r\n" lines from httpd_resp_header */
    int streaming;
    int chunked_out;                /* streaming with chunked encoding (HTTP/1.1) */
    httpd_close_cb on_close;
    void *on_close_arg;
    char peer[64];
};

struct conn {
    struct httpd *h;
    struct bufferevent *bev;
    struct event *head_timer;
    struct conn *prev, *next;
    struct httpd_req *req;
    enum conn_state state;
    int keep_alive;
    int in_process;                 /* conn_process() is on the stack */
    size_t to_read;                 /* Content-Length left, or the current chunk's bytes left */
    int chunked;
    enum chunk_phase phase;
    char peer[64];
};

struct httpd {
    struct event_base *base;
    struct evconnlistener *listener;
    struct httpd_limits lim;
    httpd_handler handler;
    httpd_reject_cb reject;
    void *arg;
    struct conn *conns;
    size_t n_conns, inflight;
    int draining;
};

static void conn_process(struct conn *c);
static void conn_free(struct conn *c);

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
    default: return "Unknown";
    }
}

/* ---- requests ---------------------------------------------------------- */

static struct httpd_req *req_new(struct conn *c, char *head)
{
    struct httpd_req *r = xcalloc(1, sizeof *r);
    r->conn = c;
    r->h = c->h;
    r->base = c->h->base;
    r->head = head;
    r->body = evbuffer_new();
    r->resp_hdrs = evbuffer_new();
    memcpy(r->peer, c->peer, sizeof r->peer);
    return r;
}

static void req_free(struct httpd_req *r)
{
    free(r->head);
    free(r->body_flat);
    evbuffer_free(r->body);
    evbuffer_free(r->resp_hdrs);
    free(r);
}

const char *httpd_req_method(const struct httpd_req *r) { return r->method; }
const char *httpd_req_path(const struct httpd_req *r) { return r->path; }
const char *httpd_req_query(const struct httpd_req *r) { return r->query; }
const char *httpd_req_peer(const struct httpd_req *r) { return r->peer; }
struct event_base *httpd_req_base(const struct httpd_req *r) { return r->base; }
int httpd_req_client_gone(const struct httpd_req *r) { return r->conn == NULL; }

const char *httpd_req_header(const struct httpd_req *r, const char *name)
{
    for (int i = 0; i < r->n_hdrs; i++)
        if (strcasecmp(r->hdrs[i].name, name) == 0)
            return r->hdrs[i].value;
    return NULL;
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

void httpd_resp_header(struct httpd_req *r, const char *name, const char *value)
{
    /* Values come from us or are echoed client headers; strip CR/LF so an
     * echoed value cannot split the response. */
    evbuffer_add(r->resp_hdrs, name, strlen(name));
    evbuffer_add(r->resp_hdrs, ": ", 2);
    for (const char *p = value; *p; p++)
        if (*p != '\r' && *p != '\n')
            evbuffer_add(r->resp_hdrs, p, 1);
    evbuffer_add(r->resp_hdrs, "\r\n", 2);
}

/* ---- responses --------------------------------------------------------- */

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

static void add_str(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, s, strlen(s));
}

static void write_head(struct httpd_req *r, int status, const char *content_type, long long length)
{
    struct conn *c = r->conn;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char num[24];
    if (c->h->draining)
        c->keep_alive = 0;
    add_str(out, "HTTP/1.1 ");
    add_str(out, utoa(num + sizeof num, (unsigned)status, 10));
    evbuffer_add(out, " ", 1);
    add_str(out, httpd_status_text(status));
    evbuffer_add(out, "\r\n", 2);
    if (content_type) {
        add_str(out, "Content-Type: ");
        add_str(out, content_type);
        evbuffer_add(out, "\r\n", 2);
    }
    if (length >= 0) {
        add_str(out, "Content-Length: ");
        add_str(out, utoa(num + sizeof num, (unsigned long long)length, 10));
        evbuffer_add(out, "\r\n", 2);
    } else if (r->chunked_out)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    evbuffer_add_buffer(out, r->resp_hdrs);
    if (!c->keep_alive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
}

static void close_when_flushed_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_free(arg);
}

/* The response to the current request is fully queued: free the request and
 * read the next one, or close once the bytes are out. */
static void finish_response(struct httpd_req *r)
{
    struct conn *c = r->conn;
    req_free(r);
    if (!c)
        return;
    c->req = NULL;
    c->h->inflight--;
    if (!c->keep_alive) {
        c->state = C_CLOSING;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setcb(c->bev, NULL, close_when_flushed_cb, NULL, c);
        /* The write callback fires when the output drains; with nothing left
         * to write it would never fire, so check now. */
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_free(c);
        return;
    }
    c->state = C_HEAD;
    if (!c->in_process)
        conn_process(c);
}

void httpd_reply(struct httpd_req *r, int status, const char *content_type, const char *body, size_t len)
{
    if (r->conn) {
        write_head(r, status, content_type, (long long)len);
        if (len)
            evbuffer_add(bufferevent_get_output(r->conn->bev), body, len);
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
    r->chunked_out = r->minor >= 1;
    if (!r->chunked_out)
        r->conn->keep_alive = 0;
    write_head(r, status, content_type, -1);
}

void httpd_stream_write(struct httpd_req *r, const char *data, size_t len)
{
    if (!r->conn || len == 0)
        return;
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    if (r->chunked_out) {
        char num[24];
        add_str(out, utoa(num + sizeof num, len, 16));
        evbuffer_add(out, "\r\n", 2);
        evbuffer_add(out, data, len);
        evbuffer_add(out, "\r\n", 2);
    } else {
        evbuffer_add(out, data, len);
    }
}

void httpd_stream_end(struct httpd_req *r)
{
    if (r->conn && r->chunked_out)
        evbuffer_add(bufferevent_get_output(r->conn->bev), "0\r\n\r\n", 5);
    finish_response(r);
}

size_t httpd_stream_backlog(const struct httpd_req *r)
{
    return r->conn ? evbuffer_get_length(bufferevent_get_output(r->conn->bev)) : 0;
}

/* An error found while reading a request: reply (when there is something to
 * say) and close, since the rest of the stream can no longer be framed. */
static void conn_fail(struct conn *c, int status, const char *message)
{
    if (status == 0) {
        conn_free(c);
        return;
    }
    if (!c->req) {
        /* Not even a request line: make a bare request to answer through. */
        c->req = req_new(c, NULL);
        c->req->minor = 1;
    }
    c->keep_alive = 0;
    c->state = C_HANDLING;
    c->h->inflight++;
    if (c->h->reject)
        c->h->reject(c->req, status, c->h->arg);
    httpd_reply_error(c->req, status, "invalid_request_error", NULL, NULL, message);
}

/* ---- parsing ----------------------------------------------------------- */

static int is_tchar(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Split the head (request line + header lines, CRLF-terminated, NUL at the
 * end) in place. Returns 0, or an HTTP status for the error. */
static int parse_head(struct httpd_req *r, const char **why)
{
    char *p = r->head;
    char *eol = strstr(p, "\r\n");
    *eol = '\0';
    char *sp1 = strchr(p, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || sp1 == p || sp2 == sp1 + 1) {
        *why = "malformed request line";
        return 400;
    }
    *sp1 = *sp2 = '\0';
    for (char *m = p; *m; m++)
        if (!is_tchar((unsigned char)*m)) {
            *why = "malformed request method";
            return 400;
        }
    if (strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || !(sp2[8] == '0' || sp2[8] == '1') || sp2[9]) {
        *why = "unsupported HTTP version";
        return 400;
    }
    r->method = p;
    r->minor = sp2[8] - '0';
    char *target = sp1 + 1;
    if (target[0] != '/') {
        *why = "request target must be an absolute path";
        return 400;
    }
    char *q = strchr(target, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    }
    r->path = target;

    p = eol + 2;
    while (*p) {
        eol = strstr(p, "\r\n");
        *eol = '\0';
        if (*p == ' ' || *p == '\t') {
            *why = "obsolete header line folding";
            return 400;
        }
        char *colon = strchr(p, ':');
        if (!colon || colon == p) {
            *why = "malformed header line";
            return 400;
        }
        for (char *n = p; n < colon; n++)
            if (!is_tchar((unsigned char)*n)) {
                *why = "malformed header name";
                return 400;
            }
        if (r->n_hdrs == MAX_HEADERS) {
            *why = "too many headers";
            return 431;
        }
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *end = v + strlen(v);
        while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        r->hdrs[r->n_hdrs].name = p;
        r->hdrs[r->n_hdrs].value = v;
        r->n_hdrs++;
        p = eol + 2;
    }
    return 0;
}

/* Decide framing and keep-alive from the headers. 0, or an HTTP status. */
static int setup_body(struct conn *c, const char **why)
{
    struct httpd_req *r = c->req;
    const char *te = httpd_req_header(r, "Transfer-Encoding");
    const char *conn_hdr = httpd_req_header(r, "Connection");
    c->keep_alive = r->minor >= 1;
    if (conn_hdr) {
        if (strcasestr(conn_hdr, "close"))
            c->keep_alive = 0;
        else if (strcasestr(conn_hdr, "keep-alive"))
            c->keep_alive = 1;
    }
    c->chunked = 0;
    c->to_read = 0;
    /* Two Content-Length headers, or a length with chunked, is how requests
     * get smuggled past proxies: refuse both. */
    const char *cl = NULL;
    for (int i = 0; i < r->n_hdrs; i++) {
        if (strcasecmp(r->hdrs[i].name, "Content-Length") != 0)
            continue;
        if (cl && strcmp(cl, r->hdrs[i].value) != 0) {
            *why = "conflicting Content-Length headers";
            return 400;
        }
        cl = r->hdrs[i].value;
    }
    if (te) {
        if (cl) {
            *why = "both Content-Length and Transfer-Encoding";
            return 400;
        }
        if (strcasecmp(te, "chunked") != 0) {
            *why = "unsupported Transfer-Encoding";
            return 501;
        }
        c->chunked = 1;
        c->phase = CH_SIZE;
    } else if (cl) {
        if (!*cl || strspn(cl, "0123456789") != strlen(cl) || strlen(cl) > 15) {
            *why = "invalid Content-Length";
            return 400;
        }
        c->to_read = (size_t)strtoull(cl, NULL, 10);
        if (c->to_read > c->h->lim.max_body_bytes) {
            *why = "request body exceeds the size limit";
            return 413;
        }
    }
    const char *expect = httpd_req_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && r->minor >= 1)
        bufferevent_write(c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    return 0;
}

/* Read the head once it is all there. 1 when done, 0 when more bytes are
 * needed, -1 when the connection failed. */
static int read_head(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    /* Blank lines before a request line are allowed (RFC 9112 2.2). */
    while (avail >= 2) {
        unsigned char two[2];
        evbuffer_copyout(in, two, 2);
        if (two[0] != '\r' || two[1] != '\n')
            break;
        evbuffer_drain(in, 2);
        avail -= 2;
    }
    if (avail == 0)
        return 0;
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    size_t limit = c->h->lim.max_header_bytes;
    if (end.pos < 0) {
        if (avail > limit) {
            conn_fail(c, 431, "request header section exceeds the size limit");
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)end.pos + 4;
    if (head_len > limit) {
        conn_fail(c, 431, "request header section exceeds the size limit");
        return -1;
    }
    char *head = xmalloc(head_len + 1);
    evbuffer_remove(in, head, head_len);
    head[head_len - 2] = '\0'; /* keep the last header's CRLF, drop the blank line */
    c->req = req_new(c, head);
    const char *why = NULL;
    int status = parse_head(c->req, &why);
    if (!status)
        status = setup_body(c, &why);
    if (status) {
        conn_fail(c, status, why);
        return -1;
    }
    evtimer_del(c->head_timer);
    return 1;
}

/* Move chunked body bytes into the request. 1 when complete, 0 when more are
 * needed, -1 on error. */
static int read_chunked(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct httpd_req *r = c->req;
    for (;;) {
        switch (c->phase) {
        case CH_SIZE:
        case CH_DATA_END:
        case CH_TRAILER: {
            size_t n;
            char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
            if (!line) {
                if (evbuffer_get_length(in) > 1024) {
                    conn_fail(c, 400, "malformed chunked body");
                    return -1;
                }
                return 0;
            }
            if (c->phase == CH_DATA_END) {
                int ok = n == 0;
                free(line);
                if (!ok) {
                    conn_fail(c, 400, "malformed chunked body");
                    return -1;
                }
                c->phase = CH_SIZE;
                continue;
            }
            if (c->phase == CH_TRAILER) {
                free(line);
                if (n == 0)
                    return 1;
                continue;
            }
            char *endp;
            unsigned long long sz = strtoull(line, &endp, 16);
            int bad = endp == line || (*endp && *endp != ';' && *endp != ' ');
            free(line);
            if (bad) {
                conn_fail(c, 400, "malformed chunk size");
                return -1;
            }
            if (sz > c->h->lim.max_body_bytes ||
                evbuffer_get_length(r->body) + sz > c->h->lim.max_body_bytes) {
                conn_fail(c, 413, "request body exceeds the size limit");
                return -1;
            }
            c->to_read = (size_t)sz;
            c->phase = sz ? CH_DATA : CH_TRAILER;
            continue;
        }
        case CH_DATA: {
            size_t avail = evbuffer_get_length(in);
            if (avail == 0)
                return 0;
            size_t n = avail < c->to_read ? avail : c->to_read;
            evbuffer_remove_buffer(in, r->body, n);
            c->to_read -= n;
            if (c->to_read == 0)
                c->phase = CH_DATA_END;
            continue;
        }
        }
    }
}

static int read_body(struct conn *c)
{
    if (c->chunked)
        return read_chunked(c);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < c->to_read ? avail : c->to_read;
    if (n) {
        evbuffer_remove_buffer(in, c->req->body, n);
        c->to_read -= n;
    }
    return c->to_read == 0;
}

static void dispatch(struct conn *c)
{
    struct httpd_req *r = c->req;
    r->body_len = evbuffer_get_length(r->body);
    r->body_flat = xmalloc(r->body_len + 1);
    evbuffer_remove(r->body, r->body_flat, r->body_len);
    r->body_flat[r->body_len] = '\0';
    c->state = C_HANDLING;
    c->h->inflight++;
    /* While the handler works, reads only watch for the client leaving. */
    struct timeval wt = ms_tv(c->h->lim.write_timeout_ms);
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    c->h->handler(r, c->h->arg);
}

/* Advance the connection as far as its buffered input allows. */
static void conn_process(struct conn *c)
{
    c->in_process = 1;
    for (;;) {
        if (c->state == C_HEAD) {
            if (c->h->draining && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
                c->in_process = 0;
                conn_free(c);
                return;
            }
            if (!evtimer_pending(c->head_timer, NULL)) {
                struct timeval tv = ms_tv(c->h->lim.header_timeout_ms);
                evtimer_add(c->head_timer, &tv);
            }
            int rc = read_head(c);
            if (rc <= 0)
                break;
            c->state = C_BODY;
            struct timeval rt = ms_tv(c->h->lim.read_timeout_ms);
            struct timeval wt = ms_tv(c->h->lim.write_timeout_ms);
            bufferevent_set_timeouts(c->bev, &rt, &wt);
        }
        if (c->state == C_BODY) {
            int rc = read_body(c);
            if (rc <= 0)
                break;
            dispatch(c);
            /* The handler may have replied already, leaving us in C_HEAD for
             * a pipelined request, or closing. */
            continue;
        }
        break; /* HANDLING or CLOSING: nothing to parse now */
    }
    c->in_process = 0;
}

/* ---- connection events ------------------------------------------------- */

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->state == C_HANDLING) {
        /* Pipelined bytes wait until the current response is out, but only
         * so many: past the header limit, stop reading from this client. */
        if (evbuffer_get_length(bufferevent_get_input(bev)) > c->h->lim.max_header_bytes)
            bufferevent_disable(bev, EV_READ);
        return;
    }
    conn_process(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && c->state == C_BODY) {
        conn_fail(c, 408, "timed out reading the request body");
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
    if (c->state == C_HEAD)
        conn_free(c); /* idle keep-alive, or headers too slow: close quietly */
}

static void conn_free(struct conn *c)
{
    struct httpd *h = c->h;
    struct httpd_req *r = c->req;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_conns--;
    event_free(c->head_timer);
    bufferevent_free(c->bev);
    free(c);
    if (r) {
        /* The handler still holds the request: detach it and say so. The
         * callback may reply, which then only frees the request. */
        h->inflight--;
        r->conn = NULL;
        if (r->on_close)
            r->on_close(r, r->on_close_arg);
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)l;
    (void)salen;
    struct httpd *h = arg;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = xcalloc(1, sizeof *c);
    c->h = h;
    c->bev = bufferevent_socket_new(h->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->head_timer = evtimer_new(h->base, head_timeout_cb, c);
    if (!c->bev || !c->head_timer) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            close(fd);
        if (c->head_timer)
            event_free(c->head_timer);
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
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    struct timeval wt = ms_tv(h->lim.write_timeout_ms);
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct timeval tv = ms_tv(h->lim.header_timeout_ms);
    evtimer_add(c->head_timer, &tv);
}

struct httpd *httpd_new(struct event_base *base, int listen_fd, const struct httpd_limits *limits,
                        httpd_handler handler, httpd_reject_cb reject, void *arg)
{
    struct httpd *h = xcalloc(1, sizeof *h);
    h->base = base;
    h->lim = *limits;
    h->handler = handler;
    h->reject = reject;
    h->arg = arg;
    h->listener = evconnlistener_new(base, accept_cb, h, LEV_OPT_CLOSE_ON_FREE, 0, listen_fd);
    if (!h->listener) {
        free(h);
        return NULL;
    }
    return h;
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
    struct conn *c = h->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state == C_HEAD && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            conn_free(c);
        else
            c->keep_alive = 0;
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
