// Subscriber counts across the machines of a Redis zone: the
// "subscribers" of a publish's 202, of GET's channel info and of DELETE's
// answer, and presence's "count", are the channel's subscribers on every
// live machine, not only this one's.
//
// Each machine publishes its own counts to Redis, and each answer adds
// the others' (as Redis holds them) to this machine's own (exact, from the
// zone). Keys, under the zone's hash tag (one Cluster slot), and every
// script names each key it touches (KEYS), so that a slot migration
// redirects or retries it whole:
//   {sse:NAME}:subs:ID       hash per channel: machine id -> its count
//   {sse:NAME}:alive         hash: machine id -> until when it counts (ms,
//                            Redis's clock), refreshed every third of
//                            redis_machine_ttl
//   {sse:NAME}:machine:MID   set: the channels it has a count in
//
// A machine's id is made once per life of its shared-memory zone (a
// master start; reloads and worker crashes keep it) and kept there. One
// worker, the holder of the machine's Redis bus, pushes the counts that
// changed at most every NGX_HTTP_SSE_COUNT_PUSH_MS, pipelined, one script
// call per NGX_HTTP_SSE_COUNT_BATCH channels; the workers note which
// channels changed in the zone (a table: when it overflows, the pusher
// reads every membership instead). A machine whose time ran out
// (SIGKILLed, cut off) drops out of every sum; its fields are dropped
// lazily: by the sums that meet them, and a hundred channels at a time by
// the others' refreshes. A clean stop removes the machine at once (each
// worker what it knows of; best effort, else its time runs out); a reload
// keeps it. A push writes nothing for a machine Redis does not count.
#include "ngx_http_sse.hpp"

extern "C" {
#include <hiredis/hiredis.h>
}
#include <openssl/rand.h>

#include <algorithm>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#define NGX_HTTP_SSE_COUNT_PUSH_MS 250
#define NGX_HTTP_SSE_COUNT_BATCH 256
// Channels noted between two pushes: one per 64k of the zone, from 32
// to 1024 (260 bytes each); more, and the pusher reads every membership.
#define NGX_HTTP_SSE_COUNT_DIRTY_MIN 32
#define NGX_HTTP_SSE_COUNT_DIRTY_MAX 1024
// Everything is pushed again this often, whatever the pusher thinks
// Redis holds (writes a failover lost, say).
#define NGX_HTTP_SSE_COUNT_RESYNC_MS 60000
#define NGX_HTTP_SSE_COUNT_DEFAULT_TTL 10000
// A count not known (what Redis holds after a takeover).
#define NGX_HTTP_SSE_COUNT_UNKNOWN UINT32_MAX

// In the zone (an aux block of the store, made once): the machine's id
// and the channels whose counts changed since the last push. Written
// under the zone's lock; the figures for sse_status with relaxed atomics.
struct ngx_http_sse_count_shm_t {
    char machine[20];  // 16 hex digits, NUL-terminated
    // Bumped by the master at each start and reload: a worker that
    // exits sees whether newer workers replace it (a reload) or not (a
    // stop). (Where an older build kept its cycle's address.)
    uint64_t generation;
    int64_t last_push;  // ms since the epoch, 0: never
    uint64_t pushes;    // script calls that stored counts
    uint64_t push_errors;
    uint32_t pending;  // channels being pushed
    // Changes were not all noted: read them all; 2: a count Redis lost
    // (see entry::force) was among them: push every count again.
    uint32_t overflow;
    uint32_t n;    // dirty()[0..n) are noted (n is the commit point)
    uint32_t cap;  // entries of dirty()
    struct entry {
        uint32_t hash;
        uint32_t len;
        char id[sse::max_channel_id_len];
        // Redis lost this machine's count of it (a DELETE wiped the
        // channel's hash): pushed again even when it looks unchanged. In
        // what was padding: the layout a reload's older build shares.
        uint8_t force;
    };
    entry *dirty() { return reinterpret_cast<entry *>(this + 1); }
};

static_assert(std::is_standard_layout_v<ngx_http_sse_count_shm_t> &&
              std::is_trivially_destructible_v<ngx_http_sse_count_shm_t>);
static_assert(sizeof(ngx_http_sse_count_shm_t::entry) ==
              8 + sse::max_channel_id_len + 1);

struct ngx_http_sse_count_worker_t;

// One command in flight; outlives the worker's state (cw NULL) until
// Redis's connection gives it back.
struct ngx_http_sse_count_cmd_t {
    ngx_http_sse_count_worker_t *cw;
    void (*reply)(ngx_http_sse_count_worker_t *cw,
                  ngx_http_sse_count_cmd_t *cmd, redisReply *r,
                  const char *err);
    // A read (GET, presence): whoever waits for it.
    ngx_http_sse_count_done_pt done;
    void *data;
    std::vector<std::pair<std::string, uint32_t>> batch;  // a push's
    uint64_t term;  // a push's: the sender's term as the pusher
    // Being sent: a connection that fails at once answers from inside
    // the send; then it counts as not sent.
    bool sending;
    bool failed;
};

enum ngx_http_sse_count_phase_e {
    NGX_HTTP_SSE_COUNT_IDLE = 0,  // not the pusher
    NGX_HTTP_SSE_COUNT_SYNC,      // ask Redis what this machine has there
    NGX_HTTP_SSE_COUNT_SYNCING,
    NGX_HTTP_SSE_COUNT_FULL,   // read every membership, push the differences
    NGX_HTTP_SSE_COUNT_READY,  // push what changed
};

struct ngx_http_sse_count_worker_t {
    ngx_http_sse_zone_worker_t *zw;
    ngx_http_sse_count_shm_t *shm;  // NULL until the zone could hold it
    uint64_t generation;            // the master's when this worker started
    std::string me;
    std::string subs;     // "{sse:NAME}:subs:"
    std::string alive;    // "{sse:NAME}:alive"
    std::string machine;  // "{sse:NAME}:machine:"
    bool collecting;      // dropping a dead machine's fields
    ngx_uint_t phase;
    // Counts this worker's times as the pusher: the zone's pending is the
    // current term's pushes (a takeover starts it again at 0).
    uint64_t term;
    ngx_uint_t in_flight;  // pushes and the sync
    ngx_msec_t last_tick;
    ngx_msec_t next_refresh;
    ngx_msec_t last_sync;
    bool refreshing;
    bool told;  // a push's failure logged, none went through since
    // What Redis holds of this machine's counts, as far as it knows.
    std::unordered_map<std::string, uint32_t> pushed;
    std::unordered_set<ngx_http_sse_count_cmd_t *> cmds;
};

// The Lua read of a channel's count: KEYS: its count key, the liveness
// hash; ARGV: this machine's id.
static const char ngx_http_sse_count_read_lua[] =
    "local ck, ak, me = KEYS[1], KEYS[2], ARGV[1]\n"  //
    NGX_HTTP_SSE_REDIS_COUNT_LUA                      //
    "return subs\n";

// KEYS: this machine's channel set, the liveness hash, then the count
// key of each channel; ARGV: its id, then (channel, count) per count key;
// a count of 0 removes the field. Returns 0, writing nothing, when Redis
// does not count the machine (a clean stop of another of its workers
// removed it, or its time ran out): a write then would outlive every
// remover, since the collectors look only at machines in the liveness
// hash. The pusher refreshes and pushes everything again.
static const char ngx_http_sse_count_push_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if (tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')) <= now then\n"
    "  return 0\n"
    "end\n"
    "for i = 3, #KEYS do\n"
    "  local c, n = ARGV[2 * i - 4], ARGV[2 * i - 3]\n"
    "  if n == '0' then\n"
    "    redis.call('HDEL', KEYS[i], ARGV[1])\n"
    "    redis.call('SREM', KEYS[1], c)\n"
    "  else\n"
    "    redis.call('HSET', KEYS[i], ARGV[1], n)\n"
    "    redis.call('SADD', KEYS[1], c)\n"
    "  end\n"
    "end\n"
    "return 1\n";

// The machine counts for ARGV[1] ms more (Redis's clock). Returns {1 when
// it was counting already (else Redis had forgotten it or let it expire:
// the caller pushes everything again), then up to 3 machines whose time
// ran out}. KEYS: the liveness hash; ARGV: ttl, me.
static const char ngx_http_sse_count_refresh_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local was = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')\n"
    "redis.call('HSET', KEYS[1], ARGV[2], now + tonumber(ARGV[1]))\n"
    "local out = {was > now and 1 or 0}\n"
    "local h = redis.call('HGETALL', KEYS[1])\n"
    "for j = 1, #h, 2 do\n"
    "  if #out < 4 and (tonumber(h[j + 1]) or 0) <= now then\n"
    "    out[#out + 1] = h[j]\n"
    "  end\n"
    "end\n"
    "return out\n";

static ngx_msec_t ngx_http_sse_count_ttl(ngx_http_sse_zone_t *z) {
    return z->redis_machine_ttl ? z->redis_machine_ttl
                                : NGX_HTTP_SSE_COUNT_DEFAULT_TTL;
}

static int64_t ngx_http_sse_count_now_ms() {
    ngx_time_t *tp = ngx_timeofday();
    return (int64_t)tp->sec * 1000 + tp->msec;
}

// ------------------------------------------------------------- the zone

// Call inside a session. The zone's record, made (with the machine's id)
// when absent; NULL when the zone cannot hold it.
static ngx_http_sse_count_shm_t *ngx_http_sse_count_shm(ngx_http_sse_zone_t *z,
                                                        sse::store &s,
                                                        bool create) {
    sse::external_stats &x = sse::store::ext(s.root());
    auto *c = static_cast<ngx_http_sse_count_shm_t *>(x.count);
    if (c != NULL || !create) {
        return c;
    }
    size_t cap = z->shm_zone->shm.size / 65536;
    cap = ngx_max(cap, (size_t)NGX_HTTP_SSE_COUNT_DIRTY_MIN);
    cap = ngx_min(cap, (size_t)NGX_HTTP_SSE_COUNT_DIRTY_MAX);
    size_t size = sizeof(ngx_http_sse_count_shm_t) +
                  cap * sizeof(ngx_http_sse_count_shm_t::entry);
    c = static_cast<ngx_http_sse_count_shm_t *>(
        s.aux_alloc(size, ngx_current_msec));
    if (c == NULL) {
        return NULL;
    }
    ngx_memzero(c, sizeof(ngx_http_sse_count_shm_t));
    c->cap = cap;
    unsigned char b[8];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        // Unique enough: the master's pid and the time.
        uint64_t v = ((uint64_t)getppid() << 40) ^ (uint64_t)ngx_time() ^
                     ((uint64_t)ngx_random() << 20);
        ngx_memcpy(b, &v, sizeof(b));
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(b); i++) {
        c->machine[2 * i] = hex[b[i] >> 4];
        c->machine[2 * i + 1] = hex[b[i] & 15];
    }
    // The commit point (a block left unlinked stays unused); read unlocked
    // by ngx_http_sse_count_id.
    __atomic_store_n(&x.count, c, __ATOMIC_RELEASE);
    return c;
}

static void ngx_http_sse_count_note(ngx_http_sse_zone_t *z, sse::store &s,
                                    std::string_view id, bool force) {
    if (z->redis == NULL) {
        return;
    }
    ngx_http_sse_count_shm_t *c = ngx_http_sse_count_shm(z, s, false);
    if (c == NULL || c->overflow == 2 || (c->overflow && !force)) {
        return;
    }
    uint32_t h = sse::hash_channel_id(id);
    ngx_http_sse_count_shm_t::entry *d = c->dirty();
    if (!c->overflow) {
        for (uint32_t i = 0; i < c->n; i++) {
            if (d[i].hash == h && d[i].len == id.size() &&
                ngx_memcmp(d[i].id, id.data(), id.size()) == 0) {
                d[i].force |= force;
                return;
            }
        }
    }
    if (c->overflow || c->n == c->cap || id.size() > sse::max_channel_id_len) {
        c->overflow = force ? 2 : 1;
        return;
    }
    d[c->n].hash = h;
    d[c->n].len = id.size();
    d[c->n].force = force;
    ngx_memcpy(d[c->n].id, id.data(), id.size());
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    c->n++;
}

void ngx_http_sse_redis_count_touch(ngx_http_sse_zone_t *z, sse::store &s,
                                    std::string_view id) {
    ngx_http_sse_count_note(z, s, id, false);
}

void ngx_http_sse_redis_count_forget(ngx_http_sse_zone_t *z, sse::store &s,
                                     std::string_view id) {
    ngx_http_sse_count_note(z, s, id, true);
}

void ngx_http_sse_redis_count_touch_all(ngx_http_sse_zone_t *z, sse::store &s,
                                        sse::channel *const *chans, size_t n) {
    for (size_t i = 0; i < n; i++) {
        ngx_http_sse_redis_count_touch(z, s, chans[i]->id());
    }
}

void ngx_http_sse_redis_count_touch_slot(ngx_http_sse_zone_t *z, sse::store &s,
                                         uint32_t slot) {
    if (z->redis == NULL) {
        return;
    }
    try {
        for (auto [chan, count] : s.memberships(slot)) {
            ngx_http_sse_redis_count_touch(z, s, chan->id());
        }
    } catch (const std::bad_alloc &) {
        ngx_http_sse_count_shm_t *c = ngx_http_sse_count_shm(z, s, false);
        if (c != NULL) {
            c->overflow = 1;
        }
    }
}

// ------------------------------------------------------------- commands

static void ngx_http_sse_count_reply(void *data, redisReply *r,
                                     const char *err) {
    auto *cmd = static_cast<ngx_http_sse_count_cmd_t *>(data);
    if (cmd->sending) {
        cmd->failed = true;  // ngx_http_sse_count_send says so
        return;
    }
    if (cmd->cw != NULL) {
        cmd->cw->cmds.erase(cmd);
        try {
            cmd->reply(cmd->cw, cmd, r, err);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: %s", e.what());
        }
    } else if (cmd->done != NULL) {
        cmd->done(cmd->data, false, -1);
    }
    delete cmd;
}

static void ngx_http_sse_count_ignore(ngx_http_sse_count_worker_t *cw,
                                      ngx_http_sse_count_cmd_t *cmd,
                                      redisReply *r, const char *err);

// False when nothing was sent (Redis known to be down).
static bool ngx_http_sse_count_send(
    ngx_http_sse_count_worker_t *cw,
    std::unique_ptr<ngx_http_sse_count_cmd_t> cmd,
    const std::vector<std::string_view> &args) {
    cmd->cw = cw;
    cmd->sending = true;
    cw->cmds.insert(cmd.get());
    bool sent;
    try {
        sent = ngx_http_sse_redis_command(cw->zw, args,
                                          ngx_http_sse_count_reply, cmd.get());
    } catch (...) {
        // Out of memory, maybe queued already: kept for a reply that may
        // come (else lost, never freed twice), which nobody waits for and
        // that changes nothing (the caller counted nothing in flight).
        cmd->sending = false;
        cmd->done = NULL;
        cmd->reply = ngx_http_sse_count_ignore;
        cmd.release();
        throw;
    }
    cmd->sending = false;
    if (!sent || cmd->failed) {
        cw->cmds.erase(cmd.get());
        return false;
    }
    cmd.release();
    return true;
}

// ------------------------------------------------------------- reading

// Why a count command failed, for a log line: Redis's own error; a
// connection's failure is logged by the Redis engine already (once, where
// it repeats), so it is not said again here.
static const char *ngx_http_sse_count_why(redisReply *r) {
    return r != NULL && r->type == REDIS_REPLY_ERROR ? r->str
           : r != NULL                               ? "unexpected reply"
                       : "no reply from Redis (see the zone's redis errors)";
}

static void ngx_http_sse_count_read_reply(ngx_http_sse_count_worker_t *cw,
                                          ngx_http_sse_count_cmd_t *cmd,
                                          redisReply *r, const char *err) {
    int64_t others = -1;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
        others = r->integer;
    } else {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sse: zone \"%V\": the other machines' subscribers "
                      "are not known: %s",
                      &cw->zw->zone->shm_zone->shm.name,
                      ngx_http_sse_count_why(r));
    }
    ngx_http_sse_count_done_pt done = cmd->done;
    cmd->done = NULL;
    done(cmd->data, true, others);
}

// This machine's id; "" while the zone holds none. A worker that started
// while the zone could not hold it (full) takes it once another made it:
// a script told "" as this machine's id would count its own field as
// another machine's. Unlocked: the callers may hold the zone's lock.
static const std::string &ngx_http_sse_count_id(
    ngx_http_sse_count_worker_t *cw) {
    if (cw->me.empty()) {
        auto *c = static_cast<ngx_http_sse_count_shm_t *>(__atomic_load_n(
            &sse::store::ext(cw->zw->zone->root).count, __ATOMIC_ACQUIRE));
        if (c != NULL) {
            cw->generation = __atomic_load_n(&c->generation, __ATOMIC_RELAXED);
            cw->shm = c;
            cw->me = c->machine;
        }
    }
    return cw->me;
}

void *ngx_http_sse_redis_count_read(ngx_http_sse_zone_t *z,
                                    std::string_view channel,
                                    ngx_http_sse_count_done_pt done,
                                    void *data) {
    ngx_http_sse_zone_worker_t *zw = ngx_http_sse_zone_worker(z);
    auto *cw =
        zw ? static_cast<ngx_http_sse_count_worker_t *>(zw->count) : NULL;
    if (cw == NULL) {
        return NULL;
    }
    auto cmd = std::make_unique<ngx_http_sse_count_cmd_t>();
    cmd->reply = ngx_http_sse_count_read_reply;
    cmd->done = done;
    cmd->data = data;
    ngx_http_sse_count_cmd_t *handle = cmd.get();
    std::string key = cw->subs + std::string(channel);
    if (!ngx_http_sse_count_send(cw, std::move(cmd),
                                 {"EVAL", ngx_http_sse_count_read_lua, "2", key,
                                  cw->alive, ngx_http_sse_count_id(cw)})) {
        return NULL;
    }
    return handle;
}

void ngx_http_sse_redis_count_cancel(void *handle) {
    auto *cmd = static_cast<ngx_http_sse_count_cmd_t *>(handle);
    cmd->done = NULL;
    cmd->reply = [](ngx_http_sse_count_worker_t *, ngx_http_sse_count_cmd_t *,
                    redisReply *, const char *) {};
}

const std::string &ngx_http_sse_redis_count_me(ngx_http_sse_zone_worker_t *zw) {
    static const std::string none;
    auto *cw = static_cast<ngx_http_sse_count_worker_t *>(zw->count);
    return cw != NULL ? ngx_http_sse_count_id(cw) : none;
}

// ------------------------------------------------------------- pushing

static void ngx_http_sse_count_failed(ngx_http_sse_count_worker_t *cw,
                                      const char *what, redisReply *r,
                                      const char *err) {
    // Once until a push goes through again: a pusher retries every 250 ms.
    if (!cw->told) {
        cw->told = true;
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "sse: zone \"%V\": subscriber counts not pushed "
                      "(%s): %s",
                      &cw->zw->zone->shm_zone->shm.name, what,
                      ngx_http_sse_count_why(r));
    }
    if (cw->shm != NULL) {
        __atomic_fetch_add(&cw->shm->push_errors, 1, __ATOMIC_RELAXED);
    }
    // Whatever Redis holds now, everything goes again.
    if (cw->phase != NGX_HTTP_SSE_COUNT_IDLE) {
        cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
    }
}

static void ngx_http_sse_count_push_reply(ngx_http_sse_count_worker_t *cw,
                                          ngx_http_sse_count_cmd_t *cmd,
                                          redisReply *r, const char *err) {
    cw->in_flight--;
    // Only the pusher's own, of this term: a takeover (after this worker
    // resigned, exiting on a reload, say) counted from 0 without them.
    if (cw->shm != NULL && cmd->term == cw->term &&
        sse::store::peek_bus_pid(cw->zw->zone->root) == ngx_pid) {
        uint32_t k = cmd->batch.size();
        uint32_t v = __atomic_load_n(&cw->shm->pending, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(
            &cw->shm->pending, &v, v > k ? v - k : 0, true, __ATOMIC_RELAXED,
            __ATOMIC_RELAXED)) {
        }
    }
    bool refused =
        r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 0;
    if (r == NULL || r->type == REDIS_REPLY_ERROR || refused) {
        // Run or not (a reply lost), or refused: not known; the resync
        // that follows (or a stop before it) sets or clears each.
        for (auto &[id, n] : cmd->batch) {
            cw->pushed[id] = NGX_HTTP_SSE_COUNT_UNKNOWN;
        }
        if (!refused) {
            ngx_http_sse_count_failed(cw, "push", r, err);
            return;
        }
        // Not counted: at the next tick the refresh counts the machine
        // again, then everything goes again, Redis's set of the machine's
        // channels read first (it still lists what other workers pushed).
        cw->next_refresh = ngx_current_msec;
        if (cw->phase != NGX_HTTP_SSE_COUNT_IDLE) {
            cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
        }
        return;
    }
    for (auto &[id, n] : cmd->batch) {
        if (n == 0) {
            cw->pushed.erase(id);
        } else {
            cw->pushed[id] = n;
        }
    }
    cw->told = false;
    if (cw->shm != NULL) {
        __atomic_fetch_add(&cw->shm->pushes, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&cw->shm->last_push, ngx_http_sse_count_now_ms(),
                         __ATOMIC_RELAXED);
    }
}

// Sends the counts of `now` that differ from what Redis holds.
static void ngx_http_sse_count_push(
    ngx_http_sse_count_worker_t *cw,
    std::unordered_map<std::string, uint32_t> &now) {
    std::vector<std::pair<std::string, uint32_t>> todo;
    for (auto &[id, n] : now) {
        auto it = cw->pushed.find(id);
        uint32_t had = it == cw->pushed.end() ? 0 : it->second;
        if (had != n) {
            todo.emplace_back(id, n);
        }
    }
    for (size_t at = 0; at < todo.size(); at += NGX_HTTP_SSE_COUNT_BATCH) {
        auto cmd = std::make_unique<ngx_http_sse_count_cmd_t>();
        cmd->reply = ngx_http_sse_count_push_reply;
        size_t end = ngx_min(todo.size(), at + NGX_HTTP_SSE_COUNT_BATCH);
        cmd->batch.assign(todo.begin() + at, todo.begin() + end);
        cmd->term = cw->term;
        std::vector<std::string> nums, keys;
        nums.reserve(cmd->batch.size());
        keys.reserve(cmd->batch.size());
        std::string mk = cw->machine + cw->me;
        std::string nkeys = std::to_string(cmd->batch.size() + 2);
        std::vector<std::string_view> args{"EVAL", ngx_http_sse_count_push_lua,
                                           nkeys, mk, cw->alive};
        for (auto &[id, n] : cmd->batch) {
            keys.push_back(cw->subs + id);
            args.push_back(keys.back());
        }
        args.push_back(cw->me);
        for (auto &[id, n] : cmd->batch) {
            nums.push_back(std::to_string(n));
            args.push_back(id);
            args.push_back(nums.back());
        }
        uint32_t k = cmd->batch.size();
        if (!ngx_http_sse_count_send(cw, std::move(cmd), args)) {
            cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
            return;
        }
        cw->in_flight++;
        if (cw->shm != NULL) {
            __atomic_fetch_add(&cw->shm->pending, k, __ATOMIC_RELAXED);
        }
    }
}

// Every channel with subscribers here, with its count, and 0 for those
// Redis holds a count of and have none now. One session per process
// slot, so that the lock is held briefly.
static void ngx_http_sse_count_full(ngx_http_sse_count_worker_t *cw) {
    ngx_http_sse_zone_t *z = cw->zw->zone;
    std::unordered_map<std::string, uint32_t> now;
    for (auto &[id, n] : cw->pushed) {
        now.emplace(id, 0);
    }
    {
        auto s = ngx_http_sse_session(z);
        // Changes from here on are noted again.
        ngx_http_sse_count_shm_t *c = ngx_http_sse_count_shm(z, *s, true);
        if (c != NULL) {
            if (c->overflow == 2) {
                // A count Redis lost was not noted: every count goes again.
                for (auto &[id, n] : cw->pushed) {
                    n = NGX_HTTP_SSE_COUNT_UNKNOWN;
                }
            }
            c->n = 0;
            c->overflow = 0;
        }
        cw->shm = c;
    }
    for (uint32_t slot = 0; slot < sse::max_slots; slot++) {
        if (sse::store::peek_slot_pid(z->root, slot) == 0) {
            continue;
        }
        auto s = ngx_http_sse_session(z);
        for (auto [chan, count] : s->memberships(slot)) {
            now[std::string(chan->id())] = sse::store::subscribers(chan);
        }
    }
    // Counts Redis holds that this worker does not know (after a
    // takeover) differ from any: they go again.
    ngx_http_sse_count_push(cw, now);
}

// The channels noted since the last push.
static void ngx_http_sse_count_changed(ngx_http_sse_count_worker_t *cw) {
    // Reserved before the lock: nothing allocates under it.
    std::string bytes;
    struct noted {
        size_t at, len;
        uint32_t count;
        bool force;
    };
    std::vector<noted> ids;
    if (cw->shm != NULL) {
        bytes.reserve(cw->shm->cap * sse::max_channel_id_len);
        ids.reserve(cw->shm->cap);
    }
    uint32_t overflow;
    {
        auto s = ngx_http_sse_session(cw->zw->zone);
        ngx_http_sse_count_shm_t *c =
            ngx_http_sse_count_shm(cw->zw->zone, *s, true);
        cw->shm = c;
        if (c == NULL) {
            return;
        }
        overflow = c->overflow;
        uint32_t n = ngx_min(c->n, (uint32_t)ids.capacity());
        for (uint32_t i = 0; i < n; i++) {
            const auto &d = c->dirty()[i];
            std::string_view id(d.id, d.len);
            if (overflow && !d.force) {
                continue;  // all are read again; only the forced matter
            }
            sse::channel *ch = s->find(id);
            ids.push_back({bytes.size(), id.size(),
                           ch ? sse::store::subscribers(ch) : 0, d.force != 0});
            bytes.append(id);
        }
        if (n < c->n && !overflow) {
            // First seen by this worker: not all copied.
            c->overflow = overflow = 1;
            for (uint32_t i = n; i < c->n; i++) {
                if (c->dirty()[i].force) {
                    c->overflow = overflow = 2;
                }
            }
        }
        if (!overflow) {
            c->n = 0;
        }
    }
    std::unordered_map<std::string, uint32_t> now;
    for (const auto &k : ids) {
        std::string id = bytes.substr(k.at, k.len);
        if (k.force) {
            // Whatever this worker thinks Redis holds, it goes again.
            cw->pushed[id] = NGX_HTTP_SSE_COUNT_UNKNOWN;
        }
        now.emplace(std::move(id), k.count);
    }
    if (overflow) {
        cw->phase = NGX_HTTP_SSE_COUNT_FULL;
        return;
    }
    ngx_http_sse_count_push(cw, now);
}

static void ngx_http_sse_count_sync_reply(ngx_http_sse_count_worker_t *cw,
                                          ngx_http_sse_count_cmd_t *cmd,
                                          redisReply *r, const char *err) {
    cw->in_flight--;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        ngx_http_sse_count_failed(cw, "SMEMBERS", r, err);
        return;
    }
    // What Redis holds of this machine (another worker pushed it, or the
    // machine was thought dead), and what this worker pushed before: not
    // known any more, so the full push that follows sets or clears each.
    for (auto &[id, n] : cw->pushed) {
        n = NGX_HTTP_SSE_COUNT_UNKNOWN;
    }
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type == REDIS_REPLY_STRING) {
            cw->pushed.emplace(
                std::string(r->element[i]->str, r->element[i]->len),
                NGX_HTTP_SSE_COUNT_UNKNOWN);
        }
    }
    if (cw->phase == NGX_HTTP_SSE_COUNT_SYNCING) {
        cw->phase = NGX_HTTP_SSE_COUNT_FULL;
    }
}

static void ngx_http_sse_count_ignore(ngx_http_sse_count_worker_t *cw,
                                      ngx_http_sse_count_cmd_t *cmd,
                                      redisReply *r, const char *err) {}

// A dead machine's fields, a hundred of its channels at a time: the
// channels read first (SRANDMEMBER), then one script drops them while the
// machine's time is still out (Redis's clock): one that came back
// meanwhile (its refresh found itself expired: it pushes everything
// again) keeps its entry and counts. KEYS: the liveness hash, the dead
// machine's set, then the count key of each channel; ARGV: its id, then
// the channels. Every key under the zone's hash tag: one Cluster slot.
static const char ngx_http_sse_count_collect_lua[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if (tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')) > now then\n"
    "  return 0\n"
    "end\n"
    "for i = 3, #KEYS do\n"
    "  redis.call('HDEL', KEYS[i], ARGV[1])\n"
    "  redis.call('SREM', KEYS[2], ARGV[i - 1])\n"
    "end\n"
    "if redis.call('SCARD', KEYS[2]) == 0 then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"  // forgotten
    "end\n"
    "return 1\n";

static void ngx_http_sse_count_collected_reply(ngx_http_sse_count_worker_t *cw,
                                               ngx_http_sse_count_cmd_t *cmd,
                                               redisReply *r, const char *err) {
    cw->collecting = false;  // the next refresh goes on, if still dead
}

static void ngx_http_sse_count_collect_reply(ngx_http_sse_count_worker_t *cw,
                                             ngx_http_sse_count_cmd_t *cmd,
                                             redisReply *r, const char *err) {
    cw->collecting = false;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || cmd->batch.empty()) {
        return;
    }
    const std::string &dead = cmd->batch[0].first;
    std::vector<std::string> keys;
    keys.reserve(r->elements + 1);
    keys.push_back(cw->machine + dead);
    std::vector<std::string_view> args{"EVAL", ngx_http_sse_count_collect_lua,
                                       "", cw->alive, keys[0]};
    std::vector<std::string_view> chans;
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type == REDIS_REPLY_STRING) {
            chans.emplace_back(r->element[i]->str, r->element[i]->len);
            keys.push_back(cw->subs + std::string(chans.back()));
            args.push_back(keys.back());
        }
    }
    std::string nkeys = std::to_string(chans.size() + 2);
    args[2] = nkeys;
    args.push_back(dead);
    args.insert(args.end(), chans.begin(), chans.end());
    auto c = std::make_unique<ngx_http_sse_count_cmd_t>();
    c->reply = ngx_http_sse_count_collected_reply;
    if (ngx_http_sse_count_send(cw, std::move(c), args)) {
        cw->collecting = true;
    }
}

static void ngx_http_sse_count_refresh_reply(ngx_http_sse_count_worker_t *cw,
                                             ngx_http_sse_count_cmd_t *cmd,
                                             redisReply *r, const char *err) {
    cw->refreshing = false;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        ngx_http_sse_count_failed(cw, "liveness", r, err);
        cw->next_refresh = ngx_current_msec;  // as soon as it can
        return;
    }
    cw->told = false;
    if (r->element[0]->integer == 0 && cw->phase != NGX_HTTP_SSE_COUNT_IDLE) {
        // Redis had forgotten this machine: its counts go again.
        cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
    }
    for (size_t i = 1; i < r->elements && !cw->collecting; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING ||
            std::string_view(e->str, e->len) == cw->me) {
            continue;
        }
        auto c = std::make_unique<ngx_http_sse_count_cmd_t>();
        c->reply = ngx_http_sse_count_collect_reply;
        c->batch.emplace_back(std::string(e->str, e->len), 0);
        std::string mk = cw->machine + c->batch[0].first;
        if (ngx_http_sse_count_send(cw, std::move(c),
                                    {"SRANDMEMBER", mk, "100"})) {
            cw->collecting = true;
        }
    }
}

static void ngx_http_sse_count_refresh(ngx_http_sse_count_worker_t *cw) {
    ngx_http_sse_zone_t *z = cw->zw->zone;
    ngx_msec_t ttl = ngx_http_sse_count_ttl(z);
    auto cmd = std::make_unique<ngx_http_sse_count_cmd_t>();
    cmd->reply = ngx_http_sse_count_refresh_reply;
    std::string t = std::to_string(ttl);
    cw->next_refresh = ngx_current_msec + ngx_max(ttl / 3, (ngx_msec_t)1);
    if (ngx_http_sse_count_send(cw, std::move(cmd),
                                {"EVAL", ngx_http_sse_count_refresh_lua, "1",
                                 cw->alive, t, cw->me})) {
        cw->refreshing = true;
    }
}

// From the worker's poll.
static void ngx_http_sse_count_tick(ngx_http_sse_count_worker_t *cw) {
    ngx_http_sse_zone_worker_t *zw = cw->zw;
    bool leader = sse::store::peek_bus_pid(zw->zone->root) == ngx_pid &&
                  !ngx_exiting && !ngx_terminate;
    if (!leader) {
        cw->phase = NGX_HTTP_SSE_COUNT_IDLE;
        return;
    }
    if (cw->phase == NGX_HTTP_SSE_COUNT_IDLE) {
        // Taken over (or first): learn what Redis holds of this machine.
        cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
        cw->next_refresh = ngx_current_msec;
        cw->term++;
        if (cw->shm != NULL) {
            // What a dead pusher had in flight is not coming back.
            __atomic_store_n(&cw->shm->pending, 0, __ATOMIC_RELAXED);
        }
    }
    if ((ngx_msec_int_t)(ngx_current_msec - cw->last_tick) <
        NGX_HTTP_SSE_COUNT_PUSH_MS) {
        return;
    }
    cw->last_tick = ngx_current_msec;
    if (cw->me.empty()) {
        auto s = ngx_http_sse_session(zw->zone);
        cw->shm = ngx_http_sse_count_shm(zw->zone, *s, true);
        if (cw->shm == NULL) {
            return;  // the zone is full: again later
        }
        cw->me = cw->shm->machine;
        cw->generation = cw->shm->generation;
    }
    if (!cw->refreshing &&
        (ngx_msec_int_t)(ngx_current_msec - cw->next_refresh) >= 0) {
        ngx_http_sse_count_refresh(cw);
    }
    if (cw->in_flight != 0) {
        return;  // one push at a time: replies come in order
    }
    if (cw->phase == NGX_HTTP_SSE_COUNT_READY &&
        (ngx_msec_int_t)(ngx_current_msec - cw->last_sync) >=
            NGX_HTTP_SSE_COUNT_RESYNC_MS) {
        cw->phase = NGX_HTTP_SSE_COUNT_SYNC;
    }
    switch (cw->phase) {
        case NGX_HTTP_SSE_COUNT_SYNC: {
            auto cmd = std::make_unique<ngx_http_sse_count_cmd_t>();
            cmd->reply = ngx_http_sse_count_sync_reply;
            std::string mk = cw->machine + cw->me;
            if (ngx_http_sse_count_send(cw, std::move(cmd), {"SMEMBERS", mk})) {
                cw->last_sync = ngx_current_msec;
                cw->in_flight++;
                cw->phase = NGX_HTTP_SSE_COUNT_SYNCING;
            }
            break;
        }
        case NGX_HTTP_SSE_COUNT_FULL:
            cw->phase = NGX_HTTP_SSE_COUNT_READY;
            ngx_http_sse_count_full(cw);
            break;
        case NGX_HTTP_SSE_COUNT_READY:
            ngx_http_sse_count_changed(cw);
            if (cw->phase == NGX_HTTP_SSE_COUNT_FULL) {
                cw->phase = NGX_HTTP_SSE_COUNT_READY;
                ngx_http_sse_count_full(cw);
            }
            break;
        default:
            break;
    }
}

// ------------------------------------------------------------- worker

void ngx_http_sse_redis_count_init(ngx_http_sse_zone_worker_t *zw) {
    ngx_http_sse_zone_t *z = zw->zone;
    if (z->redis == NULL) {
        return;
    }
    auto *cw = new ngx_http_sse_count_worker_t();
    zw->count = cw;
    cw->zw = zw;
    const std::string &p = ngx_http_sse_redis_prefix(z);
    cw->subs = p + ":subs:";
    cw->alive = p + ":alive";
    cw->machine = p + ":machine:";
    auto s = ngx_http_sse_session(z);
    cw->shm = ngx_http_sse_count_shm(z, *s, true);
    if (cw->shm != NULL) {
        cw->me = cw->shm->machine;
        cw->generation = cw->shm->generation;
    }
}

// In the master, on every start and reload, once nothing can fail the
// new configuration any more (before its workers start): the workers
// that exit from now on are being replaced, not stopped. Makes the
// zone's record (and the machine's id) if need be.
void ngx_http_sse_redis_count_init_module(ngx_cycle_t *cycle) {
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_sse_module));
    if (mcf == NULL) {
        return;
    }
    auto **zones = static_cast<ngx_http_sse_zone_t **>(mcf->zones.elts);
    for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
        ngx_http_sse_zone_t *z = zones[i];
        if (z->redis == NULL || z->root == NULL) {
            continue;
        }
        try {
            auto s = ngx_http_sse_session(z);
            ngx_http_sse_count_shm_t *c = ngx_http_sse_count_shm(z, *s, true);
            if (c != NULL) {
                __atomic_fetch_add(&c->generation, 1, __ATOMIC_RELAXED);
            }
        } catch (const std::exception &e) {
            // The zone is full: its workers make the record later, and
            // the old ones, having none, remove nothing.
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "sse: %s", e.what());
        }
    }
}

void ngx_http_sse_redis_count_poll(ngx_http_sse_zone_worker_t *zw) {
    auto *cw = static_cast<ngx_http_sse_count_worker_t *>(zw->count);
    if (cw == NULL) {
        return;
    }
    try {
        ngx_http_sse_count_tick(cw);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: %s", e.what());
    }
}

// A clean stop, at once (no push lands in between: it would find the
// machine not counted and write nothing): the machine out of every sum,
// the fields this worker knows of dropped from the count keys and the
// set. Fields another worker pushed stay listed in the set, their
// machine's time set to 0 (run out): that worker, if it still runs,
// counts the machine again and learns them from the set; else the
// collectors drop them. With the set empty the machine is forgotten.
// KEYS: the liveness hash, the machine's set, then the count key of each
// channel; ARGV: its id, then the channel of each count key.
static const char ngx_http_sse_count_remove_lua[] =
    "for i = 3, #KEYS do\n"
    "  redis.call('HDEL', KEYS[i], ARGV[1])\n"
    "  redis.call('SREM', KEYS[2], ARGV[i - 1])\n"
    "end\n"
    "if redis.call('SCARD', KEYS[2]) == 0 then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], 0)\n"
    "end\n"
    "return 1\n";

// Before the Redis connections close: a worker that stops (not a
// reload's old worker: the master made a new generation before it
// signalled it) removes the machine's counts; the caller waits briefly
// for Redis to read it (ngx_http_sse_redis_linger); the commands in
// flight are forgotten.
bool ngx_http_sse_redis_count_exit(ngx_http_sse_zone_worker_t *zw) {
    auto *cw = static_cast<ngx_http_sse_count_worker_t *>(zw->count);
    if (cw == NULL) {
        return false;
    }
    bool sent = false;
    // Only a worker that pushed for the machine at some time (term): one
    // that never did wrote nothing, and its removal would take a machine
    // whose pusher goes on (a worker exiting alone) out of the sums.
    if (cw->shm != NULL && !cw->me.empty() && cw->term != 0 &&
        __atomic_load_n(&cw->shm->generation, __ATOMIC_RELAXED) ==
            cw->generation) {
        // Out of every sum, with its fields (as far as this worker pushed
        // them or has pushes in flight, sent before this on the same
        // connection) and its set. Every worker that pushed sends it: one
        // that took the pushing over while the others stopped may have
        // pushed after their removal; a push landing after the last one
        // writes nothing.
        try {
            std::unordered_set<std::string> ids;
            for (auto &[id, n] : cw->pushed) {
                ids.insert(id);
            }
            for (ngx_http_sse_count_cmd_t *cmd : cw->cmds) {
                for (auto &[id, n] : cmd->batch) {
                    ids.insert(id);
                }
            }
            std::vector<std::string> keys;
            keys.reserve(ids.size());  // args views into it
            std::string mk = cw->machine + cw->me;
            std::string nkeys = std::to_string(ids.size() + 2);
            std::vector<std::string_view> args{
                "EVAL", ngx_http_sse_count_remove_lua, nkeys, cw->alive, mk};
            for (const std::string &id : ids) {
                keys.push_back(cw->subs + id);
                args.push_back(keys.back());
            }
            args.push_back(cw->me);
            args.insert(args.end(), ids.begin(), ids.end());
            auto cmd = std::make_unique<ngx_http_sse_count_cmd_t>();
            cmd->reply = ngx_http_sse_count_ignore;
            sent = ngx_http_sse_count_send(cw, std::move(cmd), args);
        } catch (const std::exception &) {
            // Its time runs out: the others stop counting it.
        }
    }
    for (ngx_http_sse_count_cmd_t *cmd : cw->cmds) {
        cmd->cw = NULL;
        if (cmd->done != NULL) {
            ngx_http_sse_count_done_pt done = cmd->done;
            cmd->done = NULL;
            done(cmd->data, false, -1);
        }
    }
    delete cw;
    zw->count = NULL;
    return sent;
}

// ------------------------------------------------------------- GET

// A GET of a channel's info waiting for the other machines' count; in
// r->pool, freed by its cleanup.
struct ngx_http_sse_count_info_t {
    ngx_http_request_t *r;
    void *handle;
    bool found;
    uint32_t local;
    std::string pre, post;
};

static ngx_int_t ngx_http_sse_count_info_answer(ngx_http_sse_count_info_t *in,
                                                int64_t others) {
    uint64_t total = in->local + (others > 0 ? (uint64_t)others : 0);
    if (!in->found && total == 0) {
        return ngx_http_sse_error(in->r, NGX_HTTP_NOT_FOUND, "no such channel");
    }
    return ngx_http_sse_send_text(in->r, NGX_HTTP_OK, "application/json",
                                  in->pre + std::to_string(total) + in->post);
}

static void ngx_http_sse_count_info_done(void *data, bool run, int64_t others) {
    auto *in = static_cast<ngx_http_sse_count_info_t *>(data);
    in->handle = NULL;
    if (!run) {
        return;  // the worker exits
    }
    ngx_http_request_t *r = in->r;
    ngx_connection_t *c = r->connection;
    ngx_int_t rc;
    try {
        rc = ngx_http_sse_count_info_answer(in, others);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0, "sse: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

ngx_int_t ngx_http_sse_redis_count_info(ngx_http_request_t *r,
                                        ngx_http_sse_zone_t *z,
                                        std::string_view channel, bool found,
                                        uint32_t local, std::string json_pre,
                                        std::string json_post) {
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *in = new ngx_http_sse_count_info_t();
    in->r = r;
    in->found = found;
    in->local = local;
    in->pre = std::move(json_pre);
    in->post = std::move(json_post);
    cln->handler = [](void *p) {
        auto *in = static_cast<ngx_http_sse_count_info_t *>(p);
        if (in->handle != NULL) {
            ngx_http_sse_redis_count_cancel(in->handle);
        }
        delete in;
    };
    cln->data = in;
    in->handle = ngx_http_sse_redis_count_read(
        z, channel, ngx_http_sse_count_info_done, in);
    if (in->handle == NULL) {
        // Redis is down: what this machine knows.
        return ngx_http_sse_count_info_answer(in, -1);
    }
    r->main->count++;
    return NGX_DONE;
}

// ------------------------------------------------------------- config

char *ngx_http_sse_redis_count_parse(ngx_conf_t *cf, ngx_http_sse_zone_t *z,
                                     ngx_str_t *ttl) {
    ngx_msec_t v = ngx_parse_time(ttl, 0);
    // At least a second: the liveness key is refreshed every third of it.
    if (v == (ngx_msec_t)NGX_ERROR || v < 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid redis_machine_ttl \"%V\" in \"sse_zone\", "
                           "expected a time of at least 1s",
                           ttl);
        return (char *)NGX_CONF_ERROR;
    }
    z->redis_machine_ttl = v;
    return NGX_CONF_OK;
}

// ------------------------------------------------------------- status

void ngx_http_sse_redis_count_figures(ngx_http_sse_zone_t *z,
                                      ngx_http_sse_redis_count_figures_t *f) {
    *f = ngx_http_sse_redis_count_figures_t{};
    f->last_push_ms_ago = -1;
    if (z->redis == NULL) {
        return;
    }
    auto *c = static_cast<ngx_http_sse_count_shm_t *>(
        __atomic_load_n(&sse::store::ext(z->root).count, __ATOMIC_RELAXED));
    if (c == NULL) {
        return;
    }
    f->on = true;
    char id[sizeof(c->machine)];
    ngx_memcpy(id, c->machine, sizeof(id));
    id[sizeof(id) - 1] = '\0';
    f->machine = id;
    f->pusher_pid = sse::store::peek_bus_pid(z->root);
    int64_t last = __atomic_load_n(&c->last_push, __ATOMIC_RELAXED);
    if (last != 0) {
        f->last_push_ms_ago =
            std::max<int64_t>(0, ngx_http_sse_count_now_ms() - last);
    }
    f->pending = __atomic_load_n(&c->pending, __ATOMIC_RELAXED) +
                 __atomic_load_n(&c->n, __ATOMIC_RELAXED);
    f->pushes = __atomic_load_n(&c->pushes, __ATOMIC_RELAXED);
    f->push_errors = __atomic_load_n(&c->push_errors, __ATOMIC_RELAXED);
    f->machine_ttl_ms = ngx_http_sse_count_ttl(z);
}

std::string ngx_http_sse_redis_count_json(ngx_http_sse_zone_t *z) {
    if (z->redis == NULL) {
        return "";
    }
    ngx_http_sse_redis_count_figures_t f;
    ngx_http_sse_redis_count_figures(z, &f);
    std::string j = "{\"machine\":";
    if (!f.on) {
        return j + "null}";
    }
    ngx_http_sse_json_string(j, f.machine.c_str());
    return j + ",\"pusher_pid\":" + std::to_string(f.pusher_pid) +
           ",\"last_push_ms_ago\":" +
           (f.last_push_ms_ago >= 0 ? std::to_string(f.last_push_ms_ago)
                                    : std::string("null")) +
           ",\"pending\":" + std::to_string(f.pending) +
           ",\"pushes\":" + std::to_string(f.pushes) +
           ",\"push_errors\":" + std::to_string(f.push_errors) +
           ",\"machine_ttl_ms\":" + std::to_string(f.machine_ttl_ms) + "}";
}
