/* httpd.h: a small HTTP/1.1 server on a libevent event_base.
 *
 * Both binaries serve HTTP through this module: cascaded (the gateway) and
 * cascade-engine. It exists, rather than evhttp, because every failure a
 * client can cause must come back as an OpenAI error object with the right
 * status, which evhttp cannot do for an oversized body, and because the
 * gateway needs to know at once when a client goes away mid-request.
 *
 * What it does: keep-alive and pipelined requests (answered in order),
 * Content-Length and chunked request bodies, Expect: 100-continue (sent only
 * after the head hook accepted the head), responses with a length or
 * streamed with chunked encoding, and explicit limits. The request grammar
 * and its size limits are common/http1.c's (strict RFC 9112); here:
 *   - header bytes: over the limit -> 431 and close;
 *   - header time: headers not complete within header_timeout_ms of the
 *     connection going idle -> close, without a reply (a slow-loris client
 *     holds one socket and nothing else). The same time is the keep-alive
 *     idle time, and each keep-alive answer says so in whole seconds
 *     ("Keep-Alive: timeout=N"), so pooling clients drop an idle connection
 *     before we close it;
 *   - body bytes: over the limit -> 413 and close;
 *   - body time: no body bytes for read_timeout_ms -> 408 and close;
 *   - write time: a response that makes no progress for write_timeout_ms ->
 *     close;
 *   - connections: past max_connections, a new connection is closed at once;
 *     accept() out of descriptors or memory pauses the listener briefly
 *     (logged once a second at most) instead of spinning;
 *   - pipelining: at most max_pipelined requests wait behind the one being
 *     answered; past that, reading pauses until answers drain. Reading also
 *     pauses while 256 KiB of answers wait unsent (a client that pipelines
 *     and never reads gets TCP backpressure, not a growing buffer).
 *
 * TLS (optional, httpd_set_tls): every accepted connection is wrapped in a
 * libevent OpenSSL bufferevent and handshakes before its first request. All
 * of the above holds over TLS unchanged: the handshake counts against the
 * header time (a client that never finishes it is cut like a slow head), the
 * byte limits and httpd_stream_backlog() count plaintext, and a client that
 * speaks plain HTTP to a TLS port fails the handshake and is closed. The
 * certificate and key are read once, by httpd_tls_new(); replacing them on
 * SIGHUP is not supported (restart the process to rotate them).
 *
 * Threads and ownership: one struct httpd per event_base (per worker thread);
 * everything here runs on that thread. The handler receives a struct
 * httpd_req and owns it until it calls httpd_reply() or httpd_stream_end(),
 * which always releases it, even when the client has gone. If the client
 * disconnects first, the on_close callback runs (once); the handler should
 * then stop its work and still call httpd_reply()/httpd_stream_end(), which
 * only free. Strings returned by accessors live as long as the request.
 */
#ifndef CASCADE_HTTPD_H
#define CASCADE_HTTPD_H

#include <stddef.h>

struct event_base;

struct httpd_limits {
    size_t max_header_bytes;
    size_t max_body_bytes;
    unsigned header_timeout_ms;     /* also the keep-alive idle time */
    unsigned read_timeout_ms;
    unsigned write_timeout_ms;
    size_t max_connections;         /* per struct httpd (worker); 0: 10000 */
    size_t max_pipelined;           /* requests waiting behind the answered one; 0: 16 */
};

struct httpd;
struct httpd_req;
struct httpd_tls;

typedef void (*httpd_handler)(struct httpd_req *req, void *arg);
typedef void (*httpd_close_cb)(struct httpd_req *req, void *arg);
/* Told when the server itself rejects a request (400, 408, 413, 431, 501),
 * just before it replies: it may add response headers and log. The method
 * and path may be NULL when the request line itself was bad. */
typedef void (*httpd_reject_cb)(struct httpd_req *req, int status, void *arg);
/* Told when a request's head is complete and the request is next to be
 * answered, before any byte of its body is read and before 100 Continue is
 * sent. Return 0 to go on; or answer the request (httpd_reply and friends,
 * which free it) and return nonzero: the body is then never read, and when
 * one was due the connection closes after the answer. */
typedef int (*httpd_head_cb)(struct httpd_req *req, void *arg);
/* Told when the unsent output of a streamed answer has drained to
 * HTTPD_DRAIN_LOW_BYTES or less, so that a producer that paused because
 * httpd_stream_backlog() grew can go on without polling. It runs inside the
 * connection's write callback: it must not answer or free the request, only
 * note or schedule work (event_active). */
typedef void (*httpd_drain_cb)(struct httpd_req *req, void *arg);
#define HTTPD_DRAIN_LOW_BYTES (128u << 10)

/* Serve connections accepted on listen_fd (already bound and listening; the
 * server owns and closes it). reject may be NULL. NULL on failure. */
struct httpd *httpd_new(struct event_base *base, int listen_fd, const struct httpd_limits *limits,
                        httpd_handler handler, httpd_reject_cb reject, void *arg);
/* Install the head hook (NULL: none); it gets httpd_new's arg. */
void httpd_set_head_hook(struct httpd *h, httpd_head_cb on_head);

/* A server-side TLS context: TLS 1.2 or later, the certificate chain of
 * cert_file (PEM, the leaf first) and the private key of key_file (PEM),
 * checked at load to match. ALPN, when the client offers it, settles on
 * http/1.1. NULL with err set (naming the file) on failure. Immutable once
 * made: one context may serve every worker's httpd at once (any thread). */
struct httpd_tls *httpd_tls_new(const char *cert_file, const char *key_file, char *err, size_t errlen);
/* Free it once no httpd that was given it accepts any more (after their
 * httpd_free); connections still open keep what they need. NULL: no-op. */
void httpd_tls_free(struct httpd_tls *tls);
/* Serve TLS (tls not NULL) or plain HTTP (NULL) on connections accepted
 * from now on; borrowed. Call from h's thread, normally before its loop runs. */
void httpd_set_tls(struct httpd *h, struct httpd_tls *tls);
/* A bound, listening, non-blocking socket with SO_REUSEADDR and
 * SO_REUSEPORT; *bound gets the port (the kernel's pick when port is 0).
 * The fd, or -1 with err set. */
int httpd_listen(const char *host, int port, int *bound, char *err, size_t errlen);
/* Closes every connection at once; requests still held by handlers see on_close. */
void httpd_free(struct httpd *h);
/* Stop accepting; close idle connections now and the others after their
 * current response (Connection: close). */
void httpd_drain(struct httpd *h);
/* Requests dispatched to the handler and not yet answered. */
size_t httpd_inflight(const struct httpd *h);
/* Open connections. */
size_t httpd_connections(const struct httpd *h);

const char *httpd_req_method(const struct httpd_req *r);
const char *httpd_req_path(const struct httpd_req *r);      /* without the query */
const char *httpd_req_query(const struct httpd_req *r);     /* after '?', or NULL */
/* First header of that name (case-insensitive), or NULL. */
const char *httpd_req_header(const struct httpd_req *r, const char *name);
const char *httpd_req_body(const struct httpd_req *r, size_t *len);   /* NUL-terminated */
const char *httpd_req_peer(const struct httpd_req *r);
/* A few bytes the head hook leaves for the handler of the same request (a
 * digest it computed), so the handler need not compute them again. Set
 * copies up to HTTPD_NOTE_MAX bytes; get returns NULL when none was set. */
#define HTTPD_NOTE_MAX 32
void httpd_req_set_note(struct httpd_req *r, const void *p, size_t n);
const void *httpd_req_note(const struct httpd_req *r, size_t *n);
struct event_base *httpd_req_base(const struct httpd_req *r);
int httpd_req_client_gone(const struct httpd_req *r);
void httpd_req_on_close(struct httpd_req *r, httpd_close_cb cb, void *arg);

/* Add a response header; call before httpd_reply or httpd_stream_begin. */
void httpd_resp_header(struct httpd_req *r, const char *name, const char *value);
/* Send a complete response and release the request. */
void httpd_reply(struct httpd_req *r, int status, const char *content_type, const char *body, size_t len);
/* Send an OpenAI error object {"error":{...}} and release the request. */
void httpd_reply_error(struct httpd_req *r, int status, const char *type, const char *code,
                       const char *param, const char *message);

/* A streamed response: begin, write any number of times, end (releases). */
void httpd_stream_begin(struct httpd_req *r, int status, const char *content_type);
void httpd_stream_write(struct httpd_req *r, const char *data, size_t len);
void httpd_stream_end(struct httpd_req *r);
/* Bytes written but not yet sent to the client; lets a producer slow down. */
size_t httpd_stream_backlog(const struct httpd_req *r);
/* Call cb each time the backlog drains to HTTPD_DRAIN_LOW_BYTES or less
 * (NULL: stop). Only while the answer streams; lives as long as r. */
void httpd_req_on_drain(struct httpd_req *r, httpd_drain_cb cb, void *arg);

const char *httpd_status_text(int status);

#endif
