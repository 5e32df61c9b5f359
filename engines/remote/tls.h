/* tls.h: TLS to https:// upstreams, for the remote engine.
 *
 * One struct remote_tls per remote engine holds its OpenSSL context: TLS 1.2
 * at least, the peer's certificate verified against the system's CAs or the
 * tier's tls.ca_file (which replaces them, as curl's --cacert does), and the
 * certificate's names checked against the URL's host (its DNS names, or its
 * IP addresses for an IP literal). SNI is sent for names. Nothing turns the
 * checks off.
 *
 * Connections are libevent evhttp connections over OpenSSL bufferevents.
 * evhttp reconnects a connection that closed when it is next used. For an
 * OpenSSL bufferevent that means the same SSL object, SSL_clear()ed, on a
 * new socket: libevent 2.1.12 happens to get through it (our tests saw it
 * work), but nothing documents it, the SSL object carries the old session
 * and error state into the new connection, and evhttp's reconnect was
 * written for plain sockets. So we do not lean on it: a TLS connection is
 * used for one TCP connection's life; remote_tls_conn_reusable() says
 * whether it still is one, and a pool frees it as soon as it is not.
 *
 * A new connection resumes the replica's last TLS session when it has one
 * (struct remote_tls_cache, one per replica, shared by the workers), which
 * saves the handshake's signature and certificate checks: they were done
 * when the session was made.
 *
 * The prober thread uses remote_tls_probe() instead: blocking, with a
 * deadline, on a socket it already connected.
 *
 * Threads: remote_tls_new/free from one thread, at engine start and end;
 * the rest from any thread (OpenSSL contexts are safe to share); a
 * connection's functions on the thread of the event_base it runs on.
 */
#ifndef CASCADE_REMOTE_TLS_H
#define CASCADE_REMOTE_TLS_H

#include <stddef.h>

struct event_base;
struct evhttp_connection;
struct remote_tls;

/* ca_file: PEM CAs to trust instead of the system's, or NULL. NULL with err
 * set when the file cannot be loaded. */
struct remote_tls *remote_tls_new(const char *ca_file, char *err, size_t errlen);
void remote_tls_free(struct remote_tls *t);

/* One replica's resumable session; any thread. Free it after every
 * connection made with it. */
struct remote_tls_cache;
struct remote_tls_cache *remote_tls_cache_new(void);
void remote_tls_cache_free(struct remote_tls_cache *c);

/* A new, unconnected evhttp connection to host:port over TLS, verified for
 * host, resuming cache's session when there is one and keeping the one the
 * upstream gives there (cache may be NULL); names resolved through dns
 * (NULL: getaddrinfo, blocking). NULL when out of resources. Free with
 * evhttp_connection_free. */
struct evdns_base;
struct evhttp_connection *remote_tls_connect(struct remote_tls *t, struct remote_tls_cache *cache,
                                             struct event_base *base, struct evdns_base *dns, const char *host,
                                             unsigned short port);

/* 1 while c holds an established TLS session that has not closed: only
 * then may it carry another request. */
int remote_tls_conn_reusable(struct evhttp_connection *c);

/* Why c's last handshake failed, when the certificate check failed
 * ("certificate verify failed: Hostname mismatch"), written to buf; NULL
 * when that was not the reason. Clears the record. */
const char *remote_tls_conn_error(struct evhttp_connection *c, char *buf, size_t n);

/* Blocking, for the prober: a TLS session over fd (a connected socket,
 * blocking or not) verified for host, req sent, and up to cap-1 bytes of
 * the answer read into resp (NUL-terminated), all before deadline_us
 * (clock_mono_us). The byte count, or -1 on any failure. */
long remote_tls_probe(struct remote_tls *t, int fd, const char *host, const char *req, size_t req_len,
                      char *resp, size_t cap, unsigned long long deadline_us);

#endif
