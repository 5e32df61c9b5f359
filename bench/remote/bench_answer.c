/* bench_answer: the remote engine's cost per upstream stream chunk
 * (engines/remote/answer.c, answer_stream_event), against the floor every
 * version of it pays: json_loadb and json_decref of the same bytes.
 *
 * Chunks, as upstreams send them:
 *   plain     vLLM: {"id",...,"choices":[{"index":0,"delta":{"content":"word "}, ...}]}
 *   openai    the same with "system_fingerprint" and "service_tier" (meta on every token)
 *   tool      a tool call's argument fragment (an extra on every token)
 *   reasoning DeepSeek: {"content":null,"reasoning_content":"word "}
 * Each is parsed N times per round, ROUNDS rounds interleaved by kind; the
 * figure is ns per chunk, median over the rounds, with min and max. The
 * receiver does nothing, so what is measured is the parse and the
 * extra/meta objects built for it.
 *
 * Usage: bench_answer [N=200000] [ROUNDS=7] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "engines/remote/answer.h"

static const char *const kinds[][2] = {
    {"plain", "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"deepseek-v3\","
              "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word \"},\"logprobs\":null,\"finish_reason\":null}]}"},
    {"openai", "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\","
               "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_abc123\",\"choices\":[{\"index\":0,"
               "\"delta\":{\"content\":\"word \"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}"},
    {"tool", "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"deepseek-v3\","
             "\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"city\\\":\"}}]},"
             "\"logprobs\":null,\"finish_reason\":null}]}"},
    {"reasoning", "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"deepseek-r1\","
                  "\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"word \"},"
                  "\"logprobs\":null,\"finish_reason\":null}]}"},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int sink(void *ctx, const struct engine_token *tok)
{
    *(size_t *)ctx += tok->len + (tok->extra != NULL) + (tok->meta != NULL);
    return 0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    if (n <= 0 || rounds <= 0 || rounds > 101)
        return 2;
    double t_answer[NKINDS][101], t_floor[NKINDS][101];
    size_t check = 0;
    for (int r = 0; r < rounds; r++) {
        for (size_t k = 0; k < NKINDS; k++) {
            const char *s = kinds[k][1];
            size_t len = strlen(s);
            struct answer a;
            answer_init(&a, ENGINE_EP_CHAT, 0, sink, &check);
            double t0 = now_ns();
            for (long i = 0; i < n; i++)
                if (answer_stream_event(&a, s, len) != ANSWER_OK)
                    return 1;
            double t1 = now_ns();
            for (long i = 0; i < n; i++) {
                json_t *j = json_loadb(s, len, 0, NULL);
                check += j != NULL;
                json_decref(j);
            }
            double t2 = now_ns();
            t_answer[k][r] = (t1 - t0) / (double)n;
            t_floor[k][r] = (t2 - t1) / (double)n;
        }
    }
    printf("%-10s %28s %28s %10s\n", "chunk", "answer_stream_event ns", "json_loadb+decref ns", "added ns");
    for (size_t k = 0; k < NKINDS; k++) {
        qsort(t_answer[k], (size_t)rounds, sizeof(double), cmp);
        qsort(t_floor[k], (size_t)rounds, sizeof(double), cmp);
        double ma = t_answer[k][rounds / 2], mf = t_floor[k][rounds / 2];
        printf("%-10s %8.0f (%5.0f..%5.0f)      %8.0f (%5.0f..%5.0f)      %8.0f\n", kinds[k][0], ma, t_answer[k][0],
               t_answer[k][rounds - 1], mf, t_floor[k][0], t_floor[k][rounds - 1], ma - mf);
    }
    fprintf(stderr, "(check %zu)\n", check);
    return 0;
}
