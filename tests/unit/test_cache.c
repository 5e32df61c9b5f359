/* The cache's pure parts: keys (what counts as the same request), the memory
 * LRU (bounds, recency, TTL), and single-flight (one leader, waiters woken
 * with the answer or told to go on their own). */
#include <event2/event.h>
#include <event2/thread.h>
#include <unistd.h>

#include "cache/key.h"
#include "cache/lru.h"
#include "cache/singleflight.h"
#include "common/openai.h"
#include "tests/unit/test.h"

static void key_of(const char *tenant, const char *route, const char *body, uint8_t out[32])
{
    struct chat_request r;
    struct openai_error e;
    if (chat_request_parse(body, strlen(body), &r, &e) < 0) {
        fprintf(stderr, "bad test body %s: %s\n", body, e.message);
        exit(1);
    }
    cache_key(tenant, route, &r, out);
    chat_request_free(&r);
}

static int same(const char *a, const char *b)
{
    uint8_t ka[32], kb[32];
    key_of("t", "tier:small", a, ka);
    key_of("t", "tier:small", b, kb);
    return memcmp(ka, kb, 32) == 0;
}

struct wake {
    int calls;
    char value[64];
    int failed;
};

static void on_wake(void *ctx, const char *value, size_t len)
{
    struct wake *w = ctx;
    w->calls++;
    if (value)
        snprintf(w->value, sizeof w->value, "%.*s", (int)len, value);
    else
        w->failed = 1;
}

int main(void)
{
    const char *base = "{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    CHECK(same(base, "{ \"messages\" : [ {\"content\":\"hi\",\"role\":\"user\"} ],\n \"temperature\": 0.0, \"model\":\"m\" }"));
    CHECK(same(base, "{\"model\":\"m\",\"temperature\":0,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(same(base, "{\"model\":\"m\",\"temperature\":0,\"user\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u0069\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0.1,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi \"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"seed\":1,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"stop\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"top_p\":0.5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"logprobs\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"tools\":[],\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"));
    CHECK(!same(base, "{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"system\",\"content\":\"hi\"}]}"));
    uint8_t k1[32], k2[32];
    key_of("acme", "tier:small", base, k1);
    key_of("beta", "tier:small", base, k2);
    CHECK(memcmp(k1, k2, 32) != 0); /* tenants never share a key */
    key_of("acme", "auto:small", base, k2);
    CHECK(memcmp(k1, k2, 32) != 0);

    struct chat_request r;
    struct openai_error e;
    chat_request_parse(base, strlen(base), &r, &e);
    CHECK(cache_request_cacheable(&r, CACHE_MODE_DETERMINISTIC));
    CHECK(!cache_request_cacheable(&r, CACHE_MODE_OFF));
    r.temperature = 0.5;
    CHECK(!cache_request_cacheable(&r, CACHE_MODE_DETERMINISTIC));
    CHECK(cache_request_cacheable(&r, CACHE_MODE_ALWAYS));
    r.has_seed = 1;
    CHECK(cache_request_cacheable(&r, CACHE_MODE_DETERMINISTIC));
    chat_request_free(&r);

    /* LRU: bounded by bytes, least recently used goes first, TTL honoured. */
    struct lru *l = lru_new(1000);
    char v[200];
    memset(v, 'v', sizeof v);
    lru_put(l, "a", v, 200, 60000);
    lru_put(l, "b", v, 200, 60000);
    lru_put(l, "c", v, 200, 60000);
    size_t len;
    char *got = lru_get(l, "a", &len); /* a is now the most recent */
    CHECK(got && len == 200);
    free(got);
    lru_put(l, "d", v, 200, 60000); /* evicts b, the least recent */
    CHECK(lru_bytes(l) <= 1000);
    got = lru_get(l, "b", &len);
    CHECK(got == NULL);
    got = lru_get(l, "a", &len);
    CHECK(got != NULL);
    free(got);
    char huge[2000] = {0};
    lru_put(l, "huge", huge, sizeof huge, 60000); /* bigger than the store: not kept */
    got = lru_get(l, "huge", &len);
    CHECK(got == NULL);
    lru_put(l, "short", "x", 1, 1);
    usleep(5000);
    got = lru_get(l, "short", &len);
    CHECK(got == NULL);
    lru_put(l, "a", "new", 3, 60000); /* replace */
    got = lru_get(l, "a", &len);
    CHECK(got && len == 3 && memcmp(got, "new", 3) == 0);
    free(got);
    for (int i = 0; i < 5000; i++) { /* growth and churn */
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        lru_put(l, k, v, 10, 60000);
    }
    CHECK(lru_bytes(l) <= 1000 && lru_count(l) > 0);
    lru_free(l);
    lru_free(NULL);

    /* Single-flight on one event base. */
    evthread_use_pthreads();
    struct event_base *base_ev = event_base_new();
    struct singleflight *sf = sf_new();
    uint8_t key[32] = {1, 2, 3};
    CHECK(sf_join(sf, key, base_ev, on_wake, NULL) == NULL); /* leader */
    struct wake w1 = {0}, w2 = {0}, w3 = {0};
    struct sf_waiter *a = sf_join(sf, key, base_ev, on_wake, &w1);
    struct sf_waiter *b = sf_join(sf, key, base_ev, on_wake, &w2);
    struct sf_waiter *c = sf_join(sf, key, base_ev, on_wake, &w3);
    CHECK(a && b && c && sf_waiting(sf) == 3);
    sf_leave(sf, b); /* b's client went away */
    CHECK(sf_waiting(sf) == 2);
    sf_finish(sf, key, "answer", 6);
    CHECK(w1.calls == 0); /* never inside sf_finish */
    event_base_loop(base_ev, EVLOOP_NONBLOCK);
    CHECK(w1.calls == 1 && strcmp(w1.value, "answer") == 0);
    CHECK(w3.calls == 1 && strcmp(w3.value, "answer") == 0);
    CHECK(w2.calls == 0);
    /* A failed leader: waiters are told, not failed. */
    CHECK(sf_join(sf, key, base_ev, on_wake, NULL) == NULL);
    struct wake w4 = {0};
    sf_join(sf, key, base_ev, on_wake, &w4);
    sf_finish(sf, key, NULL, 0);
    event_base_loop(base_ev, EVLOOP_NONBLOCK);
    CHECK(w4.calls == 1 && w4.failed);
    /* A waiter woken but gone before its callback ran. */
    CHECK(sf_join(sf, key, base_ev, on_wake, NULL) == NULL);
    struct wake w5 = {0};
    struct sf_waiter *x = sf_join(sf, key, base_ev, on_wake, &w5);
    sf_finish(sf, key, "late", 4);
    sf_leave(sf, x);
    event_base_loop(base_ev, EVLOOP_NONBLOCK);
    CHECK(w5.calls == 0);
    sf_free(sf);
    event_base_free(base_ev);
    TEST_MAIN_END();
}
