/* policy.c: see policy.h. Three parts: the Lua scripts (the atomic steps in
 * Redis), the local fallback used while Redis is away, and the journal of
 * settlements that Redis has not acknowledged yet. */
#include "policies/policy.h"

#include <event2/event.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cache/redis.h"
#include "common/clock.h"
#include "common/fmt.h"
#include "common/log.h"
#include "common/mem.h"
#include "policies/price.h"

#define MAX_BASES 256
#define JOURNAL_BATCH 64
#define WINDOW_S 60

/* ---- the scripts -------------------------------------------------------- */

/* Numbers in the scripts. Redis 7's Lua has only doubles, and two of its
 * conversions are traps for money:
 *   - tonumber() accepts ' 12', '0x1F', '1e5' and '1.5', so a malformed
 *     argument would be taken as some other amount;
 *   - a number turned back into a string (`..`, or a number passed to
 *     redis.call) is printed with %.14g or %.17g, i.e. in exponent form from
 *     1e14 or 1e17 on, which INCRBY refuses and a reservation member's
 *     pattern no longer matches.
 * So every argument is parsed strictly (arg(): an optional '-' and digits,
 * within a range, else the script fails before writing anything), amounts
 * are passed on to Redis as the caller's decimal strings (ARGV[i]), never as
 * Lua numbers, and the reservation member is built from those strings.
 * Amounts stay within [0, 1e18] (MONEY_MAX in price.h), which a double holds
 * to within a few hundred nano-USD: good enough to compare against a budget,
 * while Redis itself keeps the sums exact. A refusal is an error reply whose
 * text starts with CASCADE_REFUSED; the gateway logs it and does not retry. */
#define LUA_ARGS                                                                         \
    "local MAX = 1e18\n"                                                                 \
    "local function refuse(what)\n"                                                      \
    "  error({err = 'CASCADE_REFUSED ' .. what})\n"                                      \
    "end\n"                                                                              \
    "local function arg(i, lo, hi)\n"                                                    \
    "  local s = ARGV[i]\n"                                                              \
    "  if type(s) ~= 'string' or #s > 20 or not string.match(s, '^%-?%d+$') then\n"      \
    "    refuse('argument ' .. i .. ' is not an integer')\n"                             \
    "  end\n"                                                                            \
    "  local v = tonumber(s)\n"                                                          \
    "  if v < lo or v > hi then refuse('argument ' .. i .. ' is out of range') end\n"    \
    "  return v\n"                                                                       \
    "end\n"                                                                              \
    "local function clamp(v)\n"                                                          \
    "  if v > MAX then return MAX elseif v < -MAX then return -MAX end\n"                \
    "  return v\n"                                                                       \
    "end\n"                                                                              \
    "local function stored(v)\n"                                                         \
    "  return clamp(tonumber(v or '0') or 0)\n"                                          \
    "end\n"                                                                              \
    "local function unclamped(v)\n"                                                      \
    "  return tonumber(v or '0') or 0\n"                                                 \
    "end\n"                                                                              \
    "local function member_cost(m)\n"                                                    \
    "  local c = string.match(m, ':(%d+)$')\n"                                           \
    "  return c and clamp(tonumber(c)) or 0\n"                                           \
    "end\n"

/* Sliding-window helper shared by the scripts: sums the per-second buckets
 * of the last 60 s (dropping older ones when `prune`). */
#define LUA_WINDOW                                                                       \
    "local function window(key, sec, prune)\n"                                           \
    "  local h = redis.call('HGETALL', key)\n"                                           \
    "  local total, oldest = 0, nil\n"                                                   \
    "  for i = 1, #h, 2 do\n"                                                            \
    "    local s = tonumber(h[i])\n"                                                     \
    "    if s <= sec - 60 then\n"                                                        \
    "      if prune then redis.call('HDEL', key, h[i]) end\n"                            \
    "    else\n"                                                                         \
    "      total = total + (tonumber(h[i + 1]) or 0)\n"                                  \
    "      if oldest == nil or s < oldest then oldest = s end\n"                         \
    "    end\n"                                                                          \
    "  end\n"                                                                            \
    "  return total, oldest\n"                                                           \
    "end\n"

/* The reservations in flight: a sorted set of "<request_id>:<cost>" members
 * scored by their expiry (resv), and the sum of their costs (resv:sum), so
 * that an admission reads the sum instead of summing every member. That sum
 * was O(requests in flight): with 1,000 streams open, Redis spent 0.78-1.02
 * ms of CPU per request (bench/policy/inflight.sh, issue 18), so one Redis
 * served about 1,000-1,300 requests a second. Now an admission costs
 * O(reservations that expired since the last one), usually none.
 * The sum is exact or absent: it is written as a decimal integer below 2^53
 * (where a double is exact), kept in step by every script that adds or
 * removes a member (admit adds and expires, settle removes), and deleted
 * when it cannot be kept; an absent or unreadable sum is counted again from
 * the set once (a set written by an older gateway, a sum that expired
 * apart from its set). An empty set means a sum of 0. */
/* The sum as written (decimal digits, under 2^53), or nil: one rule for
 * every script that reads it. */
#define LUA_SUM_VALUE                                                                    \
    "local function sum_value(s)\n"                                                      \
    "  if s and string.match(s, '^%d+$') and #s < 17 then return tonumber(s) end\n"      \
    "  return nil\n"                                                                     \
    "end\n"

#define LUA_RESV                                                                         \
    LUA_SUM_VALUE                                                                        \
    "local SUM_MAX = 9007199254740992\n"                                                 \
    "local function resv_read(key, sumkey, now_ms)\n"                                    \
    "  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now_ms)\n"               \
    "  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms) end\n"   \
    "  local n = redis.call('ZCARD', key)\n"                                             \
    "  if n == 0 then return 0, 0, #expired > 0 end\n"                                   \
    "  local total = sum_value(redis.call('GET', sumkey))\n"                             \
    "  if total then\n"                                                                  \
    "    for _, m in ipairs(expired) do total = total - member_cost(m) end\n"            \
    "    if total >= 0 then return total, n, #expired > 0 end\n"                         \
    "  end\n"                                                                            \
    "  total = 0\n"                                                                      \
    "  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do\n"                        \
    "    total = total + member_cost(m)\n"                                               \
    "  end\n"                                                                            \
    "  return total, n, true\n"                                                          \
    "end\n"                                                                              \
    "local function resv_store(key, sumkey, total, n, px)\n"                             \
    "  if n == 0 or total >= SUM_MAX then redis.call('DEL', sumkey) return end\n"        \
    "  if px then redis.call('SET', sumkey, string.format('%d', total), 'PX', px) return end\n" \
    "  redis.call('SET', sumkey, string.format('%d', total))\n"                          \
    "  local pt = redis.call('PTTL', key)\n"                                             \
    "  if pt > 0 then redis.call('PEXPIRE', sumkey, pt) end\n"                           \
    "end\n"

/* KEYS: rl:req rl:tok resv spend:day spend:month resv:sum
 * ARGV: rpm tpm max_concurrent est_tokens est_cost budget_day budget_month
 *       request_id ttl_ms alt_cost            (alt_cost -1: no downgrade)
 * -> {status, requests, tokens, reset_req_ms, reset_tok_ms, has_budget,
 *     budget_left, second, reserved_cost, spent_day, spent_month, reserved}
 * The reservation member is "<request_id>:<cost>", the cost being ARGV[5]
 * or, downgraded, ARGV[10], exactly as the caller wrote it; the caller
 * rebuilds the same string to remove it. */
static const char ADMIT_LUA[] =
    LUA_ARGS
    LUA_WINDOW
    LUA_RESV
    "local rpm, tpm, maxc = arg(1, 0, MAX), arg(2, 0, MAX), arg(3, 0, MAX)\n"
    "local est_tok, cost = arg(4, 0, MAX), arg(5, 0, MAX)\n"
    "local bd, bm, ttl, alt = arg(6, -1, MAX), arg(7, -1, MAX), arg(9, 1, 1e12), arg(10, -1, MAX)\n"
    "local t = redis.call('TIME')\n"
    "local sec = tonumber(t[1])\n"
    "local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local reqs, oldest_r = window(KEYS[1], sec, true)\n"
    "local toks, oldest_t = window(KEYS[2], sec, true)\n"
    "local sum, open, changed = resv_read(KEYS[3], KEYS[6], now_ms)\n"
    "local sum_px = nil\n"
    "local reserved = clamp(sum)\n"
    "local spent_d = stored(redis.call('GET', KEYS[4]))\n"
    "local spent_m = stored(redis.call('GET', KEYS[5]))\n"
    "local left = nil\n"
    "if bd >= 0 then left = bd - spent_d - reserved end\n"
    "if bm >= 0 then\n"
    "  local lm = bm - spent_m - reserved\n"
    "  if left == nil or lm < left then left = lm end\n"
    "end\n"
    "local status = 0\n"
    "local cost_s = ARGV[5]\n"
    "if rpm > 0 and reqs + 1 > rpm then status = 2\n"
    "elseif tpm > 0 and toks + est_tok > tpm then status = 3\n"
    "elseif maxc > 0 and open + 1 > maxc then status = 4\n"
    "elseif left ~= nil and cost > left then\n"
    "  if alt >= 0 and alt <= left then cost = alt; cost_s = ARGV[10]; status = 1 else status = 5 end\n"
    "end\n"
    "if status <= 1 then\n"
    "  redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[8] .. ':' .. cost_s)\n"
    "  redis.call('PEXPIRE', KEYS[3], ttl + 60000)\n"
    "  sum, open, changed, sum_px = sum + cost, open + 1, true, ttl + 60000\n"
    "  redis.call('HINCRBY', KEYS[1], sec, 1)\n"
    "  redis.call('EXPIRE', KEYS[1], 120)\n"
    "  redis.call('HINCRBY', KEYS[2], sec, ARGV[4])\n"
    "  redis.call('EXPIRE', KEYS[2], 120)\n"
    "  reqs = reqs + 1\n"
    "  toks = toks + est_tok\n"
    "  if oldest_r == nil then oldest_r = sec end\n"
    "  if oldest_t == nil then oldest_t = sec end\n"
    "  if left ~= nil then left = left - cost end\n"
    "end\n"
    "if changed then resv_store(KEYS[3], KEYS[6], sum, open, sum_px) end\n"
    "local reset_r = oldest_r and (oldest_r + 60 - sec) * 1000 or 0\n"
    "local reset_t = oldest_t and (oldest_t + 60 - sec) * 1000 or 0\n"
    "return {status, clamp(reqs), clamp(toks), reset_r, reset_t, left and 1 or 0, left and clamp(left) or 0, sec,\n"
    "  cost, spent_d, spent_m, reserved}\n";

/* KEYS: resv spend:day spend:month rl:tok saved:day saved:month settled:<id>
 *       resv:sum
 * ARGV: member cost token_delta admission_second saved_cache saved_routing
 *       routing_loss
 * -> 1 when applied, 0 when this request was already settled.
 * The saved hashes keep routing's gain ("routing") and its loss
 * ("routing_loss") apart, each a sum that only grows: net routing savings
 * (gain - loss, README "Savings") may be negative over a day, and an amount
 * Redis holds must never be. 
 * Every argument is checked, and every sum is checked to stay an int64,
 * before the first write: a script that fails halfway would leave the
 * request marked settled with its spend unrecorded. */
static const char SETTLE_LUA[] =
    LUA_ARGS
    LUA_SUM_VALUE
    "local c, d = arg(2, 0, MAX), arg(3, -MAX, MAX)\n"
    "arg(4, 0, 1e12)\n"
    "local sc, sr, sl = arg(5, 0, MAX), arg(6, 0, MAX), arg(7, 0, MAX)\n"
    /* The sums as stored, not clamped to MAX: a sum of many amounts may
     * pass 1e18, and what HINCRBY must not overflow is the real value. */
    "local LIMIT = 9e18\n"
    "if c > 0 and (unclamped(redis.call('GET', KEYS[2])) + c > LIMIT or\n"
    "              unclamped(redis.call('GET', KEYS[3])) + c > LIMIT) then\n"
    "  refuse('spend would overflow')\n"
    "end\n"
    "for _, k in ipairs({KEYS[5], KEYS[6]}) do\n"
    "  if unclamped(redis.call('HGET', k, 'cache')) + sc > LIMIT or\n"
    "     unclamped(redis.call('HGET', k, 'routing')) + sr > LIMIT or\n"
    "     unclamped(redis.call('HGET', k, 'routing_loss')) + sl > LIMIT then refuse('savings would overflow') end\n"
    "end\n"
    "if not redis.call('SET', KEYS[7], '1', 'NX', 'EX', 172800) then return 0 end\n"
    /* The member's cost leaves the sum (LUA_RESV) with it; a sum that is
     * absent, or less than the cost (not one we wrote), is dropped, to be
     * counted again. A member that expired was taken off by admit. */
    "if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then\n"
    "  local s = redis.call('GET', KEYS[8])\n"
    "  local v, c = sum_value(s), string.match(ARGV[1], ':(%d+)$')\n"
    "  if v and c and #c < 17 and v >= tonumber(c) then\n"
    "    redis.call('DECRBY', KEYS[8], c)\n"
    "  elseif s then\n"
    "    redis.call('DEL', KEYS[8])\n"
    "  end\n"
    "end\n"
    "if c > 0 then\n"
    "  redis.call('INCRBY', KEYS[2], ARGV[2])\n"
    "  redis.call('INCRBY', KEYS[3], ARGV[2])\n"
    "end\n"
    "if d ~= 0 and redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then\n"
    "  redis.call('HINCRBY', KEYS[4], ARGV[4], ARGV[3])\n"
    "end\n"
    "if sc > 0 then\n"
    "  redis.call('HINCRBY', KEYS[5], 'cache', ARGV[5])\n"
    "  redis.call('HINCRBY', KEYS[6], 'cache', ARGV[5])\n"
    "end\n"
    "if sr > 0 then\n"
    "  redis.call('HINCRBY', KEYS[5], 'routing', ARGV[6])\n"
    "  redis.call('HINCRBY', KEYS[6], 'routing', ARGV[6])\n"
    "end\n"
    "if sl > 0 then\n"
    "  redis.call('HINCRBY', KEYS[5], 'routing_loss', ARGV[7])\n"
    "  redis.call('HINCRBY', KEYS[6], 'routing_loss', ARGV[7])\n"
    "end\n"
    "return 1\n";

/* KEYS: spend:day spend:month saved:day saved:month resv rl:req rl:tok
 * -> {spend_day, spend_month, saved_day_cache, saved_day_routing,
 *     saved_month_cache, saved_month_routing, reserved, open, requests, tokens,
 *     routing_loss_day, routing_loss_month}
 * A field that is absent (a hash an older gateway wrote) reads as 0. */
static const char USAGE_LUA[] =
    LUA_ARGS
    LUA_WINDOW
    "local t = redis.call('TIME')\n"
    "local sec = tonumber(t[1])\n"
    "local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local reserved, open = 0, 0\n"
    "for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], now_ms, '+inf')) do\n"
    "  reserved = reserved + member_cost(m)\n"
    "  open = open + 1\n"
    "end\n"
    "local reqs = window(KEYS[6], sec, false)\n"
    "local toks = window(KEYS[7], sec, false)\n"
    "return {stored(redis.call('GET', KEYS[1])), stored(redis.call('GET', KEYS[2])),\n"
    "  stored(redis.call('HGET', KEYS[3], 'cache')), stored(redis.call('HGET', KEYS[3], 'routing')),\n"
    "  stored(redis.call('HGET', KEYS[4], 'cache')), stored(redis.call('HGET', KEYS[4], 'routing')),\n"
    "  clamp(reserved), open, clamp(reqs), clamp(toks),\n"
    "  stored(redis.call('HGET', KEYS[3], 'routing_loss')), stored(redis.call('HGET', KEYS[4], 'routing_loss'))}\n";

/* ---- state -------------------------------------------------------------- */

/* What one instance knows of a tenant when Redis is away. */
struct local_tenant {
    struct local_tenant *next;
    char *tenant;
    int64_t req_sec[WINDOW_S], req_n[WINDOW_S];     /* per-second buckets, ring by second */
    int64_t tok_sec[WINDOW_S], tok_n[WINDOW_S];
    int64_t concurrent;
    int64_t known_spent_day, known_spent_month;     /* from Redis, when last seen */
    int64_t local_spent;                            /* settled here since (journaled) */
    int64_t local_reserved;
};

struct journal_entry {
    char *tenant;
    char request_id[80];
    char member[112];
    char day[16], month[16];
    int64_t cost, token_delta, second, saved_cache, saved_routing, routing_loss;
};

struct base_timer {
    struct event_base *base;
    struct event *ev;
    struct policy *p;
};

struct policy {
    struct policy_settings s;
    char admit_sha[41], settle_sha[41], usage_sha[41];
    pthread_mutex_t mu;             /* guards locals and the journal */
    struct local_tenant *locals;
    struct journal_entry *journal;  /* a FIFO ring, mmap()ed (policy_new says why) */
    size_t journal_bytes;
    size_t j_head, j_len;
    int journal_full_logged;
    struct base_timer timers[MAX_BASES];
    size_t n_timers;
};

struct reservation {
    struct policy *p;
    char tenant[64];
    char request_id[80];
    char member[112];
    char day[16], month[16];
    int64_t est_cost, est_tokens, second;
    int local;
};

/* ---- keys --------------------------------------------------------------- */

static void key(char *buf, size_t n, const char *tenant, const char *suffix)
{
    fmt_join(buf, n, "cascade:{", tenant, "}:", suffix, (char *)NULL);
}

static void today(char day[16], char month[16])
{
    /* Every request asks; the answer changes once a day. Each thread
     * formats it at most once a second (gmtime_r and strftime were 2% of a
     * proxied request's instructions, bench/gateway/callgrind.sh). */
    static _Thread_local time_t at = -1;
    static _Thread_local char d[16], m[16];
    time_t now = time(NULL);
    if (now != at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(d, sizeof d, "%Y%m%d", &tm);
        strftime(m, sizeof m, "%Y%m", &tm);
        at = now;
    }
    memcpy(day, d, sizeof d);
    memcpy(month, m, sizeof m);
}

/* ---- local fallback ----------------------------------------------------- */

static struct local_tenant *local_get(struct policy *p, const char *tenant)
{
    for (struct local_tenant *l = p->locals; l; l = l->next)
        if (strcmp(l->tenant, tenant) == 0)
            return l;
    struct local_tenant *l = xcalloc(1, sizeof *l);
    l->tenant = xstrdup(tenant);
    l->next = p->locals;
    p->locals = l;
    return l;
}

static int64_t ring_sum(const int64_t *secs, const int64_t *n, int64_t now)
{
    int64_t total = 0;
    for (int i = 0; i < WINDOW_S; i++)
        if (secs[i] > now - WINDOW_S)
            total += n[i];
    return total;
}

static void ring_add(int64_t *secs, int64_t *n, int64_t now, int64_t v)
{
    int i = (int)(now % WINDOW_S);
    if (secs[i] != now) {
        secs[i] = now;
        n[i] = 0;
    }
    n[i] = money_add(n[i], v);
}

/* Correct what second `second` counted by delta (a settled request's real
 * tokens minus its estimate), if that second is still in its bucket; a
 * bucket never goes below 0. */
static void ring_adjust(int64_t *secs, int64_t *n, int64_t second, int64_t delta)
{
    int i = (int)(second % WINDOW_S);
    if (second <= 0 || secs[i] != second)
        return; /* gone from the window: nothing left to correct */
    n[i] = delta >= 0 ? money_add(n[i], delta) : money_sub(n[i], -delta);
}

/* The oldest second of the window that still counts something, or now
 * when none does: the window frees up 60 s after it. */
static int64_t ring_oldest(const int64_t *secs, const int64_t *n, int64_t now)
{
    int64_t oldest = now;
    for (int i = 0; i < WINDOW_S; i++)
        if (secs[i] > now - WINDOW_S && n[i] > 0 && secs[i] < oldest)
            oldest = secs[i];
    return oldest;
}

int64_t policy_window_reset_s(int64_t now, int monthly)
{
    time_t t = (time_t)now;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return 1;
    /* timegm normalises mday 32 or mon 12 into the next month or year. */
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    if (monthly) {
        tm.tm_mday = 1;
        tm.tm_mon++;
    } else {
        tm.tm_mday++;
    }
    int64_t next = (int64_t)timegm(&tm);
    return next > now ? next - now : 1;
}

/* Retry-After of a budget rejection: the reset of every window that cannot
 * take the request now, i.e. the latest of them (a month's reset is never
 * before the day's). cost is the least the request could be admitted at;
 * *_left is what each window has left after spend and open reservations,
 * negative when overspent. Open reservations might settle below their
 * estimate sooner, but nothing says they will: the window's reset is the
 * first moment the budget is known to free up, which is why the gateway
 * also tells clients not to retry (x-should-retry: false). */
static int64_t budget_retry_s(const struct tenant_limits *lim, int64_t cost, int64_t day_left, int64_t month_left,
                              int64_t now)
{
    int64_t s = 0;
    if (lim->budget_day_nano >= 0 && cost > day_left)
        s = policy_window_reset_s(now, 0);
    if (lim->budget_month_nano >= 0 && cost > month_left) {
        int64_t m = policy_window_reset_s(now, 1);
        if (m > s)
            s = m;
    }
    /* Neither blocks by these figures (a downgrade's reservation moved
     * them between check and here): the nearest configured reset. */
    if (s == 0)
        s = policy_window_reset_s(now, lim->budget_day_nano < 0);
    return s;
}

/* The least a request could be admitted at: its estimate, or the
 * downgrade tier's price when it has one. */
static int64_t least_cost(const struct admit_request *q)
{
    return q->alt_cost_nano >= 0 && q->alt_cost_nano < q->est_cost_nano ? q->alt_cost_nano : q->est_cost_nano;
}

/* This instance's share of a count limit while Redis is down. A set limit
 * keeps at least 1: 0 would read as "no limit" below, so rpm 3 at a share
 * of 0.25 would admit everything; 1 per instance over-admits by at most
 * one request per instance, which an operator can see coming. */
static int64_t share(const struct policy *p, int64_t limit)
{
    if (limit <= 0)
        return limit;
    int64_t s = (int64_t)floor((double)limit * p->s.local_share);
    return s > 0 ? s : 1;
}

/* Admission with this instance's share of every limit. */
static void local_admit(struct policy *p, const struct admit_request *q, struct admit_result *res)
{
    const struct tenant_limits *lim = q->limits;
    int64_t now = (int64_t)time(NULL);
    pthread_mutex_lock(&p->mu);
    struct local_tenant *l = local_get(p, q->tenant);
    int64_t reqs = ring_sum(l->req_sec, l->req_n, now), toks = ring_sum(l->tok_sec, l->tok_n, now);
    /* Counts and amounts are non-negative and saturate (price.h): a huge
     * estimate must fail the check, never wrap around and pass it. */
    int64_t rpm = share(p, lim->rpm), tpm = share(p, lim->tpm), maxc = share(p, lim->max_concurrent);
    /* The budget left when Redis was last seen, of which we may use our
     * share, per window (kept apart to know which one blocks) and the
     * lesser of the two; floor(x * share) is monotone, so the lesser share
     * is the share of the lesser. */
    int64_t used = money_add(l->local_spent, l->local_reserved);
    int64_t left_d = -1, left_m = -1;
    if (lim->budget_day_nano >= 0)
        left_d = money_sub((int64_t)floor((double)money_sub(lim->budget_day_nano, l->known_spent_day) *
                                          p->s.local_share),
                           used);
    if (lim->budget_month_nano >= 0)
        left_m = money_sub((int64_t)floor((double)money_sub(lim->budget_month_nano, l->known_spent_month) *
                                          p->s.local_share),
                           used);
    int64_t left = left_d;
    if (left_m >= 0 && (left < 0 || left_m < left))
        left = left_m;
    res->status = ADMIT_OK;
    int64_t cost = q->est_cost_nano;
    if (rpm > 0 && reqs + 1 > rpm)
        res->status = ADMIT_LIMIT_REQUESTS;
    else if (tpm > 0 && money_add(toks, q->est_tokens) > tpm)
        res->status = ADMIT_LIMIT_TOKENS;
    else if (maxc > 0 && l->concurrent + 1 > maxc)
        res->status = ADMIT_LIMIT_CONCURRENCY;
    else if ((lim->budget_day_nano >= 0 || lim->budget_month_nano >= 0) && cost > left) {
        if (q->alt_cost_nano >= 0 && q->alt_cost_nano <= left) {
            cost = q->alt_cost_nano;
            res->status = ADMIT_DOWNGRADED;
        } else {
            res->status = ADMIT_BUDGET;
        }
    }
    if (res->status == ADMIT_OK || res->status == ADMIT_DOWNGRADED) {
        ring_add(l->req_sec, l->req_n, now, 1);
        ring_add(l->tok_sec, l->tok_n, now, q->est_tokens);
        l->concurrent++;
        l->local_reserved = money_add(l->local_reserved, cost);
        reqs++;
        toks = money_add(toks, q->est_tokens);
        if (left >= 0)
            left = money_sub(left, cost);
    }
    /* Never sooner than the limit can admit it (see admit_result); read
     * under the lock, as the rings are. */
    int64_t retry = 1;
    if (res->status == ADMIT_LIMIT_REQUESTS)
        retry = ring_oldest(l->req_sec, l->req_n, now) + WINDOW_S - now;
    else if (res->status == ADMIT_LIMIT_TOKENS)
        retry = ring_oldest(l->tok_sec, l->tok_n, now) + WINDOW_S - now;
    else if (res->status == ADMIT_BUDGET)
        retry = budget_retry_s(lim, least_cost(q), left_d, left_m, now);
    pthread_mutex_unlock(&p->mu);
    res->local = 1;
    res->limit_requests = rpm;
    res->remaining_requests = rpm > 0 ? (rpm - reqs > 0 ? rpm - reqs : 0) : 0;
    res->reset_requests_ms = WINDOW_S * 1000;
    res->limit_tokens = tpm;
    res->remaining_tokens = tpm > 0 ? (tpm - toks > 0 ? tpm - toks : 0) : 0;
    res->reset_tokens_ms = WINDOW_S * 1000;
    res->budget_remaining_nano = left;
    res->retry_after_s = retry < 1 ? 1 : retry;
}

/* ---- the journal -------------------------------------------------------- */

static void journal_push(struct policy *p, const struct journal_entry *e)
{
    pthread_mutex_lock(&p->mu);
    if (p->j_len == p->s.journal_max) {
        /* Full: keep the newest and say so loudly; this loses spend. */
        struct journal_entry *old = &p->journal[p->j_head];
        free(old->tenant);
        p->j_head = (p->j_head + 1) % p->s.journal_max;
        p->j_len--;
        if (!p->journal_full_logged)
            log_error("spend journal full (%zu entries): the oldest unsettled spend is being dropped",
                      p->s.journal_max);
        p->journal_full_logged = 1;
    }
    p->journal[(p->j_head + p->j_len) % p->s.journal_max] = *e;
    p->j_len++;
    pthread_mutex_unlock(&p->mu);
}

static int journal_pop(struct policy *p, struct journal_entry *out)
{
    pthread_mutex_lock(&p->mu);
    int got = p->j_len > 0;
    if (got) {
        *out = p->journal[p->j_head];
        p->j_head = (p->j_head + 1) % p->s.journal_max;
        p->j_len--;
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

size_t policy_journal_size(struct policy *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->j_len;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* ---- settling ----------------------------------------------------------- */

struct settle_call {
    struct policy *p;
    struct journal_entry e;
};

/* Errors that can come once per request while Redis misbehaves (out of
 * memory, read-only replica, a script flushed): a line a second at most. */
static struct log_limit settle_refused_log, settle_failed_log, admit_failed_log;

static void settle_reply(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct settle_call *sc = ctx;
    if (st == REDIS_CALL_OK && reply->type == REDIS_REPLY_ERROR && strstr(reply->str, "CASCADE_REFUSED")) {
        /* The script refused the arguments before writing anything; a
         * replay would be refused again, so say so loudly and drop it. */
        log_limited(&settle_refused_log, 1000, LOG_ERROR,
                    "settle of request %s for tenant %s refused by Redis (cost %" PRId64 " nano-USD): %s",
                    sc->e.request_id, sc->e.tenant, sc->e.cost, reply->str);
        free(sc->e.tenant);
    } else if (st != REDIS_CALL_OK || reply->type == REDIS_REPLY_ERROR) {
        if (st == REDIS_CALL_OK)
            log_limited(&settle_failed_log, 1000, LOG_ERROR, "settle script failed: %s", reply->str);
        journal_push(sc->p, &sc->e); /* replayed later; the script is idempotent */
    } else {
        free(sc->e.tenant);
    }
    free(sc);
}

static void send_settle(struct policy *p, struct redis *r, const struct journal_entry *e)
{
    char k[8][200], a[7][112];
    key(k[0], sizeof k[0], e->tenant, "resv");
    key(k[7], sizeof k[7], e->tenant, "resv:sum");
    snprintf(k[1], sizeof k[1], "cascade:{%s}:spend:%s", e->tenant, e->day);
    snprintf(k[2], sizeof k[2], "cascade:{%s}:spend:%s", e->tenant, e->month);
    key(k[3], sizeof k[3], e->tenant, "rl:tok");
    snprintf(k[4], sizeof k[4], "cascade:{%s}:saved:%s", e->tenant, e->day);
    snprintf(k[5], sizeof k[5], "cascade:{%s}:saved:%s", e->tenant, e->month);
    snprintf(k[6], sizeof k[6], "cascade:{%s}:settled:%s", e->tenant, e->request_id);
    snprintf(a[0], sizeof a[0], "%s", e->member);
    snprintf(a[1], sizeof a[1], "%lld", (long long)e->cost);
    snprintf(a[2], sizeof a[2], "%lld", (long long)e->token_delta);
    snprintf(a[3], sizeof a[3], "%lld", (long long)e->second);
    snprintf(a[4], sizeof a[4], "%lld", (long long)e->saved_cache);
    snprintf(a[5], sizeof a[5], "%lld", (long long)e->saved_routing);
    snprintf(a[6], sizeof a[6], "%lld", (long long)e->routing_loss);
    const char *argv[15];
    for (int i = 0; i < 8; i++)
        argv[i] = k[i];
    for (int i = 0; i < 7; i++)
        argv[8 + i] = a[i];
    struct settle_call *sc = xmalloc(sizeof *sc);
    sc->p = p;
    sc->e = *e;
    redis_eval(r, settle_reply, sc, p->settle_sha, 8, 15, argv);
}

/* Replay what Redis missed, a batch at a time, when it is back. */
static void journal_flush(struct policy *p, struct event_base *base)
{
    if (!p->s.redis)
        return;
    struct redis *r = redis_for_base(p->s.redis, base);
    if (!redis_connected(r))
        return;
    struct journal_entry e;
    for (int i = 0; i < JOURNAL_BATCH && journal_pop(p, &e); i++)
        send_settle(p, r, &e);
}

static void flush_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct base_timer *bt = arg;
    journal_flush(bt->p, bt->base);
}

/* A once-a-second replay timer on each worker that uses the policy. */
static void ensure_timer(struct policy *p, struct event_base *base)
{
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n_timers; i++)
        if (p->timers[i].base == base) {
            pthread_mutex_unlock(&p->mu);
            return;
        }
    if (p->n_timers < MAX_BASES) {
        struct base_timer *bt = &p->timers[p->n_timers++];
        bt->base = base;
        bt->p = p;
        bt->ev = event_new(base, -1, EV_PERSIST, flush_timer_cb, bt);
        struct timeval tv = {1, 0};
        event_add(bt->ev, &tv);
    }
    pthread_mutex_unlock(&p->mu);
}

void policy_settle(struct policy *p, struct event_base *base, struct reservation *resv, const struct settle_info *info)
{
    static struct log_limit negative_log;
    if (info->cost_nano < 0 || info->tokens < 0 || info->saved_cache_nano < 0 || info->saved_routing_nano < 0 ||
        info->routing_loss_nano < 0)
        log_limited(&negative_log, 1000, LOG_ERROR,
                    "request %s settled with a negative amount (cost %" PRId64 ", tokens %" PRId64 ", saved %" PRId64
                    "/%" PRId64 ", routing loss %" PRId64 "); recorded as 0",
                    resv->request_id, info->cost_nano, info->tokens, info->saved_cache_nano, info->saved_routing_nano,
                    info->routing_loss_nano);
    /* Whatever the caller computed, what reaches Redis or the local
     * counters is within [0, MONEY_MAX] (price.h): never a credit. */
    int64_t cost = money_clamp(info->cost_nano), tokens = money_clamp(info->tokens);
    struct journal_entry e = {0};
    e.tenant = xstrdup(resv->tenant);
    fmt_copy(e.request_id, sizeof e.request_id, resv->request_id);
    fmt_copy(e.member, sizeof e.member, resv->member);
    memcpy(e.day, resv->day, sizeof e.day);
    memcpy(e.month, resv->month, sizeof e.month);
    e.cost = cost;
    /* Both within [0, MONEY_MAX], so the difference cannot overflow. */
    e.token_delta = resv->local ? 0 : tokens - resv->est_tokens;
    e.second = resv->second;
    e.saved_cache = money_clamp(info->saved_cache_nano);
    e.saved_routing = money_clamp(info->saved_routing_nano);
    /* A loss is recorded as its own non-negative sum, never netted here: a
     * net figure could be negative, which the scripts refuse (see SETTLE_LUA). */
    e.routing_loss = money_clamp(info->routing_loss_nano);
    if (resv->local) {
        pthread_mutex_lock(&p->mu);
        struct local_tenant *l = local_get(p, resv->tenant);
        if (l->concurrent > 0)
            l->concurrent--;
        l->local_reserved = money_sub(l->local_reserved, resv->est_cost);
        l->local_spent = money_add(l->local_spent, cost);
        /* TPM counts what the request really used, as the Redis path does
         * (token_delta): admission counted its estimate, which for a
         * request that stopped early is far above it. */
        ring_adjust(l->tok_sec, l->tok_n, resv->second, tokens - resv->est_tokens);
        pthread_mutex_unlock(&p->mu);
    }
    struct redis *r = p->s.redis ? redis_for_base(p->s.redis, base) : NULL;
    if (r && redis_usable(r))
        send_settle(p, r, &e); /* a failure journals it (settle_reply) */
    else if (p->s.redis)
        journal_push(p, &e);
    else
        free(e.tenant); /* no Redis at all: local accounting is all there is */
    free(resv);
}

/* ---- admission ---------------------------------------------------------- */

struct admit_call {
    struct policy *p;
    struct event_base *base;
    policy_admit_cb cb;
    void *ctx;
    struct admit_request q;
    struct tenant_limits limits;
    char tenant[64];
    char request_id[80];
    char day[16], month[16];
};

static struct reservation *make_resv(struct admit_call *ac, int64_t cost, int64_t second, int local)
{
    struct reservation *r = xcalloc(1, sizeof *r);
    r->p = ac->p;
    fmt_copy(r->tenant, sizeof r->tenant, ac->tenant);
    fmt_copy(r->request_id, sizeof r->request_id, ac->request_id);
    char num[24];
    fmt_i64(num, sizeof num, cost);
    fmt_join(r->member, sizeof r->member, ac->request_id, ":", num, (char *)NULL);
    memcpy(r->day, ac->day, sizeof r->day);
    memcpy(r->month, ac->month, sizeof r->month);
    r->est_cost = cost;
    r->est_tokens = ac->q.est_tokens;
    r->second = second;
    r->local = local;
    return r;
}

static void finish_local(struct admit_call *ac)
{
    struct admit_result res = {0};
    local_admit(ac->p, &ac->q, &res);
    int ok = res.status == ADMIT_OK || res.status == ADMIT_DOWNGRADED;
    int64_t cost = res.status == ADMIT_DOWNGRADED ? ac->q.alt_cost_nano : ac->q.est_cost_nano;
    res.reserved_nano = ok ? cost : 0;
    struct reservation *resv = ok ? make_resv(ac, cost, (int64_t)time(NULL), 1) : NULL;
    ac->cb(ac->ctx, &res, resv);
    free(ac);
}

static void deferred_local_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish_local(arg);
}

static void admit_reply(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct admit_call *ac = ctx;
    if (st != REDIS_CALL_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements != 12) {
        if (st == REDIS_CALL_OK)
            log_limited(&admit_failed_log, 1000, LOG_ERROR, "admit script failed: %s",
                        reply->type == REDIS_REPLY_ERROR ? reply->str : "bad reply");
        finish_local(ac); /* Redis away or broken: decide here */
        return;
    }
    long long v[12];
    for (int i = 0; i < 12; i++)
        v[i] = reply->element[i]->integer;
    static const enum admit_status map[] = {ADMIT_OK, ADMIT_DOWNGRADED, ADMIT_LIMIT_REQUESTS,
                                            ADMIT_LIMIT_TOKENS, ADMIT_LIMIT_CONCURRENCY, ADMIT_BUDGET};
    struct admit_result res = {0};
    res.status = v[0] >= 0 && v[0] <= 5 ? map[v[0]] : ADMIT_BUDGET;
    const struct tenant_limits *lim = &ac->limits;
    res.limit_requests = lim->rpm;
    res.remaining_requests = lim->rpm > 0 && lim->rpm - v[1] > 0 ? lim->rpm - v[1] : 0;
    res.reset_requests_ms = v[3];
    res.limit_tokens = lim->tpm;
    res.remaining_tokens = lim->tpm > 0 && lim->tpm - v[2] > 0 ? lim->tpm - v[2] : 0;
    res.reset_tokens_ms = v[4];
    res.budget_remaining_nano = v[5] ? v[6] : -1;
    /* Retry-After, never sooner than the limit can admit this request: a
     * rate limit when its window's oldest bucket leaves it, a budget when
     * the window that blocks it resets, concurrency in a second (no way to
     * know when a request in flight ends). The budget's figures are the
     * script's: spend (v[9], v[10]) and open reservations (v[11]), each
     * within [0, 1e18], so the differences fit an int64. */
    if (res.status == ADMIT_BUDGET) {
        res.retry_after_s = budget_retry_s(lim, least_cost(&ac->q), lim->budget_day_nano - v[9] - v[11],
                                           lim->budget_month_nano - v[10] - v[11], (int64_t)time(NULL));
    } else {
        int64_t reset = res.status == ADMIT_LIMIT_TOKENS ? v[4] : v[3];
        res.retry_after_s = res.status == ADMIT_LIMIT_CONCURRENCY ? 1 : (reset + 999) / 1000;
    }
    if (res.retry_after_s < 1)
        res.retry_after_s = 1;
    /* Remember what Redis said the tenant has spent, for the local
     * fallback should Redis go away. */
    pthread_mutex_lock(&ac->p->mu);
    struct local_tenant *l = local_get(ac->p, ac->tenant);
    l->known_spent_day = money_add(v[9], v[11]); /* open reservations count as spent */
    l->known_spent_month = money_add(v[10], v[11]);
    l->local_spent = 0;
    pthread_mutex_unlock(&ac->p->mu);
    int ok = res.status == ADMIT_OK || res.status == ADMIT_DOWNGRADED;
    /* The cost as we sent it, not as Lua's double returned it: the member
     * to remove at settle is "<id>:<our decimal string>". */
    int64_t cost = res.status == ADMIT_DOWNGRADED ? ac->q.alt_cost_nano : ac->q.est_cost_nano;
    res.reserved_nano = ok ? cost : 0;
    struct reservation *resv = ok ? make_resv(ac, cost, v[7], 0) : NULL;
    ac->cb(ac->ctx, &res, resv);
    journal_flush(ac->p, ac->base); /* Redis answered: a good moment to replay */
    free(ac);
}

static void deferred_unlimited_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct admit_call *ac = arg;
    struct admit_result res = {0};
    res.status = ADMIT_OK;
    res.budget_remaining_nano = -1;
    res.reserved_nano = ac->q.est_cost_nano;
    /* No reservation member in Redis (ZREM of it is a no-op) and no
     * rate-limit bucket to correct (second 0 is never a live bucket). */
    struct reservation *resv = make_resv(ac, ac->q.est_cost_nano, 0, 0);
    ac->cb(ac->ctx, &res, resv);
    free(ac);
}

void policy_admit(struct policy *p, struct event_base *base, const struct admit_request *q, policy_admit_cb cb,
                  void *ctx)
{
    struct admit_call *ac = xcalloc(1, sizeof *ac);
    ac->p = p;
    ac->base = base;
    ac->cb = cb;
    ac->ctx = ctx;
    ac->q = *q;
    /* Estimates within [0, MONEY_MAX] (price.h); alt_cost keeps -1 for none. */
    ac->q.est_tokens = money_clamp(q->est_tokens);
    ac->q.est_cost_nano = money_clamp(q->est_cost_nano);
    ac->q.alt_cost_nano = q->alt_cost_nano < 0 ? -1 : money_clamp(q->alt_cost_nano);
    ac->limits = *q->limits;
    ac->q.limits = &ac->limits;
    fmt_copy(ac->tenant, sizeof ac->tenant, q->tenant);
    fmt_copy(ac->request_id, sizeof ac->request_id, q->request_id);
    ac->q.tenant = ac->tenant;
    ac->q.request_id = ac->request_id;
    today(ac->day, ac->month);
    if (!p->s.redis) {
        event_base_once(base, -1, EV_TIMEOUT, deferred_local_cb, ac, NULL);
        return;
    }
    ensure_timer(p, base);
    const struct tenant_limits *l = &ac->limits;
    if (l->rpm <= 0 && l->tpm <= 0 && l->max_concurrent <= 0 && l->budget_day_nano < 0 && l->budget_month_nano < 0) {
        /* Nothing to check, so nothing to reserve: admit without a round
         * trip. Settlement still records the spend in Redis. */
        event_base_once(base, -1, EV_TIMEOUT, deferred_unlimited_cb, ac, NULL);
        return;
    }
    char k[6][200], a[10][112];
    key(k[0], sizeof k[0], ac->tenant, "rl:req");
    key(k[1], sizeof k[1], ac->tenant, "rl:tok");
    key(k[2], sizeof k[2], ac->tenant, "resv");
    key(k[5], sizeof k[5], ac->tenant, "resv:sum");
    snprintf(k[3], sizeof k[3], "cascade:{%s}:spend:%s", ac->tenant, ac->day);
    snprintf(k[4], sizeof k[4], "cascade:{%s}:spend:%s", ac->tenant, ac->month);
    const struct tenant_limits *lim = &ac->limits;
    snprintf(a[0], sizeof a[0], "%lld", (long long)lim->rpm);
    snprintf(a[1], sizeof a[1], "%lld", (long long)lim->tpm);
    snprintf(a[2], sizeof a[2], "%lld", (long long)lim->max_concurrent);
    snprintf(a[3], sizeof a[3], "%lld", (long long)ac->q.est_tokens);
    snprintf(a[4], sizeof a[4], "%lld", (long long)ac->q.est_cost_nano);
    snprintf(a[5], sizeof a[5], "%lld", (long long)lim->budget_day_nano);
    snprintf(a[6], sizeof a[6], "%lld", (long long)lim->budget_month_nano);
    snprintf(a[7], sizeof a[7], "%s", ac->request_id);
    snprintf(a[8], sizeof a[8], "%u", p->s.reservation_ttl_ms);
    snprintf(a[9], sizeof a[9], "%lld", (long long)ac->q.alt_cost_nano);
    const char *argv[16];
    for (int i = 0; i < 6; i++)
        argv[i] = k[i];
    for (int i = 0; i < 10; i++)
        argv[6 + i] = a[i];
    redis_eval(redis_for_base(p->s.redis, base), admit_reply, ac, p->admit_sha, 6, 16, argv);
}

/* ---- usage -------------------------------------------------------------- */

struct usage_call {
    void (*cb)(void *ctx, json_t *usage);
    void *ctx;
    struct tenant_limits lim;
    char tenant[64];
};

/* One period's spend and savings. Routing savings are reported NET (gain -
 * loss, may be negative) under the name every view uses, with both terms
 * beside it (README "Savings"). Each term is within [-1e18, 1e18] (the
 * script's clamp), so the difference fits an int64. */
static json_t *usage_period(long long spend, long long cache, long long gain, long long loss)
{
    const double usd = 1e-9;
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "spend_usd", (double)spend * usd, "saved_cache_usd",
                     (double)cache * usd, "saved_routing_usd", (double)(gain - loss) * usd, "routing_gain_usd",
                     (double)gain * usd, "routing_loss_usd", (double)loss * usd);
}

static void usage_reply(void *ctx, enum redis_call_status st, redisReply *reply)
{
    struct usage_call *uc = ctx;
    if (st != REDIS_CALL_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements != 12) {
        uc->cb(uc->ctx, NULL);
        free(uc);
        return;
    }
    long long v[12];
    for (int i = 0; i < 12; i++)
        v[i] = reply->element[i]->integer;
    const struct tenant_limits *l = &uc->lim;
    double usd = 1e-9;
    json_t *budget = json_object();
    if (l->budget_day_nano >= 0)
        json_object_set_new(budget, "day_remaining_usd", json_real((double)(l->budget_day_nano - v[0] - v[6]) * usd));
    if (l->budget_month_nano >= 0)
        json_object_set_new(budget, "month_remaining_usd",
                            json_real((double)(l->budget_month_nano - v[1] - v[6]) * usd));
    json_object_set_new(budget, "reserved_usd", json_real((double)v[6] * usd));
    json_t *o = json_pack("{s:s, s:o, s:o, s:o, s:{s:I, s:I, s:I, s:I, s:I, s:I}}", "tenant", uc->tenant, "today",
                          usage_period(v[0], v[2], v[3], v[10]), "month", usage_period(v[1], v[4], v[5], v[11]),
                          "budget", budget, "rate_limits", "rpm", (json_int_t)l->rpm, "requests_last_minute",
                          (json_int_t)v[8], "tpm", (json_int_t)l->tpm, "tokens_last_minute", (json_int_t)v[9],
                          "max_concurrent", (json_int_t)l->max_concurrent, "concurrent", (json_int_t)v[7]);
    uc->cb(uc->ctx, o);
    json_decref(o);
    free(uc);
}

static void usage_none_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct usage_call *uc = arg;
    uc->cb(uc->ctx, NULL);
    free(uc);
}

void policy_usage(struct policy *p, struct event_base *base, const char *tenant, const struct tenant_limits *lim,
                  void (*cb)(void *ctx, json_t *usage), void *ctx)
{
    struct usage_call *uc = xcalloc(1, sizeof *uc);
    uc->cb = cb;
    uc->ctx = ctx;
    uc->lim = *lim;
    snprintf(uc->tenant, sizeof uc->tenant, "%s", tenant);
    char day[16], month[16];
    today(day, month);
    char k[7][200];
    snprintf(k[0], sizeof k[0], "cascade:{%s}:spend:%s", tenant, day);
    snprintf(k[1], sizeof k[1], "cascade:{%s}:spend:%s", tenant, month);
    snprintf(k[2], sizeof k[2], "cascade:{%s}:saved:%s", tenant, day);
    snprintf(k[3], sizeof k[3], "cascade:{%s}:saved:%s", tenant, month);
    key(k[4], sizeof k[4], tenant, "resv");
    key(k[5], sizeof k[5], tenant, "rl:req");
    key(k[6], sizeof k[6], tenant, "rl:tok");
    const char *argv[7];
    for (int i = 0; i < 7; i++)
        argv[i] = k[i];
    if (!p->s.redis) {
        /* No Redis: nothing shared to read; say so on the next loop turn. */
        event_base_once(base, -1, EV_TIMEOUT, usage_none_cb, uc, NULL);
        return;
    }
    redis_eval(redis_for_base(p->s.redis, base), usage_reply, uc, p->usage_sha, 7, 7, argv);
}

/* ---- lifetime ----------------------------------------------------------- */

struct policy *policy_new(const struct policy_settings *s)
{
    struct policy *p = xcalloc(1, sizeof *p);
    p->s = *s;
    if (p->s.journal_max == 0)
        p->s.journal_max = 100000;
    if (p->s.local_share <= 0 || p->s.local_share > 1)
        p->s.local_share = 1;
    /* Up to 28 MB (100,000 entries), touched only while Redis is down: from
     * the OS, whose pages stay unbacked until written. calloc() from an
     * allocator that zeroes what it hands out (mimalloc does, for a block
     * this size) made all of it resident at start. */
    p->journal_bytes = p->s.journal_max * sizeof *p->journal;
    p->journal = mmap(NULL, p->journal_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->journal == MAP_FAILED)
        abort(); /* mem.h's policy: memory for a bounded structure made once at start */
    pthread_mutex_init(&p->mu, NULL);
    if (s->redis) {
        redis_shared_add_script(s->redis, ADMIT_LUA, p->admit_sha);
        redis_shared_add_script(s->redis, SETTLE_LUA, p->settle_sha);
        redis_shared_add_script(s->redis, USAGE_LUA, p->usage_sha);
    }
    return p;
}

void policy_free(struct policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n_timers; i++)
        event_free(p->timers[i].ev);
    if (p->j_len)
        log_error("%zu settlements were never acknowledged by Redis", p->j_len);
    for (size_t i = 0; i < p->j_len; i++)
        free(p->journal[(p->j_head + i) % p->s.journal_max].tenant);
    munmap(p->journal, p->journal_bytes);
    while (p->locals) {
        struct local_tenant *l = p->locals;
        p->locals = l->next;
        free(l->tenant);
        free(l);
    }
    pthread_mutex_destroy(&p->mu);
    free(p);
}
