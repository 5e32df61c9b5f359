/* cascade-engine: the native engine served over the OpenAI-compatible HTTP
 * protocol. A thin shell: common/httpd.h moves the bytes, common/openai.h and
 * common/completions.h parse and write the JSON, the native engine
 * (engines/native/runtime/native_engine.h) generates. No inference code lives here.
 *
 *   cascade-engine --model PATH [--listen HOST:PORT] [--tokenizer PATH]
 *                  [--name ID] [--device cpu|cuda:N] [--threads N]
 *                  [--kv-mib N] [--max-batch N] [--max-queue N] [--ctx N]
 *                  [--tp N] [--ep N]
 *
 * Endpoints: POST /v1/chat/completions, POST /v1/completions (stream and
 * not, usage, logprobs), GET /v1/models, GET /health. Every error is an
 * OpenAI error object. Parameters the engine cannot honour (tools, non-text
 * parts, unknown fields: native_engine.h) get a 400 whose param names them. A client that disconnects cancels its generation.
 *
 * One event loop on the main thread serves HTTP; the engine computes on its
 * own threads and hands results back to that loop. On start it logs
 * {"msg":"listening","addr":"HOST:PORT"} (port 0 picks a free port) and
 * prints ENGINE_PORT=<port> on stdout. SIGTERM or SIGINT: stop accepting,
 * finish what is running (up to 10 s), exit.
 */
#include "common/completions.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/openai.h"
#include "engines/native/backend/comm.h"
#include "engines/native/backend/device.h"
#include "engines/native/runtime/native_engine.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* How long a SIGTERM waits for running generations before closing them. */
#define DRAIN_MS 10000

/* Everything the one event loop owns. */
struct server {
    struct event_base *base;
    struct httpd *httpd;
    struct engine *engine;
    struct event *sig_term, *sig_int, *drain_poll;
    uint64_t drain_deadline_ms;     /* 0 until a signal starts the drain */
    unsigned long next_id;          /* makes response ids unique within a run */
};

/* One generation in flight: the HTTP request and what has come back so far. */
struct call {
    struct server *s;
    struct httpd_req *r;
    int completion;                 /* /v1/completions, else chat */
    struct chat_request chat;       /* chat's, or the completion's chat view */
    struct completion_request comp;
    const struct chat_request *req; /* whichever of the two is in use */
    uint64_t engine_id;
    int engine_running;             /* submitted and not yet ended: cancel on close */
    int stream_open;                /* SSE headers sent: errors become error events */
    char id[48];
    int64_t created;
    struct evbuffer *text;          /* the answer so far (non-stream) */
    size_t text_len;                /* bytes of text produced so far */
    json_t *logprobs;               /* chat: the content array; completion: the legacy object */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The call ends with its HTTP reply; the request and answer go with it. */
static void call_free(struct call *c)
{
    if (c->completion)
        completion_request_free(&c->comp);
    else
        chat_request_free(&c->chat);
    if (c->text)
        evbuffer_free(c->text);
    json_decref(c->logprobs);
    free(c);
}

static void reply_error(struct httpd_req *r, int status, const char *type, const char *code,
                        const char *param, const char *message)
{
    httpd_reply_error(r, status, type, code, param, message);
}

/* The first bytes of a streamed answer: headers, and for chat the role. */
static void open_stream(struct call *c)
{
    if (c->stream_open)
        return;
    c->stream_open = 1;
    httpd_resp_header(c->r, "Cache-Control", "no-cache");
    httpd_stream_begin(c->r, 200, "text/event-stream");
    if (!c->completion) {
        size_t n;
        char *ev = openai_chat_chunk_event(c->id, c->created, c->req->model, "assistant", "", 0,
                                           NULL, NULL, NULL, NULL, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
    }
}

/* engine_token's alternatives as the parallel arrays the writers take. */
static void top_arrays(const struct engine_token *t, const char **tops, double *lps, size_t *n)
{
    *n = t->n_top < 20 ? t->n_top : 20;
    for (size_t i = 0; i < *n; i++) {
        tops[i] = t->top[i].token;
        lps[i] = t->top[i].logprob;
    }
}

/* A piece of text (maybe empty: bytes held back) and its logprobs. Streamed
 * calls forward it at once as one SSE event; others collect text and
 * logprobs for the final object. A token's text offset (completions) is
 * where its text starts in the answer, the echoed prompt included. */
static void on_token(void *ctx, const struct engine_token *t)
{
    struct call *c = ctx;
    const char *tops[20];
    double lps[20];
    size_t n_top = 0;
    json_t *entry = NULL;       /* this token's logprobs, in the endpoint's shape */

    if (c->req->logprobs && t->has_logprob) {
        top_arrays(t, tops, lps, &n_top);
        if (c->completion) {
            entry = completion_logprobs_new();
            completion_logprobs_add(entry, t->text, t->len, t->logprob, tops, lps, n_top,
                                    c->text_len);
            if (!c->req->stream) {
                completion_logprobs_add(c->logprobs, t->text, t->len, t->logprob, tops, lps,
                                        n_top, c->text_len);
            }
        } else {
            entry = openai_logprob_entry(t->text, t->len, t->logprob, tops, lps, n_top);
            if (!c->req->stream)
                json_array_append(c->logprobs, entry);
        }
    }
    c->text_len += t->len;
    if (c->req->stream) {
        if (t->len || entry) {
            open_stream(c);
            size_t n;
            char *ev;
            if (c->completion) {
                ev = completion_chunk_event(c->id, c->created, c->req->model, t->text, t->len,
                                            entry, NULL, &n);
            } else {
                json_t *arr = entry ? json_pack("[O]", entry) : NULL;
                ev = openai_chat_chunk_event(c->id, c->created, c->req->model, NULL, t->text,
                                             t->len, arr, NULL, NULL, NULL, &n);
                json_decref(arr);
            }
            httpd_stream_write(c->r, ev, n);
            free(ev);
        }
    } else {
        evbuffer_add(c->text, t->text, t->len);
    }
    json_decref(entry);
}

/* The end: the finish chunk, the usage chunk if asked for, [DONE]; or the
 * whole object. */
static void on_done(void *ctx, const struct engine_usage *u, const char *finish)
{
    struct call *c = ctx;
    struct openai_usage usage = {u->prompt_tokens, u->completion_tokens};
    c->engine_running = 0;
    if (c->req->stream) {
        open_stream(c);
        size_t n;
        char *ev = c->completion
                       ? completion_chunk_event(c->id, c->created, c->req->model, "", 0, NULL,
                                                finish, &n)
                       : openai_chat_chunk_event(c->id, c->created, c->req->model, NULL, NULL, 0,
                                                 NULL, finish, NULL, NULL, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        if (c->req->include_usage) {
            ev = c->completion ? completion_usage_event(c->id, c->created, c->req->model, &usage, &n)
                               : openai_chat_usage_event(c->id, c->created, c->req->model, &usage, NULL, &n);
            httpd_stream_write(c->r, ev, n);
            free(ev);
        }
        httpd_stream_write(c->r, OPENAI_SSE_DONE, strlen(OPENAI_SSE_DONE));
        httpd_stream_end(c->r);
    } else {
        size_t len = evbuffer_get_length(c->text);
        const char *text = len ? (const char *)evbuffer_pullup(c->text, -1) : "";
        char *body = c->completion
                         ? completion_response(c->id, c->created, c->req->model, text, len, finish,
                                               &usage, c->logprobs)
                         : openai_chat_response(c->id, c->created, c->req->model, text, len,
                                                finish, &usage, c->logprobs, NULL, NULL);
        httpd_reply(c->r, 200, "application/json", body, strlen(body));
        free(body);
    }
    call_free(c);
}

static void on_error(void *ctx, const struct engine_error *e)
{
    struct call *c = ctx;
    c->engine_running = 0;
    if (c->stream_open) {
        /* Headers are gone; OpenAI's clients read an error event instead. */
        struct openai_error oe;
        openai_error_set(&oe, e->status, e->type, e->code, NULL, "%s", e->message);
        size_t n;
        char *ev = openai_error_event(&oe, &n);
        httpd_stream_write(c->r, ev, n);
        free(ev);
        httpd_stream_end(c->r);
    } else {
        reply_error(c->r, e->status, e->type, e->code, NULL, e->message);
    }
    call_free(c);
}

/* The client went away: stop generating for it at once (that frees its KV
 * blocks and batch slot for others), then let httpd free the request. */
static void on_client_close(struct httpd_req *r, void *arg)
{
    (void)r;
    struct call *c = arg;
    if (c->engine_running)
        engine_cancel(c->s->engine, c->engine_id);
    if (c->stream_open)
        httpd_stream_end(c->r);     /* only frees: the client is gone */
    else
        httpd_reply(c->r, 499, NULL, NULL, 0);
    call_free(c);
}

static const struct engine_callbacks callbacks = {on_token, on_done, on_error};

/* POST /v1/chat/completions and /v1/completions: parse with the shared
 * schema code, submit, and let the callbacks answer. Parse errors are 400s
 * here; everything the engine refuses (context length, a full queue) comes
 * back through on_error with its own status. */
static void generate(struct server *s, struct httpd_req *r, int completion)
{
    size_t len;
    const char *body = httpd_req_body(r, &len);
    struct openai_error err;
    struct call *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->r = r;
    c->completion = completion;
    if (completion ? completion_request_parse(body, len, &c->comp, &err)
                   : chat_request_parse(body, len, &c->chat, &err)) {
        reply_error(r, err.status, err.type, err.code, err.param, err.message);
        free(c);
        return;
    }
    c->req = completion ? &c->comp.chat : &c->chat;
    /* What the engine cannot honour (tools, image parts, unknown fields, a
     * token id outside the vocabulary) is refused here with the field named
     * in param; submit would refuse it too, without the param. */
    if (native_engine_check_request(s->engine, c->req, &err) != 0) {
        reply_error(r, err.status, err.type, err.code, err.param, err.message);
        call_free(c);
        return;
    }
    snprintf(c->id, sizeof(c->id), "%s-%lx%08lx", completion ? "cmpl" : "chatcmpl",
             (unsigned long)time(NULL), s->next_id++);
    c->created = (int64_t)time(NULL);
    c->text = evbuffer_new();
    if (c->req->logprobs && !c->req->stream)
        c->logprobs = completion ? completion_logprobs_new() : json_array();
    if (completion && c->comp.echo) {
        /* echo: the prompt comes first in the text. */
        if (c->req->stream) {
            open_stream(c);
            size_t n;
            char *ev = completion_chunk_event(c->id, c->created, c->req->model, c->comp.prompt,
                                              c->comp.prompt_len, NULL, NULL, &n);
            httpd_stream_write(r, ev, n);
            free(ev);
        } else {
            evbuffer_add(c->text, c->comp.prompt, c->comp.prompt_len);
        }
        c->text_len = c->comp.prompt_len;
    }

    struct engine_request er = {.base = httpd_req_base(r), .chat = c->req, .model = c->req->model,
                                .stream = c->req->stream, .request_id = c->id, .max_tokens = c->req->max_tokens,
                                .logprobs = c->req->logprobs, .top_logprobs = c->req->top_logprobs};
    int rc = completion ? native_engine_submit_text(s->engine, &er, c->comp.prompt,
                                                    c->comp.prompt_len, &callbacks, c, &c->engine_id)
                        : engine_submit(s->engine, &er, &callbacks, c, &c->engine_id);
    if (rc < 0) {
        if (c->stream_open)
            httpd_stream_end(r);
        else
            reply_error(r, 503, "server_error", "engine_unavailable",
                        NULL, "the engine cannot take requests now");
        call_free(c);
        return;
    }
    c->engine_running = 1;
    httpd_req_on_close(r, on_client_close, c);
}

/* The router. Unknown paths get OpenAI's 404 error object. */
static void handle(struct httpd_req *r, void *arg)
{
    struct server *s = arg;
    const char *m = httpd_req_method(r), *p = httpd_req_path(r);

    if (!strcmp(p, "/v1/chat/completions") || !strcmp(p, "/v1/completions")) {
        if (strcmp(m, "POST") != 0) {
            httpd_resp_header(r, "Allow", "POST");
            reply_error(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                        "use POST for this endpoint");
            return;
        }
        generate(s, r, !strcmp(p, "/v1/completions"));
        return;
    }
    if (!strcmp(m, "GET") && !strcmp(p, "/v1/models")) {
        json_t *o = json_pack("{s:s, s:[{s:s, s:s, s:i, s:s, s:i}]}", "object", "list", "data",
                              "id", native_engine_model_name(s->engine), "object", "model",
                              "created", 0, "owned_by", "cascade", "max_model_len",
                              native_engine_context(s->engine));
        char *js = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        httpd_reply(r, 200, "application/json", js, strlen(js));
        free(js);
        json_decref(o);
        return;
    }
    if (!strcmp(m, "GET") && !strcmp(p, "/health")) {
        int ok = engine_health(s->engine);
        const char *js = ok ? "{\"status\":\"ok\"}" : "{\"status\":\"unavailable\"}";
        httpd_reply(r, ok ? 200 : 503, "application/json", js, strlen(js));
        return;
    }
    char msg[256];
    snprintf(msg, sizeof(msg), "Unknown request URL: %s %.100s", m, p);
    reply_error(r, 404, "invalid_request_error", "unknown_url", NULL, msg);
}


/* While draining: leave the loop once no request or connection is left,
 * or when the drain time is up. */
static void drain_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct server *s = arg;
    if ((httpd_inflight(s->httpd) == 0 && httpd_connections(s->httpd) == 0) ||
        now_ms() >= s->drain_deadline_ms)
        event_base_loopbreak(s->base);
}

/* SIGTERM/SIGINT: stop accepting and let running generations finish. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct server *s = arg;
    if (s->drain_deadline_ms)
        return;
    log_info("signal %d: draining (up to %d ms)", (int)sig, DRAIN_MS);
    s->drain_deadline_ms = now_ms() + DRAIN_MS;
    httpd_drain(s->httpd);
    struct timeval tv = {0, 20000};
    event_add(s->drain_poll, &tv);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cascade-engine --model PATH [--listen HOST:PORT] [--tokenizer PATH] [--name ID]\n"
               "                      [--device cpu|cuda:N] [--threads N] [--kv-mib N] [--max-batch N]\n"
               "                      [--max-queue N] [--ctx N] [--tp N] [--ep N]\n"
               "  --model PATH       llama2.c .bin, or a Hugging Face folder (config.json + safetensors)\n"
               "  --listen HOST:PORT default 127.0.0.1:8000; port 0 picks a free one\n"
               "  --tokenizer PATH   default: tokenizer.json, tokenizer.bin or tok<vocab>.bin beside the model\n"
               "  --name ID          the model id in /v1/models (default: the model file or folder name)\n"
               "  --device DEV       cpu (default) or cuda:N, the GPU to run on\n"
               "  --threads N        compute threads (default: one per CPU)\n"
               "  --kv-mib N         KV cache budget in MiB (default 256)\n"
               "  --max-batch N      sequences decoded together (default 16)\n"
               "  --max-queue N      requests that may wait for a slot before 503 (default 64)\n"
               "  --ctx N            context limit in tokens (default: the model's)\n"
               "  --tp N, --ep N     tensor / expert parallel ranks in this process, 1 or the\n"
               "                     number of ranks (default: the GPUs named; 1 on the CPU)\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},   {"listen", required_argument, NULL, 'l'},
        {"tokenizer", required_argument, NULL, 't'}, {"name", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 'T'}, {"kv-mib", required_argument, NULL, 'k'},
        {"max-batch", required_argument, NULL, 'b'}, {"max-queue", required_argument, NULL, 'q'},
        {"ctx", required_argument, NULL, 'c'},     {"device", required_argument, NULL, 'd'},
        {"tp", required_argument, NULL, 'P'},      {"ep", required_argument, NULL, 'E'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct native_engine_config cfg = {0};
    const char *listen_addr = "127.0.0.1:8000";
    int o;
    while ((o = getopt_long(argc, argv, "m:l:t:n:T:k:b:q:c:d:P:E:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': cfg.model_path = optarg; break;
        case 'l': listen_addr = optarg; break;
        case 't': cfg.tokenizer_path = optarg; break;
        case 'n': cfg.model_name = optarg; break;
        case 'T': cfg.threads = atoi(optarg); break;
        case 'k': cfg.kv_budget_bytes = (size_t)strtoull(optarg, NULL, 10) << 20; break;
        case 'b': cfg.max_batch = atoi(optarg); break;
        case 'q': cfg.max_queue = atoi(optarg); break;
        case 'c': cfg.n_ctx = atoi(optarg); break;
        case 'd': cfg.device = optarg; break;
        case 'P':
        case 'E': {
            /* Ranks: a whole number 1..NATIVE_MAX_WORLD, or a usage error. */
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 1 || v > NATIVE_MAX_WORLD) {
                fprintf(stderr, "cascade-engine: --%s: expected 1..%d\n", o == 'P' ? "tp" : "ep",
                        NATIVE_MAX_WORLD);
                return 2;
            }
            *(o == 'P' ? &cfg.tp : &cfg.ep) = (int)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!cfg.model_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    char host[256], err[512];
    struct native_device dev;
    /* A mistyped device is a usage error, found before the model is read. */
    if (native_device_parse(cfg.device, &dev, err, sizeof(err)) != 0) {
        fprintf(stderr, "cascade-engine: --device: %s\n", err);
        return 2;
    }
    const char *colon = strrchr(listen_addr, ':');
    char *port_end = NULL;
    long want_port = colon ? strtol(colon + 1, &port_end, 10) : -1;
    if (!colon || colon == listen_addr || (size_t)(colon - listen_addr) >= sizeof(host) || !colon[1] ||
        *port_end || want_port < 0 || want_port > 65535) {
        fprintf(stderr, "cascade-engine: --listen must be HOST:PORT\n");
        return 2;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - listen_addr), listen_addr);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }

    /* A client that vanishes mid-write must not kill the process; and the
     * engine's threads post to this loop, so libevent needs its locks on
     * before the base exists. */
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    struct server s = {0};
    s.engine = native_engine_new(&cfg, err, sizeof(err));
    if (!s.engine) {
        log_error("cannot start the engine: %s", err);
        return 1;
    }
    int port = 0;
    int fd = httpd_listen(host, (int)want_port, &port, err, sizeof(err));
    if (fd < 0) {
        log_error("%s", err);
        engine_destroy(s.engine);
        return 1;
    }
    s.base = event_base_new();
    /* Bodies up to 8 MiB: long prompts fit, anything bigger is a 413. */
    struct httpd_limits lim = {
        .max_header_bytes = 64 * 1024,
        .max_body_bytes = 8 * 1024 * 1024,
        .header_timeout_ms = 30000,
        .read_timeout_ms = 30000,
        .write_timeout_ms = 30000,
    };
    s.httpd = s.base ? httpd_new(s.base, fd, &lim, handle, NULL, &s) : NULL;
    if (!s.httpd) {
        log_error("cannot start the HTTP server");
        close(fd);
        engine_destroy(s.engine);
        return 1;
    }
    s.sig_term = evsignal_new(s.base, SIGTERM, on_signal, &s);
    s.sig_int = evsignal_new(s.base, SIGINT, on_signal, &s);
    s.drain_poll = event_new(s.base, -1, EV_PERSIST, drain_poll, &s);
    event_add(s.sig_term, NULL);
    event_add(s.sig_int, NULL);

    char addr[300];
    snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    json_t *f = json_pack("{s:s, s:s, s:i}", "addr", addr, "model",
                          native_engine_model_name(s.engine), "context",
                          native_engine_context(s.engine));
    log_fields(LOG_INFO, "listening", f);
    json_decref(f);
    printf("ENGINE_PORT=%d\n", port);
    fflush(stdout);

    event_base_dispatch(s.base);

    /* Requests still open see on_close (which cancels them) before the
     * engine goes. */
    httpd_free(s.httpd);
    event_free(s.drain_poll);
    event_free(s.sig_term);
    event_free(s.sig_int);
    engine_destroy(s.engine);
    event_base_free(s.base);
    log_info("stopped");
    return 0;
}
