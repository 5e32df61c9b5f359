/* tls.c: see tls.h.
 *
 * Per-connection facts live in the SSL object's ex_data, which OpenSSL
 * keeps across SSL_clear() (what libevent calls when evhttp resets a
 * connection) and frees with the SSL, so no side table has to track the
 * connections' lives:
 *   closed: evhttp told us (close callback) that the connection closed;
 *   verify: the first certificate-check error of the last handshake, kept
 *           because SSL_clear() wipes SSL_get_verify_result() before evhttp
 *           reports the failure to us;
 *   cache:  the replica's session cache, where new_session_cb files the
 *           sessions (TLS 1.3 tickets come after the handshake) that the
 *           upstream gives this connection.
 */
#include "engines/remote/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/mem.h"

struct remote_tls {
    SSL_CTX *ctx;
};

struct remote_tls_cache {
    pthread_mutex_t mu;
    SSL_SESSION *session;           /* the newest resumable one, or NULL; ours */
};

static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static int idx_closed = -1, idx_verify = -1, idx_cache = -1;

static void idx_init(void)
{
    idx_closed = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    idx_verify = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    idx_cache = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

struct remote_tls_cache *remote_tls_cache_new(void)
{
    struct remote_tls_cache *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void remote_tls_cache_free(struct remote_tls_cache *c)
{
    if (!c)
        return;
    SSL_SESSION_free(c->session);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* OpenSSL hands over a session the upstream issued: keep a copy of the
 * newest in the connection's cache. A copy, because the connection's own
 * object is marked not resumable when the connection is freed without a
 * TLS shutdown (libevent never sends one), which would spoil the cache. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct remote_tls_cache *c = SSL_get_ex_data(ssl, idx_cache);
    SSL_SESSION *copy = c ? SSL_SESSION_dup(sess) : NULL;
    if (!copy)
        return 0; /* OpenSSL keeps its reference */
    pthread_mutex_lock(&c->mu);
    SSL_SESSION *old = c->session;
    c->session = copy;
    pthread_mutex_unlock(&c->mu);
    SSL_SESSION_free(old);
    return 0;
}

/* OpenSSL's verdict stands; this only remembers the first reason it gave. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
    if (!ok) {
        SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
        if (ssl && !SSL_get_ex_data(ssl, idx_verify))
            SSL_set_ex_data(ssl, idx_verify, (void *)(intptr_t)X509_STORE_CTX_get_error(xs));
    }
    return ok;
}

static void openssl_error(char *err, size_t errlen, const char *what)
{
    char buf[256] = "";
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

struct remote_tls *remote_tls_new(const char *ca_file, char *err, size_t errlen)
{
    pthread_once(&idx_once, idx_init);
    if (idx_closed < 0 || idx_verify < 0 || idx_cache < 0) {
        snprintf(err, errlen, "TLS: cannot set up OpenSSL");
        return NULL;
    }
    struct remote_tls *t = xcalloc(1, sizeof *t);
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        openssl_error(err, errlen, "TLS: cannot create a context");
        goto fail;
    }
    if (!SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION)) {
        openssl_error(err, errlen, "TLS: cannot require TLS 1.2");
        goto fail_ctx;
    }
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, verify_cb);
    /* Client sessions go to the replicas' caches, not OpenSSL's own store. */
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(t->ctx, new_session_cb);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1) {
            char what[600];
            snprintf(what, sizeof what, "tls.ca_file %s: cannot load its certificates", ca_file);
            openssl_error(err, errlen, what);
            goto fail_ctx;
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        openssl_error(err, errlen, "TLS: cannot load the system's CA certificates");
        goto fail_ctx;
    }
    return t;
fail_ctx:
    SSL_CTX_free(t->ctx);
fail:
    free(t);
    return NULL;
}

void remote_tls_free(struct remote_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

/* An SSL for a connection to host: SNI and the name check for a DNS name,
 * the address check for an IP literal ("[::1]" as URLs write IPv6). */
static SSL *ssl_for(struct remote_tls *t, const char *host)
{
    char bare[256];
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
        snprintf(bare, sizeof bare, "%.*s", (int)(hl - 2), host + 1);
    else
        snprintf(bare, sizeof bare, "%s", host);
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl)
        return NULL;
    unsigned char addr[16];
    int is_ip = inet_pton(AF_INET, bare, addr) == 1 || inet_pton(AF_INET6, bare, addr) == 1;
    int ok;
    if (is_ip) /* RFC 6066: no SNI for an address */
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), bare) == 1;
    else
        ok = SSL_set_tlsext_host_name(ssl, bare) == 1 && SSL_set1_host(ssl, bare) == 1;
    if (!ok) {
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

static void on_close(struct evhttp_connection *c, void *arg)
{
    (void)arg;
    SSL *ssl = bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(c));
    if (ssl)
        SSL_set_ex_data(ssl, idx_closed, (void *)1);
}

struct evhttp_connection *remote_tls_connect(struct remote_tls *t, struct remote_tls_cache *cache,
                                             struct event_base *base, struct evdns_base *dns, const char *host,
                                             unsigned short port)
{
    SSL *ssl = ssl_for(t, host);
    if (!ssl)
        return NULL;
    if (cache) {
        /* a copy again: this connection may spoil its session the same way */
        pthread_mutex_lock(&cache->mu);
        SSL_SESSION *copy = cache->session ? SSL_SESSION_dup(cache->session) : NULL;
        pthread_mutex_unlock(&cache->mu);
        if (copy) {
            SSL_set_session(ssl, copy); /* takes its own reference */
            SSL_SESSION_free(copy);
        }
        SSL_set_ex_data(ssl, idx_cache, cache);
    }
    /* CLOSE_ON_FREE: the bufferevent frees the SSL and closes the socket
     * when evhttp_connection_free frees it. */
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    /* Many servers close without TLS's close_notify; the HTTP framing
     * (Content-Length, chunks) already tells a complete answer from a cut
     * one, so an unannounced close is an ordinary close. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    struct evhttp_connection *c = evhttp_connection_base_bufferevent_new(base, dns, bev, host, port);
    if (!c) {
        bufferevent_free(bev);
        return NULL;
    }
    evhttp_connection_set_closecb(c, on_close, NULL);
    return c;
}

int remote_tls_conn_reusable(struct evhttp_connection *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(c));
    /* evhttp's reset of a closed or failed connection SSL_clear()s it,
     * which also ends "init finished"; the close flag covers a close that
     * came while the connection sat idle in a pool. */
    return ssl && SSL_is_init_finished(ssl) && !SSL_get_ex_data(ssl, idx_closed);
}

const char *remote_tls_conn_error(struct evhttp_connection *c, char *buf, size_t n)
{
    SSL *ssl = bufferevent_openssl_get_ssl(evhttp_connection_get_bufferevent(c));
    if (!ssl)
        return NULL;
    long e = (long)(intptr_t)SSL_get_ex_data(ssl, idx_verify);
    if (!e)
        return NULL;
    SSL_set_ex_data(ssl, idx_verify, NULL);
    snprintf(buf, n, "certificate verify failed: %s", X509_verify_cert_error_string(e));
    return buf;
}

/* ---- the prober's blocking session ------------------------------------ */

/* After an SSL call returned rc <= 0: wait until the socket can do what it
 * asked for. 0 to call again, -1 on a real error or at the deadline. */
static int ssl_wait(SSL *ssl, int rc, int fd, unsigned long long deadline_us)
{
    int e = SSL_get_error(ssl, rc);
    short ev;
    if (e == SSL_ERROR_WANT_READ)
        ev = POLLIN;
    else if (e == SSL_ERROR_WANT_WRITE)
        ev = POLLOUT;
    else
        return -1;
    uint64_t now = clock_mono_us();
    if (now >= deadline_us)
        return -1;
    struct pollfd p = {fd, ev, 0};
    int ms = (int)((deadline_us - now + 999) / 1000);
    int r;
    do
        r = poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    return r == 1 ? 0 : -1;
}

long remote_tls_probe(struct remote_tls *t, int fd, const char *host, const char *req, size_t req_len,
                      char *resp, size_t cap, unsigned long long deadline_us)
{
    long got = -1;
    SSL *ssl = ssl_for(t, host);
    if (!ssl || cap == 0)
        goto out;
    if (SSL_set_fd(ssl, fd) != 1)
        goto out;
    int rc;
    while ((rc = SSL_connect(ssl)) != 1)
        if (ssl_wait(ssl, rc, fd, deadline_us) < 0)
            goto out;
    size_t sent = 0;
    while (sent < req_len) {
        rc = SSL_write(ssl, req + sent, (int)(req_len - sent));
        if (rc > 0)
            sent += (size_t)rc;
        else if (ssl_wait(ssl, rc, fd, deadline_us) < 0)
            goto out;
    }
    for (;;) {
        rc = SSL_read(ssl, resp, (int)(cap - 1));
        if (rc > 0) {
            got = rc;
            resp[got] = '\0';
            break;
        }
        if (ssl_wait(ssl, rc, fd, deadline_us) < 0)
            goto out;
    }
out:
    SSL_free(ssl); /* the socket is the caller's: SSL_set_fd's BIO does not close it */
    ERR_clear_error();
    return got;
}
