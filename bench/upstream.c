/* upstream.c: a fast, fixed-delay OpenAI-compatible upstream for benchmarks.
 *
 * The gateway-overhead benchmark needs an upstream whose own cost is small
 * and constant, so that "gateway minus direct" isolates what the gateway
 * adds. This is that test double for a remote engine we do not own: one
 * libevent evhttp loop, no model, a fixed answer after a fixed delay.
 *
 *   POST /v1/chat/completions  non-stream: one small chat.completion JSON;
 *                              stream: --chunks content chunks, a finish
 *                              chunk, a usage chunk (always, as vLLM's
 *                              --enable-force-include-usage does), [DONE],
 *                              as SSE over chunked transfer encoding
 *   GET /v1/models, GET /health, GET /_stats ({"requests","stream_requests"})
 *
 * The model field echoes the request's model. Bodies are parsed with jansson
 * (for "stream" and "model"), as a real engine would parse them.
 *
 * Usage: upstream [--port N] [--host 127.0.0.1] [--delay-us D] [--chunks N]
 *                 [--chunk-delay-us D]
 * Prints "UPSTREAM_PORT=<port>" on stdout once listening. SIGTERM/SIGINT stop it.
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#define UP_MAX_MODEL 128

struct up_opts {
    const char *host;
    int port;
    long delay_us;
    int chunks;
    long chunk_delay_us;
};

/* The whole server's state; one thread touches it, so no locks. */
struct up_server {
    struct up_opts o;
    struct event_base *base;
    unsigned long requests, stream_requests;
};

/* One chat request waiting for its delay, or part way through its stream.
 * libevent keeps an evhttp_request alive until we finish it even when the
 * client has gone (the request is then detached and our final send frees
 * it), so holding the pointer across timers is safe. */
struct up_call {
    struct up_server *s;
    struct evhttp_request *req;
    struct event *timer;
    int stream;
    int sent;               /* content chunks sent so far */
    char model[UP_MAX_MODEL];
};

/* The non-stream answer. Small on purpose: the benchmark measures the
 * gateway's per-request cost, not bulk copying. */
static const char *up_content = "Hello from the benchmark upstream.";

/* up_send_json: a whole JSON reply with Content-Length (evhttp adds it). */
static void up_send_json(struct evhttp_request *req, int code, const char *reason,
                         const char *body)
{
    struct evbuffer *out = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, code, reason, out);
    evbuffer_free(out);
}

/* up_nodelay: evhttp does not set TCP_NODELAY; without it, back-to-back
 * stream chunks can wait on a delayed ACK (40 ms) and swamp the figures. */
static void up_nodelay(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    int one = 1;

    if (bev)
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* up_call_free: after the final send; the evhttp_request is libevent's. */
static void up_call_free(struct up_call *c)
{
    if (!c)
        return;
    if (c->timer)
        event_free(c->timer);
    free(c);
}

/* up_chunk: one piece of a chunked reply. Each call becomes its own HTTP
 * chunk, as a real engine's per-token flushes do. */
static void up_chunk(struct up_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void up_chunk(struct up_call *c, const char *fmt, ...)
{
    struct evbuffer *b = evbuffer_new();
    va_list ap;

    va_start(ap, fmt);
    evbuffer_add_vprintf(b, fmt, ap);
    va_end(ap);
    evhttp_send_reply_chunk(c->req, b);
    evbuffer_free(b);
}

/* up_stream_step: send content chunks until the next pause (or all of them),
 * then the tail. Chunk i's content is "tok<i> ". */
static void up_stream_step(struct up_call *c)
{
    const struct up_opts *o = &c->s->o;

    while (c->sent < o->chunks) {
        up_chunk(c,
                 "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                 "\"model\":\"%s\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"},"
                 "\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                 c->model, c->sent);
        c->sent++;
        if (o->chunk_delay_us > 0 && c->sent < o->chunks) {
            struct timeval tv = { o->chunk_delay_us / 1000000, o->chunk_delay_us % 1000000 };
            evtimer_add(c->timer, &tv);
            return;
        }
    }
    up_chunk(c,
             "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":0,"
             "\"model\":\"%s\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
             "\"finish_reason\":\"stop\"}]}\n\n"
             "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":0,"
             "\"model\":\"%s\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,"
             "\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n"
             "data: [DONE]\n\n",
             c->model, c->model, o->chunks, 8 + o->chunks);
    evhttp_send_reply_end(c->req);
    up_call_free(c);
}

/* up_answer: the delay is over; answer the call. */
static void up_answer(struct up_call *c)
{
    if (c->stream) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        /* no Content-Length on an HTTP/1.1 reply: evhttp chunks it */
        evhttp_send_reply_start(c->req, 200, "OK");
        up_chunk(c,
                 "data: {\"id\":\"chatcmpl-up\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                 "\"model\":\"%s\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                 "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                 c->model);
        up_stream_step(c);
        return;
    }
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"id\":\"chatcmpl-up\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"%s\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
             "\"logprobs\":null,\"finish_reason\":\"stop\"}],"
             "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":7,\"total_tokens\":15}}",
             c->model, up_content);
    up_send_json(c->req, 200, "OK", body);
    up_call_free(c);
}

static void up_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct up_call *c = arg;

    (void)fd;
    (void)what;
    /* the first firing ends the delay; later ones pace the stream */
    if (c->stream && c->sent > 0)
        up_stream_step(c);
    else
        up_answer(c);
}

/* up_chat: POST /v1/chat/completions. Parse just enough of the body to
 * know the model and whether to stream, then answer now or after the delay.
 * A body that is not a JSON object gets OpenAI's 400 error, as vLLM does. */
static void up_chat(struct up_server *s, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    json_t *model, *stream;
    struct up_call *c;

    if (!json_is_object(root)) {
        json_decref(root);
        up_send_json(req, 400, "Bad Request",
                     "{\"error\":{\"message\":\"body is not a JSON object\","
                     "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");
        return;
    }
    model = json_object_get(root, "model");
    stream = json_object_get(root, "stream");
    c = calloc(1, sizeof(*c));
    if (!c) {
        json_decref(root);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    c->s = s;
    c->req = req;
    c->stream = json_is_true(stream);
    /* echo the model, but only a plain one: it goes into JSON unescaped */
    const char *m = json_is_string(model) ? json_string_value(model) : "upstream-model";
    if (strlen(m) >= sizeof(c->model) || strpbrk(m, "\"\\") || strlen(m) != json_string_length(model))
        m = "upstream-model";
    snprintf(c->model, sizeof(c->model), "%s", m);
    json_decref(root);
    s->requests++;
    s->stream_requests += (unsigned long)c->stream;
    up_nodelay(req);
    c->timer = evtimer_new(s->base, up_timer_cb, c);
    if (!c->timer) {
        up_call_free(c);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    if (s->o.delay_us > 0) {
        struct timeval tv = { s->o.delay_us / 1000000, s->o.delay_us % 1000000 };
        evtimer_add(c->timer, &tv);
    } else {
        up_answer(c);
    }
}

/* up_handle: evhttp's one callback: route by method and exact path. */
static void up_handle(struct evhttp_request *req, void *arg)
{
    struct up_server *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char body[256];

    if (cmd == EVHTTP_REQ_POST && strcmp(uri, "/v1/chat/completions") == 0) {
        up_chat(s, req);
    } else if (cmd == EVHTTP_REQ_GET && strcmp(uri, "/health") == 0) {
        up_send_json(req, 200, "OK", "{\"status\":\"ok\"}");
    } else if (cmd == EVHTTP_REQ_GET && strcmp(uri, "/v1/models") == 0) {
        up_send_json(req, 200, "OK",
                     "{\"object\":\"list\",\"data\":[{\"id\":\"upstream-model\",\"object\":\"model\","
                     "\"created\":0,\"owned_by\":\"bench\"}]}");
    } else if (cmd == EVHTTP_REQ_GET && strcmp(uri, "/_stats") == 0) {
        snprintf(body, sizeof(body), "{\"requests\":%lu,\"stream_requests\":%lu}", s->requests,
                 s->stream_requests);
        up_send_json(req, 200, "OK", body);
    } else {
        up_send_json(req, 404, "Not Found",
                     "{\"error\":{\"message\":\"no such route\",\"type\":\"invalid_request_error\","
                     "\"param\":null,\"code\":null}}");
    }
}

/* up_signal_cb: SIGTERM/SIGINT end the loop; main frees and exits 0, so
 * ASan's leak check runs on a clean shutdown. */
static void up_signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static void up_usage(void)
{
    fprintf(stderr, "usage: upstream [--port N] [--host 127.0.0.1] [--delay-us D] [--chunks N]"
                    " [--chunk-delay-us D]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "port", required_argument, NULL, 'p' },
        { "host", required_argument, NULL, 'H' },
        { "delay-us", required_argument, NULL, 'd' },
        { "chunks", required_argument, NULL, 'n' },
        { "chunk-delay-us", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct up_server s = { .o = { .host = "127.0.0.1", .chunks = 8 } };
    struct evhttp *http = NULL;
    struct evhttp_bound_socket *bound;
    struct event *sigterm = NULL, *sigint = NULL;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int opt, rc = 1;

    while ((opt = getopt_long(argc, argv, "p:H:d:n:c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': s.o.port = atoi(optarg); break;
        case 'H': s.o.host = optarg; break;
        case 'd': s.o.delay_us = atol(optarg); break;
        case 'n': s.o.chunks = atoi(optarg); break;
        case 'c': s.o.chunk_delay_us = atol(optarg); break;
        default: up_usage();
        }
    }
    if (s.o.port < 0 || s.o.port > 65535 || s.o.delay_us < 0 || s.o.chunks < 0 ||
        s.o.chunk_delay_us < 0)
        up_usage();
    signal(SIGPIPE, SIG_IGN);

    s.base = event_base_new();
    if (!s.base)
        goto fail;
    http = evhttp_new(s.base);
    if (!http)
        goto fail_base;
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(http, up_handle, &s);
    bound = evhttp_bind_socket_with_handle(http, s.o.host, (ev_uint16_t)s.o.port);
    if (!bound) {
        fprintf(stderr, "upstream: cannot listen on %s:%d\n", s.o.host, s.o.port);
        goto fail_http;
    }
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl) < 0)
        goto fail_http;
    sigterm = evsignal_new(s.base, SIGTERM, up_signal_cb, s.base);
    sigint = evsignal_new(s.base, SIGINT, up_signal_cb, s.base);
    if (!sigterm || !sigint)
        goto fail_signals;
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    printf("UPSTREAM_PORT=%d\n",
           ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port));
    fflush(stdout);
    event_base_dispatch(s.base);
    rc = 0;

fail_signals:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
fail_http:
    evhttp_free(http);
fail_base:
    event_base_free(s.base);
fail:
    return rc;
}
