// The Redis engine: `sse_zone ... redis=URL`. Redis holds a zone's ids,
// history and notifications; each machine's shared-memory zone stays its
// local cache and fan-out path, fed in seq order with the ids Redis gave.
//
// I/O: hiredis only formats commands and parses replies (redisReader); the
// sockets are nginx peer connections on the worker's event loop. So every
// connect, read and write is non-blocking, timers bound every command, and
// nothing of hiredis's own connection handling (blocking DNS in
// redisAsyncConnect, its own callbacks freeing the context) needs taming.
//
// Layout in Redis, every key under one hash tag (one Cluster slot):
//   {sse:NAME}:epoch   this life of the zone's data (SET once; TIME-based)
//   {sse:NAME}:seq     the zone-wide counter (INCR); starts at the epoch
//                      value, so seqs of a new epoch pass every old one
//   {sse:NAME}:ch:ID   a stream per channel, entry id SEQ-1, fields
//                      p (the channel's previous seq: with no stream left,
//                      its delete's or its newest before the stream
//                      expired, from chans; 0: none known), l and t (the
//                      publisher's sse_buffer_length and sse_message_ttl,
//                      which every machine's cache keeps too) and d (the
//                      encoded body)
//   {sse:NAME}:chans   sorted set: channel -> its newest seq (for repair
//                      and a new machine's back-fill)
//   {sse:NAME}:bus     the pub/sub channel: "EPOCH SEQ PREV L T LEN ID" BODY
//   {sse:NAME}:log     a stream of the zone's newest events, all channels
//                      (entry id SEQ-1, fields c, p, l, t, d): a machine that
//                      missed some (outage, bus worker restarted) repairs
//                      from it exactly, however short the channels' streams
//
// A new machine (fresh shared memory) takes its history from the log; the
// channels' events older than the log's first entry (a quiet channel in a
// busy zone) it reads first from their streams, newest channels first,
// within a bound, and commits them in seq order before the log (see
// "back-fill" below): what does not fit (the coldest channels) starts at
// the log, and a resume from before it reports a gap.
//
// A DELETE takes a seq too and travels the same way (bus and log) with
// L = 0, which no event has: every machine removes the channel at that
// point of the order, ending its streams with sse-error "deleted". The
// channel's stream is deleted; :chans keeps the channel with the delete's
// seq, so a machine whose repair the log no longer covers ends those
// streams with a gap.
//
// Only one worker per machine (the bus leader, claimed in the zone) holds
// the SUBSCRIBE connection and commits what it hears, in seq order. The
// publishing worker commits its own event only when it is the next seq
// the zone expects (nothing can be missing before it); otherwise the
// leader does, and commit_at drops whichever copy comes second.
#include "ngx_http_sse.hpp"

extern "C" {
#include <hiredis/hiredis.h>
}
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/time.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <set>

// Why a Redis with tls-auth-clients refused us.
#define NGX_HTTP_SSE_REDIS_NO_CERT                                \
    "Redis refused the TLS connection after asking for a client " \
    "certificate: set redis_cert= and redis_key= (or tls-auth-clients no)"

// How long a measured offset to Redis's clock is used (ms).
#define NGX_HTTP_SSE_REDIS_CLOCK_AGE 60000
#define NGX_HTTP_SSE_REDIS_DEFAULT_PORT 6379
#define NGX_HTTP_SSE_REDIS_SENTINEL_PORT 26379
// A script that met a slot half migrated (TRYAGAIN) is sent again after
// this many ms, doubling up to the second figure, within redis_timeout.
#define NGX_HTTP_SSE_REDIS_TRYAGAIN_MIN 10
#define NGX_HTTP_SSE_REDIS_TRYAGAIN_MAX 100
#define NGX_HTTP_SSE_REDIS_DEFAULT_TIMEOUT 2000
// Reconnect delays double from the first to the last.
#define NGX_HTTP_SSE_REDIS_BACKOFF_MIN 100
#define NGX_HTTP_SSE_REDIS_BACKOFF_MAX 1000
#define NGX_HTTP_SSE_REDIS_PING_MS 1000
// With Sentinel, each worker asks the sentinels this often which node is
// the primary, so that connections left on an old one (a partition, a
// failover that left it up) move.
#define NGX_HTTP_SSE_REDIS_CHECK_MS 1000
// Events committed per pair of sessions while repairing.
#define NGX_HTTP_SSE_REDIS_BATCH 256
// Channels remembered for repair (the newest by seq).
#define NGX_HTTP_SSE_REDIS_MAX_CHANNELS "100000"
// Events of the zone's log (about: trimmed with ~).
#define NGX_HTTP_SSE_REDIS_LOG_LENGTH "100000"

enum ngx_http_sse_redis_state_e {
    NGX_HTTP_SSE_REDIS_DOWN = 0,
    NGX_HTTP_SSE_REDIS_CONNECTING,
    NGX_HTTP_SSE_REDIS_SYNCING,
    NGX_HTTP_SSE_REDIS_UP,
};

static const char *const ngx_http_sse_redis_state_text[] = {
    "down", "connecting", "syncing", "up"};

struct ngx_http_sse_redis_conf_t {
    ngx_str_t url;  // as written but for credentials (***), for messages
    ngx_addr_t addr;
    // redis://host[:port],host[:port]...: a Redis Cluster's nodes, any of
    // which redirects to a zone's node; a connection that fails moves on
    // to the next (addr is the first).
    ngx_array_t *seeds;       // of ngx_addr_t; NULL with Sentinel
    ngx_array_t *seed_hosts;  // of ngx_str_t: each seed's host as written
    // redis+sentinel://: the sentinels asked for the primary of master;
    // NULL: addr is the server.
    ngx_array_t *sentinels;  // of ngx_addr_t
    ngx_str_t master;
    ngx_str_t user;
    ngx_str_t password;
    // redis_sentinel_auth=: what the sentinels want (len 0: no AUTH).
    ngx_str_t sentinel_user;
    ngx_str_t sentinel_password;
    ngx_uint_t db;
    ngx_msec_t timeout;
    std::string *prefix;  // "{sse:NAME}"; freed with the cycle
    // For a primary the sentinels name by hostname: the http level's
    // "resolver" (read in the worker: the directive may come later).
    ngx_http_core_loc_conf_t *clcf;
    ngx_ssl_t *ssl;  // rediss://; NULL: plain TCP
    ngx_str_t host;  // the name its certificate must hold
};

// The zone's keys and scripts, shared by every connection of the worker.

// Creates the epoch (and starts the counter at it) when Redis has none,
// and starts a new one when Redis holds fewer events than this machine
// (restored from an older copy): either way old ids then report a gap.
// ARGV[1], ARGV[2]: this machine's epoch and newest seq.
#define NGX_HTTP_SSE_REDIS_PROLOGUE                                     \
    "local e = redis.call('GET', KEYS[1])\n"                            \
    "local s = tonumber(redis.call('GET', KEYS[2]) or '0')\n"           \
    "if (not e) or (e == ARGV[1] and s < tonumber(ARGV[2])) then\n"     \
    "  local t = redis.call('TIME')\n"                                  \
    "  local n = math.max(tonumber(t[1]) * 1000000 + tonumber(t[2]),\n" \
    "                     tonumber(ARGV[2]) + 1, s + 1)\n"              \
    "  e = string.format('%.0f', n)\n"                                  \
    "  s = n\n"                                                         \
    "  redis.call('SET', KEYS[1], e)\n"                                 \
    "  redis.call('SET', KEYS[2], e)\n"                                 \
    "end\n"

// The cut-off's check, first thing in a script (before any write); CUT is
// the ARGV that holds it.
#define NGX_HTTP_SSE_REDIS_CUTOFF_LUA(CUT)                            \
    "if " CUT                                                         \
    " ~= '0' then\n"                                                  \
    "  local t = redis.call('TIME')\n"                                \
    "  if tonumber(t[1]) * 1000000 + tonumber(t[2]) >= tonumber(" CUT \
    ")\n"                                                             \
    "  then\n"                                                        \
    "    return redis.error_reply('TIMEOUT reached Redis after "      \
    "redis_timeout')\n"                                               \
    "  end\n"                                                         \
    "end\n"

// A group commit: the publishes one worker had ready in one turn of its
// event loop, in one call, all stored or none. KEYS: epoch seq chans bus
// log alive (the machines' liveness hash), then each event's stream, then
// the count keys of the events counted; ARGV: local epoch, local seq,
// cut-off, this machine's id, then five per event: channel, body, maxlen,
// ttl ms, and the index in KEYS of its channel's count key ('0': not
// counted; the caller marks the last event of each request that waits
// for an answer). Each event gets the next seq, in the order given, and
// the same effects as a publish alone: stream and log entries, the
// channel's place in chans, a notification on the bus. Returns one result
// per event, {epoch, seq}, with a third element for a counted event: the
// channel's subscribers on the other live machines (each count key read
// once per call). The cut-off (0: none) is when, by Redis's clock, the
// worker gives up waiting (ngx_http_sse_redis_fence): a call that reaches
// Redis later does nothing, its publishers having had their 503.
static const char ngx_http_sse_redis_publish_lua[] =
    NGX_HTTP_SSE_REDIS_CUTOFF_LUA("ARGV[3]")
    "local n = (#ARGV - 4) / 5\n"
    // The channels' subscribers on the other live machines, once per
    // count key, before anything is written: a Lua error later would
    // leave events stored and published that their publishers are told
    // failed (Redis does not roll a script back).
    "local counted, me, ak = {}, ARGV[4], KEYS[6]\n"
    "for i = 1, n do\n"
    "  local ck = KEYS[tonumber(ARGV[5 * i + 4])]\n"
    "  if ck and not counted[ck] then\n"  //
    NGX_HTTP_SSE_REDIS_COUNT_LUA          //
    "    counted[ck] = subs\n"
    "  end\n"
    "end\n" NGX_HTTP_SSE_REDIS_PROLOGUE
    "local first = redis.call('INCRBY', KEYS[2], n) - n\n"
    // The streams this call wrote: {newest sid, its seq, channel, ttl}.
    // Their expiry and place in chans are set once, after the loop, to
    // what they would be after the last event (no one sees in between).
    "local seen = {}\n"
    "local out = {}\n"
    "for i = 1, n do\n"
    "  local k, a = KEYS[6 + i], 5 * i\n"
    "  local c, d, l, t = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]\n"
    // ---- one event
    "  local sid = string.format('%.0f', first + i)\n"
    "  local p = seen[k] and seen[k][1]\n"
    "  if not p then\n"
    "    local last = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)\n"
    "    p = '0'\n"
    "    if #last > 0 then p = string.match(last[1][1], '^(%d+)')\n"
    // No stream: the channel's previous seq is its delete's, or its
    // newest before the stream expired (a new machine's back-fill tells
    // resumes from before it that they missed something).
    "    else\n"
    "      local z = redis.call('ZSCORE', KEYS[3], c)\n"
    "      if z then p = string.format('%.0f', tonumber(z)) end\n"
    "    end\n"
    "  end\n"
    "  seen[k] = {sid, first + i, c, t}\n"
    "  redis.call('XADD', k, 'MAXLEN', l, sid .. '-1',\n"
    "             'p', p, 'l', l, 't', t, 'd', d)\n"
    "  redis.call('XADD', KEYS[5], 'MAXLEN', "
    "'~', " NGX_HTTP_SSE_REDIS_LOG_LENGTH
    ",\n"
    "             sid .. '-1', 'c', c, 'p', p, 'l', l, 't', t, 'd', d)\n"
    "  redis.call('PUBLISH', KEYS[4], e .. ' ' .. sid .. ' ' .. p .. ' ' ..\n"
    "             l .. ' ' .. t .. ' ' .. #c .. ' ' .. c .. d)\n"
    "  local ck = KEYS[tonumber(ARGV[a + 4])]\n"
    "  out[i] = {e, sid, ck and counted[ck]}\n"
    // ---- end of one event
    "end\n"
    "for k, v in pairs(seen) do\n"
    "  redis.call('PEXPIRE', k, v[4])\n"
    "  redis.call('ZADD', KEYS[3], v[2], v[3])\n"
    "end\n"
    // The newest seqs are this call's: the same channels stay as when
    // trimmed after each event.
    "redis.call('ZREMRANGEBYRANK', KEYS[3], 0, "
    "-" NGX_HTTP_SSE_REDIS_MAX_CHANNELS
    " - 1)\n"
    "return out\n";

// KEYS: epoch seq stream chans bus log subs alive; ARGV: local epoch,
// local seq, channel, this machine's id, cut-off (as the publish's: a
// DELETE that got its 503 must not run later). Returns {epoch, seq, 1 when
// the channel's stream existed, its subscribers on the other live
// machines}.
static const char ngx_http_sse_redis_delete_lua[] =
    NGX_HTTP_SSE_REDIS_CUTOFF_LUA("ARGV[5]") NGX_HTTP_SSE_REDIS_PROLOGUE
    "local existed = redis.call('EXISTS', KEYS[3])\n"
    "s = redis.call('INCR', KEYS[2])\n"
    "local sid = string.format('%.0f', s)\n"
    "redis.call('DEL', KEYS[3])\n"
    "redis.call('XADD', KEYS[6], 'MAXLEN', '~', " NGX_HTTP_SSE_REDIS_LOG_LENGTH
    ", sid .. '-1',\n"
    "           'c', ARGV[3], 'l', '0', 't', '0', 'd', '')\n"
    "redis.call('ZADD', KEYS[4], s, ARGV[3])\n"
    "redis.call('PUBLISH', KEYS[5], e .. ' ' .. sid .. ' 0 0 0 ' ..\n"
    "           #ARGV[3] .. ' ' .. ARGV[3])\n"
    "local ck, ak, me = KEYS[7], KEYS[8], ARGV[4]\n"  //
    NGX_HTTP_SSE_REDIS_COUNT_LUA                      //
    // Every subscriber's stream ends: nobody is counted any more.
    "redis.call('DEL', ck)\n"
    "return {e, sid, existed, subs}\n";

// A machine found that Redis gave a seq it holds to another event (Redis
// lost acknowledged events, then counted on): a new epoch, unless another
// machine started one already, announced on the bus as a delete of the
// channel "" (no channel has that id) so that every machine takes it.
// KEYS: epoch seq bus; ARGV: the epoch that diverged, local seq.
static const char ngx_http_sse_redis_fork_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "local s = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "local t = redis.call('TIME')\n"
    "local n = math.max(tonumber(t[1]) * 1000000 + tonumber(t[2]),\n"
    "                   tonumber(ARGV[2]) + 1, s + 1)\n"
    "local e = string.format('%.0f', n)\n"
    "redis.call('SET', KEYS[1], e)\n"
    "redis.call('SET', KEYS[2], e)\n"
    "redis.call('PUBLISH', KEYS[3], e .. ' ' .. e .. ' 0 0 0 0 ')\n"
    "return 1\n";

// KEYS: epoch seq; ARGV: local epoch, local seq. Returns {epoch, seq}.
static const char ngx_http_sse_redis_sync_lua[] =
    NGX_HTTP_SSE_REDIS_PROLOGUE "return {e, string.format('%.0f', s)}\n";

struct ngx_http_sse_redis_conn_t;

// A reply, or err (reply NULL) when the command failed: connection lost,
// timeout, or the worker exiting.
using ngx_http_sse_redis_reply_pt = void (*)(ngx_http_sse_redis_conn_t *rc,
                                             void *data, redisReply *reply,
                                             const char *err);

struct ngx_http_sse_redis_cmd_t {
    ngx_http_sse_redis_reply_pt handler;
    void *data;
    ngx_msec_t deadline;
    std::string wire;  // the command connection's: sent again on ASK
};

// A Redis node by address (MOVED, ASK, a sentinel's answer).
struct ngx_http_sse_redis_node_t {
    ngx_sockaddr_t sa;
    socklen_t len;  // 0: none, or a hostname not resolved yet
    std::string name;
    ngx_str_t str;
    // A Redis Cluster node announced by hostname (empty: by address).
    std::string host;
    in_port_t port;
};

// What a lookup with nginx's resolver is for.
enum ngx_http_sse_redis_lookup_e {
    NGX_HTTP_SSE_REDIS_LOOKUP_PRIMARY = 0,  // the sentinels' primary
    NGX_HTTP_SSE_REDIS_LOOKUP_MOVED,        // rw->moved, for rw->cmd
    NGX_HTTP_SSE_REDIS_LOOKUP_ASK,          // rw->asked, for rw->ask
    NGX_HTTP_SSE_REDIS_LOOKUPS
};

// A hostname being resolved.
struct ngx_http_sse_redis_lookup_t {
    ngx_resolver_ctx_t *ctx;  // NULL: none under way
    std::string what;         // "sentinel HOST:PORT names the primary"...
    std::string by;           // the sentinel: "sentinel HOST:PORT"
    std::string name;         // "NAME:PORT", as the node was named
    std::string host;         // NAME for the resolver, which lowercases it
    in_port_t port;
};

// Bits of external_stats::told: lines a machine logs once per zone.
#define NGX_HTTP_SSE_REDIS_TOLD_NO_RESOLVER 1
#define NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL 2
#define NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS 4

struct ngx_http_sse_redis_worker_t;

// One connection to Redis: commands pipelined, replies in order.
struct ngx_http_sse_redis_conn_t {
    ngx_http_sse_redis_worker_t *rw;
    const char *role;
    ngx_peer_connection_t pc;
    redisReader *reader;
    std::string out;
    std::deque<ngx_http_sse_redis_cmd_t> pending;
    ngx_event_t timer;
    // connect() or send() failed inside the call that queued a command:
    // the close runs from this posted event (see ngx_http_sse_redis_break).
    ngx_event_t broken;
    const char *broken_err;
    uint64_t life;  // bumped by each close: stale callers notice
    bool connecting;
    bool connected;
    bool discovering;  // connecting, waiting for the sentinels' answer
                       // (or for a cluster node's hostname to resolve)
    std::string node;  // Sentinel: the primary it was connected to
    // A node named by hostname (its address is cached): forgotten when
    // the connection fails, so that the name is looked up again.
    bool by_host;
    bool on_seed;  // connected to conf->seeds[rw->seed_i[its role]]
    // The name TLS checks the node's certificate against (and sends as
    // SNI): the node's own when it has one, else the URL's host.
    std::string tls_host;
    // TLS without redis_cert=: the server asked for a client certificate
    // (tls-auth-clients), and no reply came yet; see cert_asked().
    bool cert_asked;
    bool replied;
    // A sentinel probe: asks that sentinel only, and fails quietly (the
    // census counts it).
    ngx_addr_t *probe;
    // Pub/sub messages (the bus connection only).
    void (*on_message)(ngx_http_sse_redis_worker_t *rw, redisReply *r);
    void (*on_close)(ngx_http_sse_redis_worker_t *rw, const char *err);
};

// One event heard on the bus or read from a stream.
struct ngx_http_sse_redis_event_t {
    uint64_t epoch;
    uint64_t seq;
    // Nonzero: the channel's previous seq by Redis, checked against what
    // the zone holds (store::note_prev). lost: a back-filled channel's
    // first (Redis has nothing older), also for a channel it makes; prev:
    // the log's and bus's in a new machine's sync, for channels held.
    uint64_t lost = 0;
    uint64_t prev = 0;
    uint32_t buffer_length;  // 0: the channel was deleted (no body)
    ngx_msec_t ttl;
    std::string channel;
    std::string body;
};

struct ngx_http_sse_redis_backfill_t;

struct ngx_http_sse_redis_worker_t {
    ngx_http_sse_zone_worker_t *zw;
    ngx_http_sse_redis_conf_t *conf;
    // Where the zone's keys live: the configured address, or the node a
    // Redis Cluster redirected us to (MOVED).
    ngx_http_sse_redis_node_t moved;  // len 0: the configured address
    // The node of a slot being migrated, for one command at a time (ASK).
    ngx_http_sse_redis_node_t asked;
    // Sentinel: the primary they named (len 0: ask them), which of them is
    // asked, how many were asked this round.
    ngx_http_sse_redis_node_t primary;
    // The primary a sentinel named last, and whether any sentinel
    // answered (anything) in this discovery: with none reachable, the
    // connections go back to it.
    ngx_http_sse_redis_node_t last_primary;
    bool sentinel_heard;
    ngx_uint_t sentinel_i;
    // Which of conf->seeds the command connection [0] and the bus [1] use.
    ngx_uint_t seed_i[2];
    ngx_uint_t sentinel_tries;
    bool discovering;
    bool checking;  // a periodic question, nobody waits for it
    bool moving;    // closing connections left on an old primary
    ngx_event_t discover_ev;
    ngx_event_t check_ev;
    // Hostnames being resolved (nginx's resolver): a primary the
    // sentinels name, a cluster node of a MOVED or an ASK.
    ngx_http_sse_redis_lookup_t lookups[NGX_HTTP_SSE_REDIS_LOOKUPS];
    ngx_event_t lookup_ev;  // starts the lookups connections wait for
    // Cluster nodes named by hostname, as resolved ("NAME:PORT").
    std::map<std::string, std::pair<ngx_sockaddr_t, socklen_t>> hosts;
    // The census: every check asks each sentinel on a connection of its
    // own (probes), to show how many answer.
    std::vector<std::unique_ptr<struct ngx_http_sse_redis_conn_t>> probes;
    ngx_uint_t census_left;  // replies still awaited this round
    ngx_uint_t census_answered;
    std::string census_why;  // why the last one failed
    ngx_log_t quiet_log;     // nginx's own connect errors of probes
    ngx_log_t cert_log;      // nginx's [crit] of a refused client (cert_asked)
    std::string told;        // an error logged once: not again on close
    // epoch seq chans bus, the stream prefix, log, and the counts' alive
    // and per-channel prefix (the names ngx_http_sse_redis_count.cpp uses)
    std::string keys[8];
    ngx_http_sse_redis_conn_t cmd;
    ngx_http_sse_redis_conn_t bus;
    ngx_http_sse_redis_conn_t ask;       // to the node of an ASK
    ngx_http_sse_redis_conn_t sentinel;  // to the sentinel being asked
    // Publishes waiting to be sent again (TRYAGAIN).
    std::vector<struct ngx_http_sse_redis_publish_t *> waiting;
    ngx_msec_t cmd_down_until;  // publishes fail fast until then
    std::string cmd_error;
    // The bus (leader only).
    bool leader;
    ngx_uint_t bus_state;
    ngx_msec_t backoff;
    ngx_event_t bus_timer;  // reconnects and pings
    uint64_t sync_gen;
    std::vector<ngx_http_sse_redis_event_t> heard;  // held while repairing
    size_t heard_bytes;   // of heard's bodies: bounded while repairing
    uint64_t fetch_from;  // the zone's seq when the repair started
    uint64_t fetch_next;  // the seq the next page of the log starts at
    uint64_t sync_epoch;
    uint64_t sync_seq;      // Redis's newest when we subscribed
    bool check_newest;      // the log's first entry is our newest: compare
    bool fresh;             // a new machine (or epoch): a trimmed log starts
                            // the history of the channels not held yet
    uint64_t hole_to;       // a hole in the log being marked gone, up to
    std::string hole_min;   // where its next page of :chans starts
    uint64_t stall_seq;     // the zone's seq when the bus last had a hole
    ngx_event_t commit_ev;  // commits what the bus said, once per burst
    std::string sha;        // of the publish script
    // Script calls not sent yet, in order: publishes gathered in this turn
    // of the event loop (a group commit; the last may take more), deletes.
    // flush_ev (posted) sends them at the end of the turn.
    std::vector<struct ngx_http_sse_redis_publish_t *> calls;
    ngx_event_t flush_ev;
    // Redis's clock (TIME, us) minus our monotonic one, at most: asked on
    // the first command connection (publishes wait for it) and again on
    // each new one (life clock_life), and every minute (clock_at): two
    // hosts' clocks drift apart by up to tens of ppm, seconds in a week.
    int64_t clock_off_us;
    uint64_t clock_life;
    ngx_msec_t clock_at;
    bool clock_known;
    bool clock_probing;
    bool clock_fence;  // the cut-off can be worked out (see fence)
    // A fresh machine's history older than the log, from the channels'
    // streams (NULL: none under way); backfill_gen: the sync it ran in.
    ngx_http_sse_redis_backfill_t *backfill;
    uint64_t backfill_gen;
};

static uint64_t ngx_http_sse_redis_now_us() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static std::string ngx_http_sse_redis_sha(const char *script) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char *>(script), strlen(script), md);
    static const char hex[] = "0123456789abcdef";
    std::string s;
    for (unsigned char b : md) {
        s += hex[b >> 4];
        s += hex[b & 15];
    }
    return s;
}

static std::string ngx_http_sse_redis_str(const ngx_str_t &s) {
    return {reinterpret_cast<char *>(s.data), s.len};
}

// ------------------------------------------------------------- config

// One host[:port] of a URL; false (and logged) when it is not.
static bool ngx_http_sse_redis_parse_host(ngx_conf_t *cf, ngx_str_t *url,
                                          u_char *p, u_char *end,
                                          in_port_t port, ngx_url_t *u) {
    ngx_memzero(u, sizeof(ngx_url_t));
    u->url.data = p;
    u->url.len = end - p;
    u->default_port = port;
    if (ngx_parse_url(cf->pool, u) != NGX_OK || u->naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid redis URL \"%V\" in \"sse_zone\": %s "
                           "\"%V\"",
                           url, u->err ? u->err : "host not found", &u->url);
        return false;
    }
    return true;
}

// redis_sentinel_auth=[USER:]PASSWORD: the sentinels' own credentials,
// apart from the URL's (the primary's): in production the two often
// differ. The first ":" ends the user (":PASSWORD" for a password with a
// ":" and no user); %XX escapes are decoded, as in the URL.
static char *ngx_http_sse_redis_parse_auth(ngx_conf_t *cf, ngx_str_t *v,
                                           ngx_http_sse_redis_conf_t *conf) {
    auto bad = [&](const char *why) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid redis_sentinel_auth in \"sse_zone\": %s",
                           why);
        return (char *)NGX_CONF_ERROR;
    };
    if (v->len == 0) {
        return bad("expected redis_sentinel_auth=[USER:]PASSWORD");
    }
    for (size_t i = 0; i < v->len; i++) {
        if (v->data[i] == '%' &&
            (i + 2 >= v->len || !isxdigit(v->data[i + 1]) ||
             !isxdigit(v->data[i + 2]))) {
            return bad("\"%\" must start an escape %XX");
        }
    }
    u_char *colon =
        static_cast<u_char *>(ngx_strlchr(v->data, v->data + v->len, ':'));
    ngx_str_t user{colon ? static_cast<size_t>(colon - v->data) : 0, v->data};
    ngx_str_t pass{
        colon ? static_cast<size_t>(v->data + v->len - colon - 1) : v->len,
        colon ? colon + 1 : v->data};
    if (pass.len == 0) {
        return bad("no password after the user");
    }
    for (auto [in, out] : {std::pair{&user, &conf->sentinel_user},
                           std::pair{&pass, &conf->sentinel_password}}) {
        out->data = static_cast<u_char *>(ngx_pnalloc(cf->pool, in->len + 1));
        if (out->data == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        u_char *src = in->data, *dst = out->data;
        ngx_unescape_uri(&dst, &src, in->len, 0);
        out->len = dst - out->data;
    }
    return NGX_CONF_OK;
}

// redis=redis://[user:pass@]host[:port][/db], or
// redis=redis+sentinel://[user:pass@]host[:port][,host[:port]...]/MASTER[/db]
static int ngx_http_sse_redis_cert_asked(SSL *ssl, X509 **x509,
                                         EVP_PKEY **pkey);

char *ngx_http_sse_redis_parse(ngx_conf_t *cf, ngx_http_sse_zone_t *z,
                               ngx_str_t *url, ngx_str_t *timeout,
                               ngx_str_t *ca, ngx_str_t *sentinel_auth,
                               ngx_str_t *cert, ngx_str_t *key) {
    auto *conf = static_cast<ngx_http_sse_redis_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_sse_redis_conf_t)));
    if (conf == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    conf->url = *url;
    conf->clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    conf->timeout = NGX_HTTP_SSE_REDIS_DEFAULT_TIMEOUT;
    if (timeout != NULL) {
        conf->timeout = ngx_parse_time(timeout, 0);
        if (conf->timeout == (ngx_msec_t)NGX_ERROR || conf->timeout == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid redis_timeout \"%V\" in \"sse_zone\"",
                               timeout);
            return (char *)NGX_CONF_ERROR;
        }
    }
    // What `nginx -t` prints of a URL it refuses: no password either.
    std::string shown(reinterpret_cast<char *>(url->data), url->len);
    size_t scheme_end = shown.find("://");
    size_t last_at = shown.rfind('@');
    if (scheme_end != std::string::npos && last_at != std::string::npos &&
        last_at > scheme_end) {
        shown.replace(scheme_end + 3, last_at - scheme_end - 3, "***");
    }
    auto bad = [&](const char *why) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid redis URL \"%s\" in \"sse_zone\": %s",
                           shown.c_str(), why);
        return (char *)NGX_CONF_ERROR;
    };
    u_char *p = url->data, *end = url->data + url->len;
    bool tls = url->len >= 9 && ngx_strncmp(p, "rediss://", 9) == 0;
    bool sentinel =
        url->len >= 17 && ngx_strncmp(p, "redis+sentinel://", 17) == 0;
    if (url->len >= 18 && ngx_strncmp(p, "rediss+sentinel://", 18) == 0) {
        return bad("TLS (rediss://) with Sentinel is not supported");
    }
    if (!tls && !sentinel &&
        (url->len < 8 || ngx_strncmp(p, "redis://", 8) != 0)) {
        return bad(
            "expected redis://[user:password@]host[:port][/db], "
            "rediss://... or redis+sentinel://host[:port][,host[:port]...]"
            "/MASTER[/db]");
    }
    if (ca != NULL && !tls) {
        return bad("redis_ca= is for TLS (rediss://)");
    }
    if ((cert != NULL || key != NULL) && !tls) {
        return bad("redis_cert= and redis_key= are for TLS (rediss://)");
    }
    if ((cert == NULL) != (key == NULL)) {
        return bad("redis_cert= and redis_key= go together");
    }
    if (sentinel_auth != NULL) {
        if (!sentinel) {
            return bad("redis_sentinel_auth= is for redis+sentinel://");
        }
        if (ngx_http_sse_redis_parse_auth(cf, sentinel_auth, conf) !=
            NGX_CONF_OK) {
            return (char *)NGX_CONF_ERROR;
        }
    }
    p += sentinel ? 17 : tls ? 9 : 8;
    u_char *slash = static_cast<u_char *>(ngx_strlchr(p, end, '/'));
    u_char *hostend = slash ? slash : end;
    u_char *at = NULL;
    for (u_char *q = p; q < hostend; q++) {
        if (*q == '@') {
            at = q;  // the last one: a password may hold '@' unescaped
        }
    }
    if (at != NULL) {
        u_char *colon = static_cast<u_char *>(ngx_strlchr(p, at, ':'));
        ngx_str_t user{static_cast<size_t>((colon ? colon : at) - p), p};
        ngx_str_t pass{colon ? static_cast<size_t>(at - colon - 1) : 0,
                       colon ? colon + 1 : NULL};
        // %XX escapes allowed in both, as in any URL.
        for (auto [in, out] : {std::pair{&user, &conf->user},
                               std::pair{&pass, &conf->password}}) {
            out->data =
                static_cast<u_char *>(ngx_pnalloc(cf->pool, in->len + 1));
            if (out->data == NULL) {
                return (char *)NGX_CONF_ERROR;
            }
            u_char *src = in->data, *dst = out->data;
            ngx_unescape_uri(&dst, &src, in->len, 0);
            out->len = dst - out->data;
        }
        if (colon == NULL) {
            // redis://password@host, as redis-cli takes it.
            conf->password = conf->user;
            conf->user.len = 0;
        }
        // Messages (error.log, nginx's own connect errors) name the URL
        // without its credentials.
        size_t scheme = p - url->data, rest = end - at;
        conf->url.len = scheme + 3 + rest;
        conf->url.data =
            static_cast<u_char *>(ngx_pnalloc(cf->pool, conf->url.len));
        if (conf->url.data == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        ngx_memcpy(
            ngx_cpymem(ngx_cpymem(conf->url.data, url->data, scheme), "***", 3),
            at, rest);
        p = at + 1;
    }
    if (p == hostend) {
        return bad(sentinel ? "no sentinel" : "no host");
    }
    if (sentinel) {
        // host:port,... then /MASTER[/db]
        if (slash == NULL || slash + 1 == end || slash[1] == '/') {
            return bad(
                "no master name: expected redis+sentinel://host[:port]"
                "[,host[:port]...]/MASTER[/db]");
        }
        u_char *name = slash + 1;
        u_char *dbs = static_cast<u_char *>(ngx_strlchr(name, end, '/'));
        conf->master.data = name;
        conf->master.len = (dbs ? dbs : end) - name;
        for (u_char *q = name; q < name + conf->master.len; q++) {
            if (!isalnum(*q) && *q != '-' && *q != '_' && *q != '.') {
                return bad(
                    "the master name may hold letters, digits, \"-\", "
                    "\"_\" and \".\" only");
            }
        }
        if (dbs != NULL) {
            ngx_int_t db = ngx_atoi(dbs + 1, end - dbs - 1);
            if (db == NGX_ERROR) {
                return bad(
                    "the database after the master name must be a "
                    "number");
            }
            conf->db = db;
        }
        conf->sentinels = ngx_array_create(cf->pool, 3, sizeof(ngx_addr_t));
        if (conf->sentinels == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        for (u_char *h = p; h <= hostend;) {
            u_char *comma = static_cast<u_char *>(ngx_strlchr(h, hostend, ','));
            u_char *he = comma ? comma : hostend;
            if (h == he) {
                return bad("an empty sentinel address");
            }
            ngx_url_t u;
            if (!ngx_http_sse_redis_parse_host(
                    cf, url, h, he, NGX_HTTP_SSE_REDIS_SENTINEL_PORT, &u)) {
                return (char *)NGX_CONF_ERROR;
            }
            // A name with several addresses (a headless service listing
            // the sentinels) is each of them, as for an upstream.
            for (ngx_uint_t i = 0; i < u.naddrs; i++) {
                auto *a =
                    static_cast<ngx_addr_t *>(ngx_array_push(conf->sentinels));
                if (a == NULL) {
                    return (char *)NGX_CONF_ERROR;
                }
                *a = u.addrs[i];
            }
            h = he + 1;
        }
        conf->addr = static_cast<ngx_addr_t *>(conf->sentinels->elts)[0];
    } else if (slash != NULL) {
        ngx_int_t db = ngx_atoi(slash + 1, end - slash - 1);
        if (slash + 1 < end && db == NGX_ERROR) {
            return bad("the database after \"/\" must be a number");
        }
        conf->db = db == NGX_ERROR ? 0 : db;
    }
    ngx_url_t u;
    ngx_memzero(&u, sizeof(ngx_url_t));
    if (!sentinel) {
        conf->seeds = ngx_array_create(cf->pool, 1, sizeof(ngx_addr_t));
        conf->seed_hosts = ngx_array_create(cf->pool, 1, sizeof(ngx_str_t));
        if (conf->seeds == NULL || conf->seed_hosts == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        for (u_char *h = p; h <= hostend;) {
            u_char *comma = static_cast<u_char *>(ngx_strlchr(h, hostend, ','));
            u_char *he = comma ? comma : hostend;
            if (h == he) {
                return bad("an empty address in the list");
            }
            ngx_url_t hu;
            ngx_memzero(&hu, sizeof(ngx_url_t));
            if (!ngx_http_sse_redis_parse_host(
                    cf, url, h, he, NGX_HTTP_SSE_REDIS_DEFAULT_PORT, &hu)) {
                return (char *)NGX_CONF_ERROR;
            }
            for (ngx_uint_t i = 0; i < hu.naddrs; i++) {
                auto *a =
                    static_cast<ngx_addr_t *>(ngx_array_push(conf->seeds));
                if (a == NULL) {
                    return (char *)NGX_CONF_ERROR;
                }
                *a = hu.addrs[i];
                auto *n =
                    static_cast<ngx_str_t *>(ngx_array_push(conf->seed_hosts));
                if (n == NULL) {
                    return (char *)NGX_CONF_ERROR;
                }
                *n = hu.host;  // the addresses' names are their numbers
            }
            if (h == p) {
                u = hu;  // TLS checks the first host's name
            }
            h = he + 1;
        }
        conf->addr = static_cast<ngx_addr_t *>(conf->seeds->elts)[0];
    }
    if (tls) {
        // The server's certificate is verified, and its name: against
        // redis_ca=FILE, else the system's trusted authorities.
        conf->ssl =
            static_cast<ngx_ssl_t *>(ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t)));
        if (conf->ssl == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        conf->ssl->log = cf->log;
        if (ngx_ssl_create(conf->ssl, NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3,
                           NULL) != NGX_OK) {
            return (char *)NGX_CONF_ERROR;
        }
        ngx_pool_cleanup_t *c = ngx_pool_cleanup_add(cf->pool, 0);
        if (c == NULL) {
            ngx_ssl_cleanup_ctx(conf->ssl);
            return (char *)NGX_CONF_ERROR;
        }
        c->handler = ngx_ssl_cleanup_ctx;
        c->data = conf->ssl;
        ngx_str_t none = ngx_null_string;
        if (ngx_ssl_trusted_certificate(cf, conf->ssl, ca ? ca : &none, 9) !=
            NGX_OK) {
            return (char *)NGX_CONF_ERROR;
        }
        if (ca == NULL &&
            SSL_CTX_set_default_verify_paths(conf->ssl->ctx) != 1) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot load the system's trusted "
                               "certificates for \"%V\" in \"sse_zone\"",
                               url);
            return (char *)NGX_CONF_ERROR;
        }
        conf->host = u.host;
        if (cert != NULL) {
            // A client certificate, for a Redis with tls-auth-clients.
            if (ngx_ssl_certificate(cf, conf->ssl, cert, key, NULL) != NGX_OK) {
                return (char *)NGX_CONF_ERROR;
            }
        } else {
            SSL_CTX_set_client_cert_cb(conf->ssl->ctx,
                                       ngx_http_sse_redis_cert_asked);
        }
    }
    try {
        conf->prefix = new std::string(
            "{sse:" + ngx_http_sse_redis_str(z->shm_zone->shm.name) + "}");
    } catch (const std::exception &) {
        return (char *)NGX_CONF_ERROR;
    }
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        delete conf->prefix;
        return (char *)NGX_CONF_ERROR;
    }
    cln->handler = [](void *d) { delete static_cast<std::string *>(d); };
    cln->data = conf->prefix;
    z->redis = conf;
    return NGX_CONF_OK;
}

// ------------------------------------------------------------- figures

static void ngx_http_sse_redis_set_error(ngx_http_sse_zone_t *z,
                                         const char *err) {
    sse::external_stats &x = sse::store::ext(z->root);
    // Read unlocked by sse_status: a torn message at worst.
    size_t n = ngx_min(strlen(err), sizeof(x.last_error) - 1);
    ngx_memcpy(x.last_error, err, n);
    x.last_error[n] = '\0';
}

static void ngx_http_sse_redis_set_state(ngx_http_sse_redis_worker_t *rw,
                                         ngx_uint_t state) {
    rw->bus_state = state;
    __atomic_store_n(&sse::store::ext(rw->zw->zone->root).state,
                     (uint32_t)state, __ATOMIC_RELAXED);
}

// ------------------------------------------------------------- connection

static void ngx_http_sse_redis_read(ngx_event_t *ev);
static void ngx_http_sse_redis_write(ngx_event_t *ev);
static void ngx_http_sse_redis_timer(ngx_event_t *ev);
static void ngx_http_sse_redis_flush(ngx_http_sse_redis_conn_t *rc);
static bool ngx_http_sse_redis_connected(ngx_http_sse_redis_conn_t *rc);

static void ngx_http_sse_redis_close(ngx_http_sse_redis_conn_t *rc,
                                     const char *err);

static void ngx_http_sse_redis_broken(ngx_event_t *ev) {
    auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(ev->data);
    ngx_http_sse_redis_close(rc, rc->broken_err);
}

// connect() or send() failed at once, inside a call that queues a
// command: its callers (a publish being sent, a request handler) expect no
// reply before it returns, so the close and the commands' failure handlers
// wait for a posted event of this turn. Meanwhile the connection counts
// as connecting: further commands queue behind it and fail with it.
static void ngx_http_sse_redis_break(ngx_http_sse_redis_conn_t *rc,
                                     const char *err) {
    rc->connected = false;
    rc->connecting = true;
    rc->broken_err = err;
    if (!rc->broken.posted) {
        ngx_post_event(&rc->broken, &ngx_posted_events);
    }
}

static void ngx_http_sse_redis_conn_init(ngx_http_sse_redis_conn_t *rc,
                                         ngx_http_sse_redis_worker_t *rw,
                                         const char *role) {
    rc->rw = rw;
    rc->role = role;
    rc->timer.handler = ngx_http_sse_redis_timer;
    rc->timer.data = rc;
    rc->timer.log = ngx_cycle->log;
    rc->timer.cancelable = 1;
    rc->broken.handler = ngx_http_sse_redis_broken;
    rc->broken.data = rc;
    rc->broken.log = ngx_cycle->log;
}

static void ngx_http_sse_redis_node_clear(ngx_http_sse_redis_node_t &node) {
    node.len = 0;
    node.name.clear();
    node.host.clear();
    node.str.len = 0;
}

// nginx's resolver has no server ("resolver" not set).
static bool ngx_http_sse_redis_no_resolver(ngx_http_sse_redis_conf_t *conf) {
    ngx_resolver_t *r = conf->clcf->resolver;
    return r == NULL || r->connections.nelts == 0;
}

// The cluster redirects to a node named by hostname and there is no
// resolver: the redirection is kept (going back to the configured node
// would only be told the same, and log it, again and again).
static bool ngx_http_sse_redis_stuck(ngx_http_sse_redis_worker_t *rw) {
    return !rw->moved.host.empty() && ngx_http_sse_redis_no_resolver(rw->conf);
}

// Fails every pending command with err and closes the socket; callers may
// reconnect from the handlers.
static void ngx_http_sse_redis_close(ngx_http_sse_redis_conn_t *rc,
                                     const char *err) {
    bool was = rc->connecting || rc->connected || !rc->pending.empty();
    rc->life++;
    if (rc->broken.posted) {
        ngx_delete_posted_event(&rc->broken);
    }
    if (rc->pc.connection != NULL) {
        ngx_connection_t *c = rc->pc.connection;
        if (c->ssl != NULL) {
            // Quiet: a close_notify that cannot be sent at once would keep
            // the TLS state past this close (and leak it).
            c->ssl->no_wait_shutdown = 1;
            c->ssl->no_send_shutdown = 1;
            (void)ngx_ssl_shutdown(c);
        }
        ngx_pool_t *pool = c->pool;
        ngx_close_connection(c);
        if (pool != NULL) {
            ngx_destroy_pool(pool);
        }
        rc->pc.connection = NULL;
    }
    if (rc->reader != NULL) {
        redisReaderFree(rc->reader);
        rc->reader = NULL;
    }
    if (rc->timer.timer_set) {
        ngx_del_timer(&rc->timer);
    }
    rc->connecting = rc->connected = rc->discovering = false;
    rc->out.clear();
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    if (rc->by_host && err != NULL && ngx_strncmp(err, "MOVED ", 6)) {
        // The name may point elsewhere now: looked up again.
        rw->hosts.erase(rc->node);
        if (rc == &rw->ask) {
            rw->asked.len = 0;
        }
    }
    rc->by_host = false;
    if (rc->on_seed && err != NULL && ngx_strncmp(err, "MOVED ", 6) &&
        (rc == &rw->cmd || rc == &rw->bus)) {
        // That node may be down for good (its replica took over at another
        // address): the next one of the list is tried.
        rw->seed_i[rc == &rw->bus]++;
    }
    rc->on_seed = false;
    if (rc == &rw->cmd && err != NULL && ngx_strncmp(err, "MOVED ", 6) &&
        !ngx_http_sse_redis_stuck(rw)) {
        // A node we were redirected to may be gone (cluster failover): ask
        // the configured one again, which redirects us to the new primary.
        ngx_http_sse_redis_node_clear(rw->moved);
    }
    if ((rc == &rw->cmd || rc == &rw->bus) && err != NULL &&
        rw->conf->sentinels != NULL && !rw->moving) {
        // The primary may have failed over: ask the sentinels again.
        rw->primary.len = 0;
    }
    std::deque<ngx_http_sse_redis_cmd_t> failed;
    failed.swap(rc->pending);
    // Probes and periodic checks fail quietly: the census says when no
    // sentinel answers. An error told once is not told again.
    bool quiet = rc->probe != NULL || (rc == &rw->sentinel && rw->checking) ||
                 (err != NULL && !rw->told.empty() && rw->told == err);
    if (was && err != NULL && !quiet && !ngx_exiting && !ngx_terminate) {
        // Leaving an old primary is no fault, nor a sentinel closing the
        // connection kept open between questions.
        bool benign = rw->moving || (rc == &rw->sentinel && failed.empty());
        ngx_uint_t level = benign ? NGX_LOG_NOTICE : NGX_LOG_ERR;
        ngx_log_error(level, ngx_cycle->log, 0,
                      "sse: redis %s connection to \"%V\" for zone \"%V\": %s",
                      rc->role, &rc->rw->conf->url,
                      &rc->rw->zw->zone->shm_zone->shm.name, err);
        if (!benign) {
            ngx_http_sse_redis_set_error(rc->rw->zw->zone, err);
        }
    }
    for (auto &cmd : failed) {
        cmd.handler(rc, cmd.data, NULL, err ? err : "connection closed");
    }
    if (was && rc->on_close != NULL) {
        rc->on_close(rc->rw, err);
    }
}

static void ngx_http_sse_redis_arm(ngx_http_sse_redis_conn_t *rc) {
    if (rc->pending.empty()) {
        if (rc->timer.timer_set) {
            ngx_del_timer(&rc->timer);
        }
        return;
    }
    ngx_msec_t due = rc->pending.front().deadline;
    ngx_msec_t left = (ngx_msec_int_t)(due - ngx_current_msec) > 0
                          ? due - ngx_current_msec
                          : 1;
    ngx_add_timer(&rc->timer, left);
}

static void ngx_http_sse_redis_timer(ngx_event_t *ev) {
    auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(ev->data);
    if (!rc->pending.empty() && (ngx_msec_int_t)(rc->pending.front().deadline -
                                                 ngx_current_msec) <= 0) {
        ngx_http_sse_redis_close(
            rc, rc->connected ? "timed out" : "connect timed out");
        return;
    }
    ngx_http_sse_redis_arm(rc);
}

// Appends one command; the handler gets its reply (or an error) later,
// never from inside this call.
static void ngx_http_sse_redis_push(ngx_http_sse_redis_conn_t *rc,
                                    const std::vector<std::string_view> &args,
                                    ngx_http_sse_redis_reply_pt handler,
                                    void *data, bool front = false) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (auto a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argv.size(), argv.data(), lens.data());
    if (n < 0) {
        throw std::bad_alloc();
    }
    std::string s(cmd, n);
    redisFreeCommand(cmd);
    ngx_http_sse_redis_cmd_t c{
        handler, data, ngx_current_msec + rc->rw->conf->timeout, std::string()};
    if (rc == &rc->rw->cmd && !front) {
        c.wire = s;
    }
    if (front) {
        rc->out.insert(0, s);
        rc->pending.push_front(c);
    } else {
        rc->out += s;
        rc->pending.push_back(c);
    }
    if (!rc->timer.timer_set) {
        ngx_http_sse_redis_arm(rc);
    }
}

static void ngx_http_sse_redis_push_wire(ngx_http_sse_redis_conn_t *rc,
                                         std::string wire,
                                         ngx_http_sse_redis_reply_pt handler,
                                         void *data, ngx_msec_t deadline) {
    rc->out += wire;
    rc->pending.push_back({handler, data, deadline, std::move(wire)});
    if (!rc->timer.timer_set) {
        ngx_http_sse_redis_arm(rc);
    }
}

static void ngx_http_sse_redis_ignore_reply(ngx_http_sse_redis_conn_t *rc,
                                            void *data, redisReply *r,
                                            const char *err) {}

static void ngx_http_sse_redis_role_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        return;  // closed, or AUTH failed and says so
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        std::string_view(r->element[0]->str, r->element[0]->len) != "master") {
        // The sentinels named a node that is no longer (or not yet) the
        // primary: ask them again.
        std::string why = "ROLE: " + rc->rw->primary.name + " is ";
        if (r->type == REDIS_REPLY_ARRAY && r->elements != 0 &&
            r->element[0]->type == REDIS_REPLY_STRING) {
            why += "a " + std::string(r->element[0]->str, r->element[0]->len) +
                   ", not the master";
        } else {
            why += "not the master";
        }
        ngx_http_sse_redis_close(rc, why.c_str());
    }
}

static void ngx_http_sse_redis_handshake_reply(ngx_http_sse_redis_conn_t *rc,
                                               void *data, redisReply *r,
                                               const char *err) {
    if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        std::string why = std::string(static_cast<const char *>(data)) + ": " +
                          std::string(r->str, r->len);
        // The read loop notices (life changes) and stops.
        ngx_http_sse_redis_close(rc, why.c_str());
    }
}

static void ngx_http_sse_redis_discover(ngx_http_sse_redis_worker_t *rw);

// AUTH [user] password first on a fresh connection (nothing when there is
// no password); a refusal closes it, naming Redis's reason.
static void ngx_http_sse_redis_auth(ngx_http_sse_redis_conn_t *rc,
                                    const ngx_str_t &user,
                                    const ngx_str_t &password) {
    if (password.len == 0) {
        return;
    }
    std::string pass = ngx_http_sse_redis_str(password);
    if (user.len != 0) {
        ngx_http_sse_redis_push(
            rc, {"AUTH", ngx_http_sse_redis_str(user), pass},
            ngx_http_sse_redis_handshake_reply, (void *)"AUTH", true);
    } else {
        ngx_http_sse_redis_push(rc, {"AUTH", pass},
                                ngx_http_sse_redis_handshake_reply,
                                (void *)"AUTH", true);
    }
}

static void ngx_http_sse_redis_connect_peer(ngx_http_sse_redis_conn_t *rc) {
    ngx_int_t rv = ngx_event_connect_peer(&rc->pc);
    if (rv == NGX_ERROR || rv == NGX_BUSY || rv == NGX_DECLINED) {
        // nginx closed the socket and logged why.
        rc->pc.connection = NULL;
        ngx_http_sse_redis_break(rc, "connect() failed");
        return;
    }
    ngx_connection_t *c = rc->pc.connection;
    c->data = rc;
    c->read->handler = ngx_http_sse_redis_read;
    c->write->handler = ngx_http_sse_redis_write;
    c->log = ngx_cycle->log;
    c->read->log = c->log;
    c->write->log = c->log;
    if (rv == NGX_OK) {
        // Connected at once: the write handler goes on from here, on this
        // turn but not inside this call (see ngx_http_sse_redis_break).
        ngx_post_event(c->write, &ngx_posted_events);
    }
    // NGX_AGAIN: the write event says when the connect is done.
}

// Points rc at a cluster node (MOVED, ASK); false when it is named by a
// hostname not resolved yet.
static bool ngx_http_sse_redis_node_addr(ngx_http_sse_redis_conn_t *rc,
                                         ngx_http_sse_redis_node_t &node) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    if (!node.host.empty()) {
        rc->node = node.name;
        rc->by_host = true;
        auto it = rw->hosts.find(node.name);
        if (node.len == 0 && it != rw->hosts.end()) {
            node.sa = it->second.first;
            node.len = it->second.second;
        }
    }
    rc->pc.sockaddr = &node.sa.sockaddr;
    rc->pc.socklen = node.len;
    rc->pc.name = &node.str;
    return node.len != 0;
}

// Which name the node rc is about to connect to must show in its
// certificate: a seed of a list, a node MOVED/ASK named by hostname go by
// their own names (each node's certificate names itself); one named by
// address goes by the URL's host, as configured (clusters whose nodes
// share a wildcard certificate redirect by address). TLS with Sentinel is
// refused by nginx -t.
static std::string ngx_http_sse_redis_tls_host(ngx_http_sse_redis_conn_t *rc) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    ngx_http_sse_redis_conf_t *conf = rw->conf;
    std::string own;
    if (rc->on_seed && conf->seeds->nelts > 1) {
        ngx_uint_t i = rw->seed_i[rc == &rw->bus] % conf->seeds->nelts;
        own = ngx_http_sse_redis_str(
            static_cast<ngx_str_t *>(conf->seed_hosts->elts)[i]);
    } else if (rc == &rw->ask && !rw->asked.host.empty()) {
        own = rw->asked.host;
    } else if (rc == &rw->cmd && rc->by_host && !rw->moved.host.empty()) {
        own = rw->moved.host;
    }
    return own.empty() ? ngx_http_sse_redis_str(conf->host) : own;
}

static void ngx_http_sse_redis_connect(ngx_http_sse_redis_conn_t *rc) {
    ngx_http_sse_redis_conf_t *conf = rc->rw->conf;
    ngx_memzero(&rc->pc, sizeof(ngx_peer_connection_t));
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    bool wait = false;
    // The bus stays on the configured node: a cluster's PUBLISH reaches
    // every node. With Sentinel, both go to the primary they name.
    bool sentinel = rc == &rw->sentinel || rc->probe != NULL;
    if (rc == &rw->sentinel) {
        auto *a =
            static_cast<ngx_addr_t *>(conf->sentinels->elts) + rw->sentinel_i;
        rc->pc.sockaddr = a->sockaddr;
        rc->pc.socklen = a->socklen;
        rc->pc.name = &a->name;
    } else if (rc->probe != NULL) {
        rc->pc.sockaddr = rc->probe->sockaddr;
        rc->pc.socklen = rc->probe->socklen;
        rc->pc.name = &rc->probe->name;
    } else if (rc == &rw->ask) {
        wait = !ngx_http_sse_redis_node_addr(rc, rw->asked);
    } else if (conf->sentinels != NULL) {
        wait = rw->primary.len == 0;
        rc->node = rw->primary.name;
        rc->pc.sockaddr = &rw->primary.sa.sockaddr;
        rc->pc.socklen = rw->primary.len;
        rc->pc.name = &rw->primary.str;
    } else if (rc == &rw->cmd &&
               (rw->moved.len != 0 || !rw->moved.host.empty())) {
        wait = !ngx_http_sse_redis_node_addr(rc, rw->moved);
    } else {
        ngx_uint_t i = rw->seed_i[rc == &rw->bus] % conf->seeds->nelts;
        auto *a = static_cast<ngx_addr_t *>(conf->seeds->elts) + i;
        rc->pc.sockaddr = a->sockaddr;
        rc->pc.socklen = a->socklen;
        rc->pc.name = conf->seeds->nelts > 1 ? &a->name : &conf->url;
        rc->on_seed = true;
    }
    rc->tls_host = ngx_http_sse_redis_tls_host(rc);
    rc->pc.get = ngx_event_get_peer;
    rc->cert_asked = rc->replied = false;
    // A sentinel that is down says so once a second: the census tells it.
    rc->pc.log = rc->probe != NULL || (rc == &rw->sentinel && rw->checking)
                     ? &rw->quiet_log
                     : ngx_cycle->log;
    rc->pc.log_error = NGX_ERROR_ERR;
    rc->reader = redisReaderCreate();
    if (rc->reader == NULL) {
        throw std::bad_alloc();
    }
    // The handshake goes before whatever is queued: AUTH, SELECT, and
    // with Sentinel a check that the node named is the primary.
    if (!sentinel) {
        if (conf->sentinels != NULL) {
            ngx_http_sse_redis_push(rc, {"ROLE"}, ngx_http_sse_redis_role_reply,
                                    NULL, true);
        }
        if (conf->db != 0) {
            std::string db = std::to_string(conf->db);
            ngx_http_sse_redis_push(rc, {"SELECT", db},
                                    ngx_http_sse_redis_handshake_reply,
                                    (void *)"SELECT", true);
        }
        ngx_http_sse_redis_auth(rc, conf->user, conf->password);
    } else {
        // The sentinels' own credentials (redis_sentinel_auth=), if any.
        ngx_http_sse_redis_auth(rc, conf->sentinel_user,
                                conf->sentinel_password);
    }
    rc->connecting = true;
    if (wait) {
        // Connects when the sentinels answered, or the node's hostname
        // resolved (never from inside this call: callers expect no reply
        // before it returns).
        rc->discovering = true;
        if (conf->sentinels != NULL) {
            rw->checking = false;  // someone waits: failures are errors
            ngx_http_sse_redis_discover(rw);
        } else if (!rw->lookup_ev.posted) {
            ngx_post_event(&rw->lookup_ev, &ngx_posted_events);
        }
        return;
    }
    ngx_http_sse_redis_connect_peer(rc);
}

static void ngx_http_sse_redis_send(ngx_http_sse_redis_conn_t *rc,
                                    const std::vector<std::string_view> &args,
                                    ngx_http_sse_redis_reply_pt handler,
                                    void *data) {
    ngx_http_sse_redis_push(rc, args, handler, data);
    if (rc->connected) {
        ngx_http_sse_redis_flush(rc);
    } else if (!rc->connecting) {
        ngx_http_sse_redis_connect(rc);
    }
}

// ------------------------------------------------------------- sentinel

static bool ngx_http_sse_redis_parse_node(std::string_view v,
                                          ngx_http_sse_redis_node_t &node);

// The sentinels answered (err NULL: rw->primary is the primary): the
// connections waiting for it connect, or fail with err.
static void ngx_http_sse_redis_discovered(ngx_http_sse_redis_worker_t *rw,
                                          const char *err) {
    rw->discovering = false;
    rw->checking = false;
    for (ngx_http_sse_redis_conn_t *rc : {&rw->cmd, &rw->bus}) {
        if (!rc->discovering) {
            continue;  // closed meanwhile (timed out)
        }
        rc->discovering = false;
        if (err != NULL) {
            ngx_http_sse_redis_close(rc, err);
            continue;
        }
        rc->node = rw->primary.name;
        rc->pc.sockaddr = &rw->primary.sa.sockaddr;
        rc->pc.socklen = rw->primary.len;
        rc->pc.name = &rw->primary.str;
        try {
            ngx_http_sse_redis_connect_peer(rc);
        } catch (const std::exception &e) {
            ngx_http_sse_redis_close(rc, e.what());
        }
    }
}

static void ngx_http_sse_redis_ask_sentinel(ngx_http_sse_redis_worker_t *rw);
static void ngx_http_sse_redis_bus_down(ngx_http_sse_redis_worker_t *rw,
                                        const char *err);
static void ngx_http_sse_redis_bus_start(ngx_http_sse_redis_worker_t *rw);

// The sentinels named rw->primary: connections still on another node (an
// old primary left up, maybe cut off from the others) move to it. The
// command connection's requests in flight fail (503: that node may or may
// not have run them); the bus subscribes on the new primary and repairs
// what it missed from the zone's log, as after any reconnect, so no live
// subscriber misses what the new primary accepted.
static void ngx_http_sse_redis_follow(ngx_http_sse_redis_worker_t *rw) {
    ngx_http_sse_redis_conn_t *cmd = &rw->cmd, *bus = &rw->bus;
    std::string why = "the sentinels name another primary, " + rw->primary.name;
    bool bus_was_up = rw->bus_state != NGX_HTTP_SSE_REDIS_DOWN;
    rw->moving = true;
    if ((cmd->connected || cmd->connecting) && !cmd->discovering &&
        cmd->node != rw->primary.name) {
        ngx_http_sse_redis_close(cmd, why.c_str());
    }
    if (rw->leader && (bus->connected || bus->connecting) &&
        !bus->discovering && bus->node != rw->primary.name) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\": the redis bus moves from %s to %V, "
                      "the primary the sentinels name; repairing what it "
                      "missed from the zone's log",
                      &rw->zw->zone->shm_zone->shm.name, bus->node.c_str(),
                      &rw->primary.str);
        ngx_http_sse_redis_bus_down(rw, NULL);
    }
    rw->moving = false;
    if (rw->leader && bus_was_up && rw->bus_state == NGX_HTTP_SSE_REDIS_DOWN &&
        !ngx_exiting && !ngx_terminate) {
        // Now, not after the backoff: the primary is known.
        if (rw->bus_timer.timer_set) {
            ngx_del_timer(&rw->bus_timer);
        }
        try {
            ngx_http_sse_redis_bus_start(rw);
        } catch (const std::exception &e) {
            ngx_http_sse_redis_bus_down(rw, e.what());
        }
    }
}

static void ngx_http_sse_redis_sentinel_failed(ngx_http_sse_redis_worker_t *rw,
                                               std::string why);
static void ngx_http_sse_redis_sentinel_answered(
    ngx_http_sse_redis_worker_t *rw, const std::string &who, bool confirms);
static void ngx_http_sse_redis_census(ngx_http_sse_redis_worker_t *rw);

// A sentinel (who) named node the primary.
static void ngx_http_sse_redis_named(ngx_http_sse_redis_worker_t *rw,
                                     const std::string &who,
                                     const ngx_http_sse_redis_node_t &node) {
    bool changed = rw->primary.name != node.name;
    rw->primary = node;
    rw->primary.str.data = (u_char *)&rw->primary.name[0];
    if (changed) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\": %s names %V the primary of \"%V\"",
                      &rw->zw->zone->shm_zone->shm.name, who.c_str(),
                      &rw->primary.str, &rw->conf->master);
    }
    ngx_http_sse_redis_sentinel_answered(rw, who, true);
    rw->last_primary = rw->primary;
    rw->last_primary.str.data = (u_char *)&rw->last_primary.name[0];
    ngx_http_sse_redis_discovered(rw, NULL);
    ngx_http_sse_redis_follow(rw);
}

static void ngx_http_sse_redis_node_resolved(
    ngx_http_sse_redis_worker_t *rw, ngx_uint_t which,
    const ngx_http_sse_redis_node_t &node, const std::string &why);

// A lookup ended: the sentinels' primary, or a cluster node.
static void ngx_http_sse_redis_resolved(ngx_resolver_ctx_t *ctx) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ctx->data);
    ngx_uint_t which = 0;
    while (which < NGX_HTTP_SSE_REDIS_LOOKUPS &&
           rw->lookups[which].ctx != ctx) {
        which++;
    }
    if (which == NGX_HTTP_SSE_REDIS_LOOKUPS) {
        ngx_resolve_name_done(ctx);  // cannot be: nobody waits for it
        return;
    }
    ngx_http_sse_redis_lookup_t &lk = rw->lookups[which];
    std::string why;
    ngx_http_sse_redis_node_t node;
    node.len = 0;
    // IPv4 first when the name has both: nginx's resolver hands out a
    // cached answer's addresses from a random one on, so taking the first
    // would switch families from one lookup to the next (and reach a Redis
    // bound to one of them half of the time).
    ngx_uint_t at = 0;
    for (ngx_uint_t i = 0; ctx->state == NGX_OK && i < ctx->naddrs; i++) {
        if (ctx->addrs[i].sockaddr->sa_family == AF_INET) {
            at = i;
            break;
        }
    }
    if (ctx->state == NGX_OK && ctx->naddrs > 0 &&
        ctx->addrs[at].socklen <= sizeof(node.sa)) {
        ngx_memcpy(&node.sa, ctx->addrs[at].sockaddr, ctx->addrs[at].socklen);
        node.len = ctx->addrs[at].socklen;
        ngx_inet_set_port(&node.sa.sockaddr, lk.port);
        // Named as the sentinel names it: the same name is the same node.
        node.name = lk.name;
        node.str.data = (u_char *)&node.name[0];
        node.str.len = node.name.size();
    } else {
        why = lk.what + " " + lk.name +
              ", which does not resolve: " + ngx_resolver_strerror(ctx->state);
    }
    ngx_resolve_name_done(ctx);
    lk.ctx = NULL;
    if (which != NGX_HTTP_SSE_REDIS_LOOKUP_PRIMARY) {
        try {
            ngx_http_sse_redis_node_resolved(rw, which, node, why);
        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: redis: %s",
                          e.what());
        }
        return;
    }
    if (!rw->discovering) {
        return;
    }
    try {
        if (node.len != 0) {
            ngx_http_sse_redis_named(rw, lk.by, node);
        } else {
            ngx_http_sse_redis_sentinel_failed(rw, why);
        }
    } catch (const std::exception &e) {
        ngx_http_sse_redis_discovered(rw, e.what());
    }
}

// A node named by hostname (what: "sentinel H:P names the primary", or
// "the cluster redirects to"): resolved with nginx's resolver
// (non-blocking), then as for an address. False, with why, when it cannot
// be.
static bool ngx_http_sse_redis_resolve(ngx_http_sse_redis_worker_t *rw,
                                       ngx_uint_t which,
                                       const std::string &what,
                                       const std::string &host, int port,
                                       std::string *why) {
    std::string hp = host + ":" + std::to_string(port);
    ngx_resolver_t *resolver = rw->conf->clcf->resolver;
    if (port <= 0 || port > 65535 || host.empty()) {
        *why = what + " " + hp + ", which is not an address";
        return false;
    }
    ngx_resolver_ctx_t *ctx = (ngx_resolver_ctx_t *)NGX_NO_RESOLVER;
    if (resolver != NULL) {
        ctx = ngx_resolve_start(resolver, NULL);
    }
    if (ctx == (ngx_resolver_ctx_t *)NGX_NO_RESOLVER) {
        *why = what + " " + hp +
               ", a hostname: set a \"resolver\" at the http level to follow "
               "it";
        return false;
    }
    if (ctx == NULL) {
        *why = "out of memory";
        return false;
    }
    ngx_http_sse_redis_lookup_t &lk = rw->lookups[which];
    if (lk.ctx != NULL) {
        // An older lookup nobody waits for: its name is overwritten.
        ngx_resolve_name_done(lk.ctx);
        lk.ctx = NULL;
    }
    lk.what = what;
    lk.name = hp;
    lk.host = host;
    lk.port = (in_port_t)port;
    // The name must outlive the lookup: lk.host holds it. A copy: the
    // resolver lowercases it in place, and lk.name must stay the name the
    // node was given (MOVED's, the sentinels'), which answers match.
    ctx->name.data = (u_char *)&lk.host[0];
    ctx->name.len = lk.host.size();
    ctx->handler = ngx_http_sse_redis_resolved;
    ctx->data = rw;
    ngx_msec_t t = rw->conf->clcf->resolver_timeout;
    ctx->timeout = t == NGX_CONF_UNSET_MSEC ? rw->conf->timeout : t;
    // A graceful exit does not wait for it (the command timers do that).
    ctx->cancelable = 1;
    lk.ctx = ctx;
    if (ngx_resolve_name(ctx) != NGX_OK) {
        lk.ctx = NULL;  // freed by nginx
        *why = what + " " + hp + ": the resolver failed";
        return false;
    }
    return true;
}

// A sentinel's answer to get-master-addr-by-name, [host, port], as
// "host:port" ("[v6]:port"); false for anything else (nil: not known).
static bool ngx_http_sse_redis_master_addr(redisReply *r, std::string &hp) {
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        return false;
    }
    hp.assign(r->element[0]->str, r->element[0]->len);
    if (hp.find(':') != std::string::npos) {
        hp = "[" + hp + "]";
    }
    hp += ":" + std::string(r->element[1]->str, r->element[1]->len);
    return true;
}

// SENTINEL get-master-addr-by-name: [host, port], or nil for a master the
// sentinel does not monitor. Any failure: the next sentinel, once each.
static void ngx_http_sse_redis_sentinel_reply(ngx_http_sse_redis_conn_t *rc,
                                              void *data, redisReply *r,
                                              const char *err) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    ngx_http_sse_redis_conf_t *conf = rw->conf;
    if (!rw->discovering) {
        return;
    }
    auto *a = static_cast<ngx_addr_t *>(conf->sentinels->elts) + rw->sentinel_i;
    std::string who = "sentinel " + ngx_http_sse_redis_str(a->name);
    std::string why;
    if (r != NULL) {
        rw->sentinel_heard = true;
    }
    std::string hp;
    if (ngx_http_sse_redis_master_addr(r, hp)) {
        ngx_http_sse_redis_node_t node;
        if (ngx_http_sse_redis_parse_node(hp, node)) {
            // The sentinel's connection stays open for the next question.
            ngx_http_sse_redis_named(rw, who, node);
            return;
        }
        // A hostname (resolve-hostnames, announce-hostnames).
        int port =
            atoi(std::string(r->element[1]->str, r->element[1]->len).c_str());
        if (ngx_http_sse_redis_resolve(
                rw, NGX_HTTP_SSE_REDIS_LOOKUP_PRIMARY,
                who + " names the primary",
                std::string(r->element[0]->str, r->element[0]->len), port,
                &why)) {
            rw->lookups[NGX_HTTP_SSE_REDIS_LOOKUP_PRIMARY].by = who;
            return;  // goes on in ngx_http_sse_redis_resolved
        }
    } else if (r != NULL && r->type == REDIS_REPLY_NIL) {
        why = who + " does not know the master \"" +
              ngx_http_sse_redis_str(conf->master) + "\"";
    } else if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        why = who + ": " + std::string(r->str, r->len);
    } else if (r != NULL) {
        why = who + ": unexpected reply";
    } else {
        why = who + ": " + (err ? err : "connection closed");
    }
    ngx_http_sse_redis_sentinel_failed(rw, why);
}

// ------------------------------------------------------------- census

// After this many checks without any sentinel answering, a warning.
#define NGX_HTTP_SSE_REDIS_SILENT_CHECKS 3

// A sentinel (who) answered; confirms: it named the primary in use. The
// first answer after the warning says so, once per machine.
static void ngx_http_sse_redis_sentinel_answered(
    ngx_http_sse_redis_worker_t *rw, const std::string &who, bool confirms) {
    sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
    uint64_t now = ngx_current_msec;
    __atomic_store_n(&x.sentinel_answered_ms, now, __ATOMIC_RELAXED);
    if (confirms) {
        __atomic_store_n(&x.sentinel_confirmed_ms, now, __ATOMIC_RELAXED);
    }
    uint32_t told = __atomic_load_n(&x.told, __ATOMIC_RELAXED);
    if ((told & NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL) &&
        (__atomic_fetch_and(&x.told,
                            ~(uint32_t)NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL,
                            __ATOMIC_RELAXED) &
         NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL)) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\": %s answers again",
                      &rw->zw->zone->shm_zone->shm.name, who.c_str());
    }
}

// No sentinel answered for NGX_HTTP_SSE_REDIS_SILENT_CHECKS checks: one
// warning per machine. Publishing goes on with the primary they named
// last: no failover can happen through sentinels nobody reaches either.
static void ngx_http_sse_redis_census_watch(ngx_http_sse_redis_worker_t *rw) {
    sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
    uint64_t last = __atomic_load_n(&x.sentinel_answered_ms, __ATOMIC_RELAXED);
    if (last == 0) {
        // None ever answered on this machine: counted from now.
        __atomic_compare_exchange_n(&x.sentinel_answered_ms, &last,
                                    (uint64_t)ngx_current_msec, false,
                                    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
        return;
    }
    uint64_t silent = ngx_current_msec - last;
    if (silent <=
            NGX_HTTP_SSE_REDIS_SILENT_CHECKS * NGX_HTTP_SSE_REDIS_CHECK_MS ||
        (__atomic_fetch_or(&x.told,
                           (uint32_t)NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL,
                           __ATOMIC_RELAXED) &
         NGX_HTTP_SSE_REDIS_TOLD_NO_SENTINEL)) {
        return;
    }
    std::string primary = rw->primary.len != 0 ? rw->primary.name : "none yet";
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sse: zone \"%V\": no sentinel of \"%V\" has answered for "
                  "%uLs (%s); publishing goes on with the primary they "
                  "named last, %s",
                  &rw->zw->zone->shm_zone->shm.name, &rw->conf->master,
                  (uint64_t)(silent / 1000), rw->census_why.c_str(),
                  primary.c_str());
}

static void ngx_http_sse_redis_census_reply(ngx_http_sse_redis_conn_t *rc,
                                            void *data, redisReply *r,
                                            const char *err) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    std::string who = "sentinel " + ngx_http_sse_redis_str(rc->probe->name);
    std::string hp;
    if (ngx_http_sse_redis_master_addr(r, hp)) {
        rw->census_answered++;
        ngx_http_sse_redis_sentinel_answered(
            rw, who, rw->primary.len != 0 && hp == rw->primary.name);
        ngx_http_sse_redis_node_t node;
        if (ngx_http_sse_redis_parse_node(hp, node)) {
            // What to go back to should every sentinel become unreachable
            // (a worker that never connected has no primary of its own).
            rw->last_primary = node;
            rw->last_primary.str.data = (u_char *)&rw->last_primary.name[0];
        }
    } else if (r != NULL && r->type == REDIS_REPLY_NIL) {
        rw->census_why = who + " does not know the master";
    } else if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        rw->census_why = who + ": " + std::string(r->str, r->len);
    } else {
        rw->census_why = who + ": " + (err ? err : "unexpected reply");
    }
    if (rw->census_left > 0 && --rw->census_left == 0) {
        __atomic_store_n(
            &sse::store::ext(rw->zw->zone->root).sentinels_answered,
            (uint32_t)rw->census_answered, __ATOMIC_RELAXED);
    }
}

// Each check asks every sentinel which node is the primary, on a
// connection of its own, in parallel: sse_status shows how many answer.
// A round waits for the last reply (redis_timeout bounds it).
static void ngx_http_sse_redis_census(ngx_http_sse_redis_worker_t *rw) {
    ngx_http_sse_redis_census_watch(rw);
    if (rw->census_left != 0) {
        return;
    }
    rw->census_left = rw->probes.size();
    rw->census_answered = 0;
    for (auto &probe : rw->probes) {
        ngx_http_sse_redis_send(probe.get(),
                                {"SENTINEL", "get-master-addr-by-name",
                                 ngx_http_sse_redis_str(rw->conf->master)},
                                ngx_http_sse_redis_census_reply, NULL);
    }
}

// Asks the next sentinel, or fails the discovery with why when every one
// was asked.
static void ngx_http_sse_redis_sentinel_failed(ngx_http_sse_redis_worker_t *rw,
                                               std::string why) {
    ngx_http_sse_redis_conf_t *conf = rw->conf;
    ngx_http_sse_redis_close(&rw->sentinel, NULL);
    rw->sentinel_i = (rw->sentinel_i + 1) % conf->sentinels->nelts;
    if (++rw->sentinel_tries < conf->sentinels->nelts) {
        ngx_http_sse_redis_ask_sentinel(rw);
        return;
    }
    if (!rw->checking && !rw->sentinel_heard && rw->last_primary.len != 0) {
        // Cut off from every sentinel: no failover can happen through
        // them either. Back to the primary they named last; its ROLE is
        // checked on connecting, as always.
        rw->primary = rw->last_primary;
        rw->primary.str.data = (u_char *)&rw->primary.name[0];
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sse: zone \"%V\": no sentinel answers (%s); "
                      "connecting to %V, the primary they named last",
                      &rw->zw->zone->shm_zone->shm.name, why.c_str(),
                      &rw->primary.str);
        ngx_http_sse_redis_discovered(rw, NULL);
        ngx_http_sse_redis_follow(rw);
        return;
    }
    why = "no sentinel named the primary: " + why;
    if (!rw->checking) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: zone \"%V\": %s",
                      &rw->zw->zone->shm_zone->shm.name, why.c_str());
        ngx_http_sse_redis_set_error(rw->zw->zone, why.c_str());
    }
    // A periodic check: the primary itself still answers, and the census
    // warns once when no sentinel does.
    ngx_http_sse_redis_discovered(rw, why.c_str());
}

static void ngx_http_sse_redis_ask_sentinel(ngx_http_sse_redis_worker_t *rw) {
    try {
        ngx_http_sse_redis_send(&rw->sentinel,
                                {"SENTINEL", "get-master-addr-by-name",
                                 ngx_http_sse_redis_str(rw->conf->master)},
                                ngx_http_sse_redis_sentinel_reply, NULL);
    } catch (const std::exception &e) {
        ngx_http_sse_redis_discovered(rw, e.what());
    }
}

// Every NGX_HTTP_SSE_REDIS_CHECK_MS: which node is the primary now?
static void ngx_http_sse_redis_check_handler(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    if (ngx_exiting || ngx_terminate) {
        return;
    }
    if (!rw->discovering && (rw->cmd.connected || rw->bus.connected)) {
        rw->checking = true;
        ngx_http_sse_redis_discover(rw);
    }
    try {
        ngx_http_sse_redis_census(rw);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: redis: %s",
                      e.what());
    }
    ngx_add_timer(ev, NGX_HTTP_SSE_REDIS_CHECK_MS);
}

static void ngx_http_sse_redis_discover_handler(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    if (rw->discovering && !ngx_exiting && !ngx_terminate) {
        ngx_http_sse_redis_ask_sentinel(rw);
    }
}

// Asks the sentinels, one after another from the last that answered, for
// the primary; the connections waiting for it connect when one answers.
static void ngx_http_sse_redis_discover(ngx_http_sse_redis_worker_t *rw) {
    if (rw->discovering) {
        return;
    }
    rw->discovering = true;
    rw->sentinel_tries = 0;
    rw->sentinel_heard = false;
    ngx_post_event(&rw->discover_ev, &ngx_posted_events);
}

static void ngx_http_sse_redis_flush(ngx_http_sse_redis_conn_t *rc) {
    ngx_connection_t *c = rc->pc.connection;
    while (!rc->out.empty()) {
        ssize_t n =
            c->send(c, reinterpret_cast<u_char *>(&rc->out[0]), rc->out.size());
        if (n == NGX_AGAIN) {
            break;
        }
        if (n == NGX_ERROR) {
            ngx_http_sse_redis_break(rc, "send() failed");
            return;
        }
        rc->out.erase(0, n);
    }
    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_http_sse_redis_break(rc, "cannot watch the socket");
    }
}

// TLS without redis_cert=: the server asks for a client certificate. It
// may take none (tls-auth-clients optional) or refuse the connection on
// our first read, which nginx logs as [crit] (TLS 1.3's alert 116 is not
// among the errors it knows a peer causes): quiet until the first reply,
// and the close names what to set.
static int ngx_http_sse_redis_cert_asked(SSL *ssl, X509 **x509,
                                         EVP_PKEY **pkey) {
    auto *c = static_cast<ngx_connection_t *>(ngx_ssl_get_connection(ssl));
    if (c != NULL && c->data != NULL) {
        auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(c->data);
        rc->cert_asked = true;
        c->log = &rc->rw->cert_log;
    }
    return 0;  // no certificate
}

// An address in the URL is an IP address, which certificates name in
// their IP entries: nginx's check (X509_check_host) reads DNS names only,
// so a certificate naming the IP and a DNS name would be refused.
static bool ngx_http_sse_redis_ip_literal(ngx_str_t host) {
    if (ngx_inet_addr(host.data, host.len) != INADDR_NONE) {
        return true;
    }
#if (NGX_HAVE_INET6)
    u_char a6[16];
    return ngx_inet6_addr(host.data, host.len, a6) == NGX_OK;
#else
    return false;
#endif
}

static bool ngx_http_sse_redis_tls_matches(ngx_connection_t *c,
                                           ngx_str_t host) {
    if (!ngx_http_sse_redis_ip_literal(host)) {
        return ngx_ssl_check_host(c, &host) == NGX_OK;
    }
    X509 *cert = SSL_get_peer_certificate(c->ssl->connection);
    if (cert == NULL) {
        return false;
    }
    std::string ip = ngx_http_sse_redis_str(host);
    bool ok = X509_check_ip_asc(cert, ip.c_str(), 0) == 1;
    X509_free(cert);
    return ok;
}

static void ngx_http_sse_redis_tls_done(ngx_connection_t *c) {
    auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(c->data);
    if (!c->ssl->handshaked) {
        // TLS 1.2 refuses a client without a certificate in the handshake
        // (1.3 after it, on the first read).
        ngx_http_sse_redis_close(rc, rc->cert_asked ? NGX_HTTP_SSE_REDIS_NO_CERT
                                                    : "TLS handshake failed");
        return;
    }
    long v = SSL_get_verify_result(c->ssl->connection);
    if (v != X509_V_OK) {
        std::string why = "TLS certificate verify failed: ";
        why += X509_verify_cert_error_string(v);
        ngx_http_sse_redis_close(rc, why.c_str());
        return;
    }
    ngx_str_t host = {rc->tls_host.size(), (u_char *)&rc->tls_host[0]};
    if (!ngx_http_sse_redis_tls_matches(c, host)) {
        ngx_http_sse_redis_close(rc, "TLS certificate does not match the host");
        return;
    }
    c->read->handler = ngx_http_sse_redis_read;
    c->write->handler = ngx_http_sse_redis_write;
    rc->connecting = false;
    rc->connected = true;
    try {
        ngx_http_sse_redis_flush(rc);
    } catch (const std::exception &e) {
        ngx_http_sse_redis_close(rc, e.what());
    }
}

// TLS over the connected socket (rediss://); true once it is ready (never
// at once: the handshake takes a round trip), false while it goes on or
// when it failed (closed).
static bool ngx_http_sse_redis_tls(ngx_http_sse_redis_conn_t *rc) {
    ngx_connection_t *c = rc->pc.connection;
    ngx_http_sse_redis_conf_t *conf = rc->rw->conf;
    if (c->ssl != NULL) {
        return false;  // the handshake is under way
    }
    if (c->pool == NULL) {
        // nginx's TLS state lives in the connection's pool.
        c->pool = ngx_create_pool(1024, ngx_cycle->log);
        if (c->pool == NULL) {
            ngx_http_sse_redis_close(rc, "out of memory");
            return false;
        }
    }
    if (ngx_ssl_create_connection(conf->ssl, c,
                                  NGX_SSL_BUFFER | NGX_SSL_CLIENT) != NGX_OK) {
        ngx_http_sse_redis_close(rc, "TLS setup failed");
        return false;
    }
    ngx_str_t host = {rc->tls_host.size(), (u_char *)&rc->tls_host[0]};
    if (!ngx_http_sse_redis_ip_literal(host)) {
        // SNI names hosts, never addresses (RFC 6066).
        SSL_set_tlsext_host_name(c->ssl->connection, rc->tls_host.c_str());
    }
    ngx_int_t rv = ngx_ssl_handshake(c);
    if (rv == NGX_AGAIN) {
        c->ssl->handler = ngx_http_sse_redis_tls_done;
        return false;
    }
    ngx_http_sse_redis_tls_done(c);
    return false;
}

// A non-blocking connect has ended, either way: false (and closed) when
// it failed, or while TLS is still being set up.
static bool ngx_http_sse_redis_connected(ngx_http_sse_redis_conn_t *rc) {
    if (!rc->connecting) {
        return true;
    }
    int err = 0;
    socklen_t len = sizeof(int);
    if (getsockopt(rc->pc.connection->fd, SOL_SOCKET, SO_ERROR, (void *)&err,
                   &len) == -1) {
        err = ngx_socket_errno;
    }
    if (err != 0) {
        std::string why = "connect() failed: ";
        why += strerror(err);
        ngx_http_sse_redis_close(rc, why.c_str());
        return false;
    }
    if (rc->rw->conf->ssl != NULL) {
        return ngx_http_sse_redis_tls(rc);
    }
    rc->connecting = false;
    rc->connected = true;
    return true;
}

static void ngx_http_sse_redis_write(ngx_event_t *ev) {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(c->data);
    try {
        if (ngx_http_sse_redis_connected(rc)) {
            ngx_http_sse_redis_flush(rc);
        }
    } catch (const std::exception &e) {
        ngx_http_sse_redis_close(rc, e.what());
    }
}

static bool ngx_http_sse_redis_is_message(redisReply *r) {
    return r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
           r->element[0]->type == REDIS_REPLY_STRING &&
           r->element[0]->len == 7 &&
           ngx_strncmp(r->element[0]->str, "message", 7) == 0;
}

static bool ngx_http_sse_redis_is_moved(redisReply *r) {
    return r->type == REDIS_REPLY_ERROR && r->len > 6 &&
           ngx_strncmp(r->str, "MOVED ", 6) == 0;
}

static bool ngx_http_sse_redis_is_error(redisReply *r, std::string_view what) {
    return r->type == REDIS_REPLY_ERROR && r->len >= what.size() &&
           std::string_view(r->str, what.size()) == what;
}

// "HOST:PORT" (IPv4 or IPv6 literal) into node; false when it is not an
// address (a node announced by name is not followed).
static bool ngx_http_sse_redis_parse_node(std::string_view v,
                                          ngx_http_sse_redis_node_t &node) {
    size_t colon = v.rfind(':');
    if (colon == std::string_view::npos) {
        return false;
    }
    std::string host(v.substr(0, colon));
    int port = atoi(std::string(v.substr(colon + 1)).c_str());
    if (host.size() > 2 && host.front() == '[') {
        host = host.substr(1, host.size() - 2);
    }
    ngx_sockaddr_t sa;
    ngx_memzero(&sa, sizeof(sa));
    socklen_t len;
    if (port <= 0 || port > 65535) {
        return false;
    }
    if (inet_pton(AF_INET, host.c_str(), &sa.sockaddr_in.sin_addr) == 1) {
        sa.sockaddr_in.sin_family = AF_INET;
        sa.sockaddr_in.sin_port = htons(port);
        len = sizeof(struct sockaddr_in);
#if (NGX_HAVE_INET6)
    } else if (inet_pton(AF_INET6, host.c_str(), &sa.sockaddr_in6.sin6_addr) ==
               1) {
        sa.sockaddr_in6.sin6_family = AF_INET6;
        sa.sockaddr_in6.sin6_port = htons(port);
        len = sizeof(struct sockaddr_in6);
#endif
    } else {
        return false;
    }
    node.sa = sa;
    node.len = len;
    node.name = std::string(v);
    node.str.data = (u_char *)&node.name[0];
    node.str.len = node.name.size();
    return true;
}

static bool ngx_http_sse_redis_parse_host_node(ngx_http_sse_redis_worker_t *rw,
                                               std::string_view v,
                                               ngx_http_sse_redis_node_t &node);

// "MOVED SLOT HOST:PORT": a Redis Cluster says the zone's slot lives on
// another node. The command connection reconnects there (what was in
// flight fails with "MOVED", and publishes are sent again once); the bus
// needs no move (PUBLISH reaches every node of a cluster).
static void ngx_http_sse_redis_moved(ngx_http_sse_redis_conn_t *rc,
                                     redisReply *r) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    std::string_view v(r->str, r->len);
    size_t sp = v.rfind(' ');
    if (sp == std::string_view::npos) {
        return;
    }
    ngx_http_sse_redis_node_clear(rw->moved);
    if (!ngx_http_sse_redis_parse_node(v.substr(sp + 1), rw->moved) &&
        !ngx_http_sse_redis_parse_host_node(rw, v.substr(sp + 1), rw->moved)) {
        return;
    }
    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "sse: zone \"%V\" lives on redis node %V (MOVED)",
                  &rw->zw->zone->shm_zone->shm.name, &rw->moved.str);
    std::string why(v);
    if (rc != &rw->bus) {
        // From an ASK's connection too: the slot map changed.
        ngx_http_sse_redis_close(&rw->cmd, why.c_str());
    }
}

// "ASK SLOT HOST:PORT": the zone's slot is being migrated and the keys of
// this command are on HOST:PORT already. The command goes there once,
// after ASKING, on a connection of its own; the slot map stays as it is
// (MOVED says when the migration is over). False: not followed.
static bool ngx_http_sse_redis_ask(ngx_http_sse_redis_conn_t *rc,
                                   ngx_http_sse_redis_cmd_t &cmd,
                                   redisReply *r) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    std::string_view v(r->str, r->len);
    size_t sp = v.rfind(' ');
    ngx_http_sse_redis_node_t node;
    node.len = 0;
    if (rc != &rw->cmd || cmd.wire.empty() || sp == std::string_view::npos ||
        (!ngx_http_sse_redis_parse_node(v.substr(sp + 1), node) &&
         !ngx_http_sse_redis_parse_host_node(rw, v.substr(sp + 1), node))) {
        return false;
    }
    ngx_http_sse_redis_conn_t *ask = &rw->ask;
    if (rw->asked.name != node.name) {
        if (ask->connected || ask->connecting) {
            ngx_http_sse_redis_close(ask, "ASK: the slot moves elsewhere");
        }
        rw->asked = node;
        rw->asked.str.data = (u_char *)&rw->asked.name[0];
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\" is migrating to redis node %V (ASK)",
                      &rw->zw->zone->shm_zone->shm.name, &rw->asked.str);
    }
    char *asking = NULL;
    int n = redisFormatCommand(&asking, "ASKING");
    if (n < 0) {
        throw std::bad_alloc();
    }
    std::string a(asking, n);
    redisFreeCommand(asking);
    ngx_http_sse_redis_push_wire(
        ask, std::move(a), ngx_http_sse_redis_ignore_reply, NULL, cmd.deadline);
    // Not kept: an ASK there is not followed again.
    ngx_http_sse_redis_push_wire(ask, std::move(cmd.wire), cmd.handler,
                                 cmd.data, cmd.deadline);
    if (ask->connected) {
        ngx_http_sse_redis_flush(ask);
    } else if (!ask->connecting) {
        ngx_http_sse_redis_connect(ask);
    }
    return true;
}

static void ngx_http_sse_redis_read(ngx_event_t *ev) {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *rc = static_cast<ngx_http_sse_redis_conn_t *>(c->data);
    uint64_t life = rc->life;
    u_char buf[16384];
    try {
        if (!ngx_http_sse_redis_connected(rc)) {
            return;
        }
        for (;;) {
            ssize_t n = c->recv(c, buf, sizeof(buf));
            if (n == NGX_AGAIN) {
                if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                    ngx_http_sse_redis_close(rc, "cannot watch the socket");
                }
                return;
            }
            if (n == 0 || n == NGX_ERROR) {
                std::string why = rc->cert_asked && !rc->replied
                                      ? NGX_HTTP_SSE_REDIS_NO_CERT
                                  : n == 0 ? "connection closed by Redis"
                                           : std::string("recv() failed: ") +
                                                 strerror(ngx_socket_errno);
                ngx_http_sse_redis_close(rc, why.c_str());
                return;
            }
            if (redisReaderFeed(rc->reader, reinterpret_cast<char *>(buf), n) !=
                REDIS_OK) {
                ngx_http_sse_redis_close(rc, "out of memory");
                return;
            }
            for (;;) {
                void *reply = NULL;
                if (redisReaderGetReply(rc->reader, &reply) != REDIS_OK) {
                    ngx_http_sse_redis_close(rc, "protocol error");
                    return;
                }
                if (reply == NULL) {
                    break;
                }
                std::unique_ptr<redisReply, void (*)(void *)> r(
                    static_cast<redisReply *>(reply), freeReplyObject);
                if (!rc->replied) {
                    // Redis took us without a certificate (optional):
                    // nginx's own TLS errors are logged again.
                    rc->replied = true;
                    c->log = ngx_cycle->log;
                }
                if (rc->on_message != NULL &&
                    ngx_http_sse_redis_is_message(r.get())) {
                    rc->on_message(rc->rw, r.get());
                } else if (!rc->pending.empty()) {
                    ngx_http_sse_redis_cmd_t cmd =
                        std::move(rc->pending.front());
                    rc->pending.pop_front();
                    ngx_http_sse_redis_arm(rc);
                    if (ngx_http_sse_redis_is_error(r.get(), "ASK ") &&
                        ngx_http_sse_redis_ask(rc, cmd, r.get())) {
                        // Its reply comes from the ASK's connection.
                    } else {
                        bool moved = ngx_http_sse_redis_is_moved(r.get());
                        if (moved || (rc->rw->conf->sentinels != NULL &&
                                      rc != &rc->rw->sentinel &&
                                      ngx_http_sse_redis_is_error(
                                          r.get(), "READONLY"))) {
                            // The connection goes where the slot or the
                            // primary now is. The command fails first,
                            // with those behind it, in their order, so
                            // that they go again in it (a worker's
                            // pipelined presence events keep theirs).
                            rc->pending.push_front(std::move(cmd));
                            std::string why(r->str, r->len);
                            if (moved) {
                                ngx_http_sse_redis_moved(rc, r.get());
                            } else {
                                ngx_http_sse_redis_close(rc, why.c_str());
                            }
                            if (rc->life != life) {
                                return;  // closed: all failed, in order
                            }
                            // Not closed (a MOVED we cannot follow, or on
                            // another connection than the command one).
                            cmd = std::move(rc->pending.front());
                            rc->pending.pop_front();
                        }
                        cmd.handler(rc, cmd.data, r.get(), NULL);
                    }
                } else {
                    ngx_http_sse_redis_close(rc, "unexpected reply");
                    return;
                }
                if (rc->life != life) {
                    return;  // closed by a handler
                }
            }
        }
    } catch (const std::exception &e) {
        if (rc->life == life) {
            ngx_http_sse_redis_close(rc, e.what());
        }
    }
}

// ------------------------------------------------------------- by hostname

// A lookup a connection waits for ended: a cluster node's address (node
// len != 0, kept per name), or why not. Connections waiting connect or
// fail (their publishes get 503 with why).
static void ngx_http_sse_redis_node_resolved(
    ngx_http_sse_redis_worker_t *rw, ngx_uint_t which,
    const ngx_http_sse_redis_node_t &node, const std::string &why) {
    bool moved = which == NGX_HTTP_SSE_REDIS_LOOKUP_MOVED;
    ngx_http_sse_redis_node_t &target = moved ? rw->moved : rw->asked;
    ngx_http_sse_redis_conn_t *rc = moved ? &rw->cmd : &rw->ask;
    const std::string &name = rw->lookups[which].name;
    if (node.len != 0) {
        rw->hosts[name] = {node.sa, node.len};
    }
    if (target.name != name || !rc->discovering) {
        return;  // redirected elsewhere meanwhile, or closed
    }
    rc->discovering = false;
    if (node.len == 0) {
        ngx_http_sse_redis_close(rc, why.c_str());
        return;
    }
    target.sa = node.sa;
    target.len = node.len;
    rc->pc.sockaddr = &target.sa.sockaddr;
    rc->pc.socklen = target.len;
    try {
        ngx_http_sse_redis_connect_peer(rc);
    } catch (const std::exception &e) {
        ngx_http_sse_redis_close(rc, e.what());
    }
}

// Posted by a connection that waits for a cluster node's hostname: looks
// it up, or fails the connection at once when it cannot be (no
// "resolver": said once per machine at [error], then quietly).
static void ngx_http_sse_redis_lookup_handler(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    for (ngx_uint_t which :
         {NGX_HTTP_SSE_REDIS_LOOKUP_MOVED, NGX_HTTP_SSE_REDIS_LOOKUP_ASK}) {
        bool moved = which == NGX_HTTP_SSE_REDIS_LOOKUP_MOVED;
        ngx_http_sse_redis_node_t &target = moved ? rw->moved : rw->asked;
        ngx_http_sse_redis_conn_t *rc = moved ? &rw->cmd : &rw->ask;
        if (!rc->discovering || ngx_exiting || ngx_terminate) {
            continue;
        }
        ngx_http_sse_redis_lookup_t &lk = rw->lookups[which];
        if (lk.ctx != NULL && lk.name == target.name) {
            continue;  // under way already
        }
        std::string why;
        std::string what =
            "the redis cluster redirects zone \"" +
            ngx_http_sse_redis_str(rw->zw->zone->shm_zone->shm.name) + "\" (" +
            (moved ? "MOVED" : "ASK") + ") to";
        try {
            if (ngx_http_sse_redis_resolve(rw, which, what, target.host,
                                           target.port, &why)) {
                continue;
            }
        } catch (const std::exception &e) {
            why = e.what();
        }
        if (ngx_http_sse_redis_no_resolver(rw->conf)) {
            sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
            if (!(__atomic_fetch_or(
                      &x.told, (uint32_t)NGX_HTTP_SSE_REDIS_TOLD_NO_RESOLVER,
                      __ATOMIC_RELAXED) &
                  NGX_HTTP_SSE_REDIS_TOLD_NO_RESOLVER)) {
                ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                              "sse: zone \"%V\": %s",
                              &rw->zw->zone->shm_zone->shm.name, why.c_str());
            }
            rw->told = why;  // its connections close without saying it
        }
        rc->discovering = false;
        ngx_http_sse_redis_close(rc, why.c_str());
    }
}

// "HOST:PORT" of a node named by hostname into node (not resolved yet,
// unless this worker resolved that name before); false when it is not
// one.
static bool ngx_http_sse_redis_parse_host_node(
    ngx_http_sse_redis_worker_t *rw, std::string_view v,
    ngx_http_sse_redis_node_t &node) {
    size_t colon = v.rfind(':');
    if (colon == std::string_view::npos || colon == 0) {
        return false;
    }
    int port = atoi(std::string(v.substr(colon + 1)).c_str());
    std::string_view host = v.substr(0, colon);
    if (port <= 0 || port > 65535 || host == "?" ||
        host.find_first_of(" []") != std::string_view::npos) {
        return false;
    }
    node.len = 0;
    node.host = std::string(host);
    node.port = (in_port_t)port;
    node.name = std::string(v);
    node.str.data = (u_char *)&node.name[0];
    node.str.len = node.name.size();
    auto it = rw->hosts.find(node.name);
    if (it != rw->hosts.end()) {
        node.sa = it->second.first;
        node.len = it->second.second;
    }
    return true;
}

static void ngx_http_sse_redis_hosts_init(ngx_http_sse_redis_worker_t *rw) {
    rw->lookup_ev.handler = ngx_http_sse_redis_lookup_handler;
    rw->lookup_ev.data = rw;
    rw->lookup_ev.log = ngx_cycle->log;
    // nginx's own lines about probes that cannot connect: left out.
    rw->quiet_log = *ngx_cycle->log;
    rw->quiet_log.log_level = NGX_LOG_CRIT;
    rw->cert_log = *ngx_cycle->log;
    rw->cert_log.log_level = NGX_LOG_ALERT;
    ngx_http_sse_redis_conf_t *conf = rw->conf;
    if (conf->sentinels == NULL) {
        return;
    }
    auto *a = static_cast<ngx_addr_t *>(conf->sentinels->elts);
    for (ngx_uint_t i = 0; i < conf->sentinels->nelts; i++) {
        rw->probes.emplace_back(new ngx_http_sse_redis_conn_t());
        ngx_http_sse_redis_conn_init(rw->probes.back().get(), rw,
                                     "sentinel probe");
        rw->probes.back()->probe = &a[i];
    }
}

static void ngx_http_sse_redis_hosts_exit(ngx_http_sse_redis_worker_t *rw) {
    if (rw->lookup_ev.posted) {
        ngx_delete_posted_event(&rw->lookup_ev);
    }
    for (auto &lk : rw->lookups) {
        if (lk.ctx != NULL) {
            ngx_resolve_name_done(lk.ctx);
            lk.ctx = NULL;
        }
    }
    // A round cut short by the exit is not a count: it is not published.
    rw->census_left = 0;
    for (auto &probe : rw->probes) {
        ngx_http_sse_redis_close(probe.get(), NULL);
    }
}

// ------------------------------------------------------------- committing

static uint64_t ngx_http_sse_redis_u64(const char *p, size_t len) {
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static uint64_t ngx_http_sse_redis_u64(redisReply *r) {
    if (r->type == REDIS_REPLY_INTEGER) {
        return (uint64_t)r->integer;
    }
    if (r->type == REDIS_REPLY_STRING) {
        return ngx_http_sse_redis_u64(r->str, r->len);
    }
    return 0;
}

// Commits events (in seq order) into the zone: those it holds already are
// skipped; a new epoch is adopted first. Wakes the processes concerned.
static void ngx_http_sse_redis_commit(
    ngx_http_sse_redis_worker_t *rw,
    std::vector<ngx_http_sse_redis_event_t> &evs, size_t from) {
    ngx_http_sse_zone_worker_t *zw = rw->zw;
    ngx_http_sse_zone_t *z = zw->zone;
    if (zw->slot == sse::no_slot) {
        return;  // this worker got no process slot: the bus worker has one
    }
    std::vector<sse::message *> ms;
    sse::slot_set wake{};
    bool any = false;
    bool all = false;
    bool removed = false;
    for (size_t at = from; at < evs.size(); at += NGX_HTTP_SSE_REDIS_BATCH) {
        size_t n = ngx_min(evs.size() - at, (size_t)NGX_HTTP_SSE_REDIS_BATCH);
        ms.assign(n, nullptr);
        {
            auto s = ngx_http_sse_session(z);
            uint64_t seq = s->seq();
            for (size_t i = 0; i < n; i++) {
                auto &ev = evs[at + i];
                // Epochs only grow: an older one's event is stale.
                if (ev.buffer_length != 0 &&
                    (ev.epoch == s->epoch() ? ev.seq > seq
                                            : ev.epoch > s->epoch())) {
                    ms[i] =
                        s->prepare(zw->slot, ev.body.size(), ngx_current_msec);
                }
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (ms[i] != nullptr) {
                ngx_memcpy(ms[i]->bytes(), evs[at + i].body.data(),
                           evs[at + i].body.size());
            }
        }
        auto s = ngx_http_sse_session(z);
        ngx_msec_t now = ngx_current_msec;
        for (size_t i = 0; i < n; i++) {
            auto &ev = evs[at + i];
            bool remove = ev.buffer_length == 0;
            if (ev.epoch < s->epoch()) {
                if (ms[i] != nullptr) {
                    s->abandon(zw->slot, ms[i]);
                }
                continue;  // stale: never switch the zone back
            }
            if (remove && ev.seq <= s->seq() && ev.epoch == s->epoch()) {
                continue;  // held already
            }
            if (ms[i] == nullptr && !remove) {
                if (ev.seq > s->seq() && ev.epoch == s->epoch()) {
                    // No room in the zone: whoever wanted it resumes and
                    // learns of the gap.
                    sse::channel *ch = s->find(ev.channel);
                    if (ch != NULL) {
                        s->mark_gone(ch, ev.seq);
                    } else {
                        s->mark_gone_unheld(ev.seq);
                    }
                    // Passed, so that the bus goes on after it.
                    s->skip_to(ev.seq);
                }
                continue;
            }
            if (ev.epoch > s->epoch() && s->adopt_epoch(ev.epoch)) {
                // The epoch's first seq is past its value.
                s->skip_to(ev.epoch);
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "sse: zone \"%V\" takes Redis's new epoch %uL: "
                              "Redis lost the zone's data; streams end and "
                              "resume with an sse-gap",
                              &z->shm_zone->shm.name, ev.epoch);
                all = true;
            }
            if (remove) {
                sse::channel *ch = s->find(ev.channel);
                if (ch != NULL) {
                    s->remove(ch, now);
                    removed = true;
                    // The delete script wiped this machine's count too.
                    ngx_http_sse_redis_count_forget(z, *s, ev.channel);
                }
                // No event carries a delete's seq; the zone passes it all
                // the same, so that no repair replays the delete.
                s->skip_to(ev.seq);
                continue;
            }
            sse::channel *ch = ev.prev != 0 ? s->find(ev.channel) : NULL;
            if (ch != NULL) {
                // Held here: its previous event trimmed off the log under a
                // new machine's reader is a gap, not a silent skip.
                s->note_prev(ch, ev.prev);
            } else {
                ch = s->find_or_create(ev.channel, now);
            }
            if (ch == NULL) {
                s->abandon(zw->slot, ms[i]);
                continue;
            }
            if (ev.lost != 0) {
                // Redis no longer has the channel's events up to it: what
                // is held from before them (a channel taken from the log,
                // then back-filled past a hole) is not served with what
                // follows; nothing when this zone holds them already.
                s->note_prev(ch, ev.lost);
            }
            // The length and ttl are Redis's business: keep what its
            // stream keeps, with the zone's defaults for expiry.
            sse::publish_status st = s->commit_at(
                zw->slot, ms[i], ch, now, ev.buffer_length, ev.ttl, ev.seq);
            if (st == sse::publish_status::ok) {
                any = true;
                sse::slot_set cs = s->slots_of(ch);
                for (size_t b = 0; b < sizeof(cs.bits) / sizeof(cs.bits[0]);
                     b++) {
                    wake.bits[b] |= cs.bits[b];
                }
            }
        }
    }
    if (removed) {
        ngx_http_sse_release_deleted(z);  // and wakes every process
    }
    if (all) {
        for (auto &b : wake.bits) {
            b = ~uint64_t{0};
        }
    }
    if ((any || all) && !wake.empty()) {
        ngx_http_sse_notify(z, wake);
    }
}

// ------------------------------------------------------------- the bus

static void ngx_http_sse_redis_bus_down(ngx_http_sse_redis_worker_t *rw,
                                        const char *err);
static void ngx_http_sse_redis_bus_start(ngx_http_sse_redis_worker_t *rw);
static void ngx_http_sse_redis_forget_requests(ngx_http_sse_redis_worker_t *rw);
static void ngx_http_sse_redis_flush_handler(ngx_event_t *ev);

// Events per page of the zone's log while repairing. Each page is its own
// command (its own redis_timeout) and is committed as it arrives, so a
// repair holds one page (at most 256 events of up to 64 KB) at a time,
// commits at most that much in one turn, and a publish of the leader's
// waits behind one page at most.
#define NGX_HTTP_SSE_REDIS_PAGE 256
// Channels per page of :chans when a hole in the log is marked gone.
#define NGX_HTTP_SSE_REDIS_CHANS_PAGE 1000
// What the bus may hold while a repair runs. Past it, what it holds is
// dropped: the repair reads on in the log until it meets what the bus
// holds, so nothing is lost, and the memory stays bounded.
#define NGX_HTTP_SSE_REDIS_HEARD_MAX 4096
#define NGX_HTTP_SSE_REDIS_HEARD_BYTES (16 * 1024 * 1024)

static bool ngx_http_sse_redis_parse_message(const char *p, size_t len,
                                             ngx_http_sse_redis_event_t &ev) {
    // "EPOCH SEQ PREV L T LEN ID" BODY
    uint64_t f[6];
    size_t i = 0;
    for (int k = 0; k < 6; k++) {
        size_t start = i;
        while (i < len && p[i] != ' ') {
            i++;
        }
        if (i == len || i == start) {
            return false;
        }
        f[k] = ngx_http_sse_redis_u64(p + start, i - start);
        i++;
    }
    if (f[0] == 0 || f[1] == 0 || f[5] > len - i) {
        return false;
    }
    ev.epoch = f[0];
    ev.seq = f[1];
    ev.prev = f[2];
    ev.buffer_length = (uint32_t)ngx_min(f[3], (uint64_t)UINT32_MAX);
    ev.ttl = (ngx_msec_t)f[4];
    ev.channel.assign(p + i, f[5]);
    ev.body.assign(p + i + f[5], len - i - f[5]);
    return true;
}

// An event's channel's previous seq by Redis, kept (nonzero) only where a
// new machine's sync checks it: the log may be trimmed under its reader
// (see hole()), and only this epoch's seqs say anything.
static uint64_t ngx_http_sse_redis_checked_prev(ngx_http_sse_redis_worker_t *rw,
                                                uint64_t epoch, uint64_t prev) {
    return rw->fresh && epoch == rw->sync_epoch && prev > rw->sync_epoch ? prev
                                                                         : 0;
}

static void ngx_http_sse_redis_on_message(ngx_http_sse_redis_worker_t *rw,
                                          redisReply *r) {
    redisReply *payload = r->element[2];
    ngx_http_sse_redis_event_t ev;
    if (payload->type != REDIS_REPLY_STRING ||
        !ngx_http_sse_redis_parse_message(payload->str, payload->len, ev)) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "sse: malformed message on the redis bus of zone "
                      "\"%V\", ignored",
                      &rw->zw->zone->shm_zone->shm.name);
        return;
    }
    ev.prev = rw->bus_state == NGX_HTTP_SSE_REDIS_UP
                  ? 0
                  : ngx_http_sse_redis_checked_prev(rw, ev.epoch, ev.prev);
    rw->heard_bytes += ev.body.size();
    rw->heard.push_back(std::move(ev));
    if (rw->bus_state != NGX_HTTP_SSE_REDIS_UP &&
        (rw->heard.size() > NGX_HTTP_SSE_REDIS_HEARD_MAX ||
         rw->heard_bytes > NGX_HTTP_SSE_REDIS_HEARD_BYTES)) {
        // Past the bound while repairing: dropped; the repair reads on in
        // the log until it meets what the bus holds.
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\": the redis bus heard more than the "
                      "repair keeps; read from the zone's log instead",
                      &rw->zw->zone->shm_zone->shm.name);
        rw->heard.clear();
        rw->heard_bytes = 0;
    }
    if (rw->bus_state == NGX_HTTP_SSE_REDIS_UP && !rw->commit_ev.posted) {
        // Messages come in bursts: committed once the burst is read.
        ngx_post_event(&rw->commit_ev, &ngx_posted_events);
    }
}

static void ngx_http_sse_redis_resync(ngx_http_sse_redis_worker_t *rw);

// True when this machine holds, for ev's seq (of its epoch), another event
// than Redis's: Redis lost events it had acknowledged (a failover before
// they reached the replica) and gave their seqs again. Only what the zone
// shows for sure counts: the channel holds an event of that seq with other
// bytes, or holds older events and none of that seq, and never dropped it.
static bool ngx_http_sse_redis_differs(sse::store *st,
                                       const ngx_http_sse_redis_event_t &ev) {
    if (ev.buffer_length == 0) {
        return false;  // a delete: nothing to compare
    }
    const sse::channel *c = st->find(ev.channel);
    if (c == NULL || c->count == 0) {
        return false;
    }
    uint32_t lo = 0, hi = c->count;  // the ring is in seq order
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->at(mid)->seq < ev.seq) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < c->count && c->at(lo)->seq == ev.seq) {
        return c->at(lo)->body() != std::string_view(ev.body);
    }
    return c->at(0)->seq < ev.seq && c->last_seq < ev.seq &&
           c->dropped_seq < ev.seq;
}

static void ngx_http_sse_redis_fork_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        // Told again at the next divergence seen, or the next sync.
        ngx_http_sse_redis_bus_down(rc->rw, err ? err : "fork script failed");
    }
    // The new epoch comes back on the bus, to every machine.
}

// Starts a new epoch in Redis: ev showed that Redis's history and this
// machine's differ.
static void ngx_http_sse_redis_fork(ngx_http_sse_redis_worker_t *rw,
                                    const ngx_http_sse_redis_event_t &ev) {
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "sse: zone \"%V\": redis gave seq %uL (channel \"%*s\") to "
                  "another event than this machine holds: it lost events it "
                  "had acknowledged; starting a new epoch",
                  &rw->zw->zone->shm_zone->shm.name, ev.seq,
                  ngx_min(ev.channel.size(), (size_t)64), ev.channel.data());
    std::string epoch = std::to_string(ev.epoch);
    std::string seq = std::to_string(sse::store::peek_seq(rw->zw->zone->root));
    ngx_http_sse_redis_send(&rw->cmd,
                            {"EVAL", ngx_http_sse_redis_fork_lua, "3",
                             rw->keys[0], rw->keys[1], rw->keys[3], epoch, seq},
                            ngx_http_sse_redis_fork_reply, NULL);
}

// One page of the zone's log with the zone's epoch, read together (one
// script: atomic). Entries of that epoch are the ones past its value (a
// new epoch's seqs start at it), and a fork between two pages shows.
// KEYS: epoch log; ARGV: first entry id, count.
static const char ngx_http_sse_redis_page_lua[] =
    "return {redis.call('GET', KEYS[1]) or '',\n"
    "        redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', "
    "ARGV[2])}\n";

static void ngx_http_sse_redis_log_page(ngx_http_sse_redis_worker_t *rw);
static void ngx_http_sse_redis_finish(ngx_http_sse_redis_worker_t *rw);

// How many of heard (sorted first) follow the zone without a hole, so can
// be committed now. Older epochs' events are stale and pass (epochs only
// grow: committing one would switch the zone back); a new epoch's first
// event must be its announcement (seq = the epoch: a fork) or its first
// seq (the epoch + 1), or events before it were missed. *hole: the event
// after the run is past the next seq, and waits for a repair.
static size_t ngx_http_sse_redis_runnable(ngx_http_sse_redis_worker_t *rw,
                                          bool *hole) {
    auto &h = rw->heard;
    // One node's bus says its seqs in order; two nodes' (a slot moving)
    // may overtake each other within a burst.
    std::stable_sort(h.begin(), h.end(), [](const auto &a, const auto &b) {
        return a.epoch != b.epoch ? a.epoch < b.epoch : a.seq < b.seq;
    });
    uint64_t epoch, next;
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        epoch = s->epoch();
        next = s->seq() + 1;
    }
    *hole = false;
    size_t i = 0;
    for (; i < h.size(); i++) {
        const auto &e = h[i];
        if (e.epoch < epoch) {
            continue;
        }
        if (e.epoch > epoch) {
            if (e.seq != e.epoch && e.seq != e.epoch + 1) {
                *hole = true;
                break;
            }
            epoch = e.epoch;
            next = e.seq + 1;
        } else if (e.seq > next) {
            *hole = true;
            break;
        } else if (e.seq == next) {
            next++;
        }
    }
    return i;
}

// Commits the first n events of heard and forgets them.
static void ngx_http_sse_redis_commit_heard(ngx_http_sse_redis_worker_t *rw,
                                            size_t n) {
    if (n == 0) {
        return;
    }
    std::vector<ngx_http_sse_redis_event_t> run(
        std::make_move_iterator(rw->heard.begin()),
        std::make_move_iterator(rw->heard.begin() + n));
    rw->heard.erase(rw->heard.begin(), rw->heard.begin() + n);
    for (const auto &e : run) {
        rw->heard_bytes -= ngx_min(rw->heard_bytes, e.body.size());
    }
    ngx_http_sse_redis_commit(rw, run, 0);
}

static void ngx_http_sse_redis_commit_handler(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    if (rw->bus_state != NGX_HTTP_SSE_REDIS_UP) {
        return;
    }
    try {
        const ngx_http_sse_redis_event_t *diverged = NULL;
        {
            // Copies of what this machine holds already (its own
            // publishes) must be the same events.
            auto s = ngx_http_sse_session(rw->zw->zone);
            for (const auto &e : rw->heard) {
                if (e.epoch == s->epoch() && e.seq <= s->seq() &&
                    ngx_http_sse_redis_differs(s.operator->(), e)) {
                    diverged = &e;
                    break;
                }
            }
        }
        if (diverged != NULL) {
            ngx_http_sse_redis_fork(rw, *diverged);
            // What the bus holds is kept (a new epoch another machine
            // started may be in it); the sync after the fork takes
            // Redis's epoch and repairs up to what the bus holds.
            ngx_http_sse_redis_resync(rw);
            return;
        }
        // Seqs of one epoch have no holes. A seq heard past the next one
        // is another node's (a slot that moved: migration, failover)
        // overtaking, or lost with a failed primary: what follows the
        // zone is committed, what lies between is read from the zone's
        // log, never committed past.
        bool hole;
        size_t n = ngx_http_sse_redis_runnable(rw, &hole);
        ngx_http_sse_redis_commit_heard(rw, n);
        if (hole) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "sse: zone \"%V\": the redis bus skipped from seq "
                          "%uL to %uL; repairing from the zone's log",
                          &rw->zw->zone->shm_zone->shm.name,
                          sse::store::peek_seq(rw->zw->zone->root),
                          rw->heard.front().seq);
            ngx_http_sse_redis_resync(rw);  // the rest is kept for after
        }
    } catch (const std::exception &e) {
        ngx_http_sse_redis_bus_down(rw, e.what());
    }
}

static void ngx_http_sse_redis_bus_close(ngx_http_sse_redis_worker_t *rw,
                                         const char *err) {
    ngx_http_sse_redis_bus_down(rw, err);
}

// :chans pages of a hole in the log (what this machine missed and Redis's
// log no longer has): every channel held here that changed since the hole
// began loses its history up to the hole's end (its subscribers that had
// not read it end, and resume with sse-gap), as a channel's events do
// when the zone's memory runs out; a channel deleted in the hole (and
// maybe made again) so never serves its old history with the new. Bounded:
// pages of channels, no events. (A new machine's hole asks only for the
// channels whose newest is in the hole: up to hole_to.)
static void ngx_http_sse_redis_chans_page(ngx_http_sse_redis_worker_t *rw);

// A hole up to `to` is marked: a channel made later reports a gap for
// resume points before it, and the log is read on.
static void ngx_http_sse_redis_hole_end(ngx_http_sse_redis_worker_t *rw,
                                        uint64_t to) {
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        s->mark_gone_unheld(to);
        s->skip_to(to);
    }
    ngx_http_sse_redis_log_page(rw);
}

static void ngx_http_sse_redis_chans_reply(ngx_http_sse_redis_conn_t *rc,
                                           void *data, redisReply *r,
                                           const char *err) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(rc->rw);
    uint64_t gen = (uint64_t)(uintptr_t)data;
    if (gen != rw->sync_gen) {
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        ngx_http_sse_redis_bus_down(rw, err ? err : "ZRANGEBYSCORE failed");
        return;
    }
    // WITHSCORES: channel, newest seq, ...
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            redisReply *c = r->element[i], *sc = r->element[i + 1];
            if (c->type != REDIS_REPLY_STRING ||
                sc->type != REDIS_REPLY_STRING) {
                continue;
            }
            sse::channel *ch = s->find(std::string_view(c->str, c->len));
            if (ch != NULL) {
                uint64_t newest = (uint64_t)strtod(sc->str, NULL);
                if (rw->fresh) {
                    // Its newest is in the hole (up to hole_to): missing
                    // unless a back-fill read it.
                    s->note_prev(ch, newest);
                } else {
                    s->drop_through(ch, ngx_min(newest, rw->hole_to));
                }
            }
            rw->hole_min = "(" + std::string(sc->str, sc->len);
        }
    }
    if (r->elements / 2 == NGX_HTTP_SSE_REDIS_CHANS_PAGE) {
        ngx_http_sse_redis_chans_page(rw);
        return;
    }
    ngx_http_sse_redis_hole_end(rw, rw->hole_to);
}

static void ngx_http_sse_redis_chans_page(ngx_http_sse_redis_worker_t *rw) {
    ngx_http_sse_redis_send(
        &rw->cmd,
        {"ZRANGEBYSCORE", rw->keys[2], rw->hole_min,
         rw->fresh ? std::to_string(rw->hole_to) : "+inf", "WITHSCORES",
         "LIMIT", "0", std::to_string(NGX_HTTP_SSE_REDIS_CHANS_PAGE)},
        ngx_http_sse_redis_chans_reply, (void *)(uintptr_t)rw->sync_gen);
}

// ------------------------------------------------------------- back-fill
//
// A fresh machine (nothing held of the epoch) whose log does not reach
// back to its zone's seq reads, before the log, each channel's older
// events from the channel's own stream (trimmed to its sse_buffer_length,
// so its history): a quiet channel whose events all came before the log's
// first entry gets the same history as on a machine that was up all
// along. The zone takes events in seq order only, so everything read is
// held, then sorted and committed before the log's first page. Bounded:
// bodies held up to min(zone size / 2, 64 MB), the channels newest first
// (:chans by score, a page at a time; when over the bound, the coldest
// channel read goes first), each stream in pieces of a command each (its
// own redis_timeout), a few commands in flight, the commit spread over
// turns of the event loop. What does not fit is the coldest channels:
// they start their history at the log (resumes before it: sse-gap).
// Redis failing, a new epoch or a new sync drops what was read (sync_gen);
// the next sync starts over.

// Bodies held at most (and at most half the zone).
#define NGX_HTTP_SSE_REDIS_BACKFILL_BYTES (64 * 1024 * 1024)
// Stream reads in flight; entries per read.
#define NGX_HTTP_SSE_REDIS_BACKFILL_INFLIGHT 16
#define NGX_HTTP_SSE_REDIS_BACKFILL_COUNT 256
// Channels per page of :chans.
#define NGX_HTTP_SSE_REDIS_BACKFILL_CHANS 256
// Events committed per turn of the event loop.
#define NGX_HTTP_SSE_REDIS_BACKFILL_COMMIT 4096
// What an event held costs beside its body and channel.
#define NGX_HTTP_SSE_REDIS_BACKFILL_OVERHEAD 96

// A piece of one channel's stream: its entries with seqs in (from, end],
// newest first, up to a count and about a number of body bytes (at least
// one entry), with the zone's epoch read together. KEYS: epoch stream;
// ARGV: end id, start id, count, bytes. Returns {epoch, entries, 1 when
// the stream may hold older ones in the range, and when it holds none in
// the range: the id, p and t of its first entry (all past the range: the
// channel's history starts after p), or ''}.
static const char ngx_http_sse_redis_backfill_lua[] =
    "local e = redis.call('GET', KEYS[1]) or ''\n"
    "local t = redis.call('XREVRANGE', KEYS[2], ARGV[1], ARGV[2], 'COUNT',\n"
    "                     ARGV[3])\n"
    "local n, b, max = 0, 0, tonumber(ARGV[4])\n"
    "for i = 1, #t do\n"
    "  local f = t[i][2]\n"
    "  for k = 1, #f - 1, 2 do\n"
    "    if f[k] == 'd' then b = b + #f[k + 1] end\n"
    "  end\n"
    "  n = i\n"
    "  if b >= max then break end\n"
    "end\n"
    "local more = 0\n"
    "if n < #t or #t == tonumber(ARGV[3]) then more = 1 end\n"
    "for i = #t, n + 1, -1 do t[i] = nil end\n"
    "local fid, fp, ft = '', '0', '0'\n"
    "if #t == 0 then\n"
    "  local f = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)\n"
    "  if #f > 0 then\n"
    "    fid = f[1][1]\n"
    "    for k = 1, #f[1][2] - 1, 2 do\n"
    "      if f[1][2][k] == 'p' then fp = f[1][2][k + 1] end\n"
    "      if f[1][2][k] == 't' then ft = f[1][2][k + 1] end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {e, t, more, fid, fp, ft}\n";

// One entry of a channel's stream or of the zone's log ("SEQ-1" and its
// fields c, l, t, d, p) as an event of the epoch being synced, *prev its
// channel's previous seq (0: none, or an entry older than p); false when
// the reply is no entry, or an older epoch's (never under this one's ids).
static bool ngx_http_sse_redis_entry(ngx_http_sse_redis_worker_t *rw,
                                     redisReply *e,
                                     ngx_http_sse_redis_event_t &ev,
                                     uint64_t *prev) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING ||
        e->element[1]->type != REDIS_REPLY_ARRAY) {
        return false;
    }
    ev.epoch = rw->sync_epoch;
    ev.seq = ngx_http_sse_redis_u64(e->element[0]->str,
                                    strcspn(e->element[0]->str, "-"));
    if (ev.seq <= rw->sync_epoch) {
        return false;
    }
    ev.buffer_length = 100;
    ev.ttl = 3600000;
    *prev = 0;
    redisReply *kv = e->element[1];
    for (size_t k = 0; k + 1 < kv->elements; k += 2) {
        std::string_view key(kv->element[k]->str, kv->element[k]->len);
        redisReply *val = kv->element[k + 1];
        if (key == "c") {
            ev.channel.assign(val->str, val->len);
        } else if (key == "p") {
            *prev = ngx_http_sse_redis_u64(val);
        } else if (key == "l") {
            ev.buffer_length = (uint32_t)ngx_http_sse_redis_u64(val);
        } else if (key == "t") {
            ev.ttl = (ngx_msec_t)ngx_http_sse_redis_u64(val);
        } else if (key == "d") {
            ev.body.assign(val->str, val->len);
        }
    }
    return true;
}

struct ngx_http_sse_redis_backfill_t {
    uint64_t gen;   // the sync it belongs to
    uint64_t from;  // the zone's seq: entries past it, up to `to`
    uint64_t to;
    uint64_t at;          // where the log goes on
    std::string max;      // the next :chans page: scores up to it
    bool chans_sent;      // a :chans page in flight
    bool chans_done;      // every page read (or no more wanted)
    bool heard_done;      // the bus's channels added (see pump)
    ngx_uint_t inflight;  // stream reads
    size_t held;          // bytes held (bodies, channels, overhead)
    size_t budget;
    // The channels taken, by rank (newest first): what was read of each,
    // newest first, and the previous seq of the oldest read.
    struct chan_t {
        std::string name;
        std::vector<ngx_http_sse_redis_event_t> evs;
        size_t bytes;
        uint64_t oldest_p;
        // Nothing read but its stream holds newer events: its history
        // starts after first_p (made known to the zone, see make_known).
        bool first_known;
        uint64_t first_p;
        ngx_msec_t first_ttl;
    };
    std::deque<chan_t> chans;
    std::set<std::string> taken;
    // Channels ranked past it are not read (or were dropped): over budget.
    size_t last_rank;
    // Pieces to read: {rank, entries up to this seq}, the front first.
    std::deque<std::pair<size_t, uint64_t>> queue;
    std::vector<ngx_http_sse_redis_event_t> evs;  // all, in seq order
    size_t committed;                             // of evs
    ngx_event_t commit_ev;
};

// A stream read in flight.
struct ngx_http_sse_redis_backfill_cmd_t {
    uint64_t gen;
    size_t rank;
    uint64_t end;
};

static void ngx_http_sse_redis_hole(ngx_http_sse_redis_worker_t *rw,
                                    uint64_t to, uint64_t at,
                                    uint64_t held = 0);
static void ngx_http_sse_redis_backfill_pump(ngx_http_sse_redis_worker_t *rw);

static void ngx_http_sse_redis_backfill_free(ngx_http_sse_redis_worker_t *rw) {
    auto *b = rw->backfill;
    if (b == NULL) {
        return;
    }
    if (b->commit_ev.timer_set) {
        ngx_del_timer(&b->commit_ev);
    }
    delete b;
    rw->backfill = NULL;
}

// A reply of sync `gen`: false (and what the back-fill held freed) when
// that sync is over.
static bool ngx_http_sse_redis_backfill_current(ngx_http_sse_redis_worker_t *rw,
                                                uint64_t gen) {
    if (rw->backfill == NULL) {
        return false;
    }
    if (rw->backfill->gen != rw->sync_gen) {
        ngx_http_sse_redis_backfill_free(rw);  // its sync is over
        return false;
    }
    return gen == rw->sync_gen;
}

static void ngx_http_sse_redis_backfill_failed(ngx_http_sse_redis_worker_t *rw,
                                               redisReply *r, const char *err,
                                               const char *what) {
    std::string why =
        r != NULL && r->type == REDIS_REPLY_ERROR
            ? std::string(what) + ": " + std::string(r->str, r->len)
            : std::string(err ? err : what);
    ngx_http_sse_redis_backfill_free(rw);
    ngx_http_sse_redis_bus_down(rw, why.c_str());
}

// Starts the back-fill of the streams' entries past the zone's seq up to
// `to` (the log goes on at `at`); false when there is none to do: done
// already in this sync, or nothing older than the log.
static bool ngx_http_sse_redis_backfill(ngx_http_sse_redis_worker_t *rw,
                                        uint64_t to, uint64_t at) {
    if (rw->backfill_gen == rw->sync_gen) {
        return false;  // once per sync: a second hole keeps the old way
    }
    rw->backfill_gen = rw->sync_gen;
    ngx_http_sse_redis_backfill_free(rw);
    uint64_t from = sse::store::peek_seq(rw->zw->zone->root);
    if (to <= from) {
        return false;
    }
    auto *b = new ngx_http_sse_redis_backfill_t();
    rw->backfill = b;
    b->gen = rw->sync_gen;
    b->from = from;
    b->to = to;
    b->at = at;
    b->max = "+inf";
    b->budget = ngx_min(rw->zw->zone->shm_zone->shm.size / 2,
                        (size_t)NGX_HTTP_SSE_REDIS_BACKFILL_BYTES);
    b->last_rank = SIZE_MAX;
    b->commit_ev.data = rw;
    b->commit_ev.log = ngx_cycle->log;
    b->commit_ev.cancelable = 1;
    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "sse: zone \"%V\": redis's log starts at seq %uL: reading "
                  "the channels' older events from their streams",
                  &rw->zw->zone->shm_zone->shm.name, to + 1);
    ngx_http_sse_redis_backfill_pump(rw);
    return true;
}

// Takes a channel (once), ranked after those taken before. What it costs
// to remember (twice its name) counts too: a zone of many channels whose
// streams hold nothing old stays within the bound as well.
static void ngx_http_sse_redis_backfill_take(ngx_http_sse_redis_backfill_t *b,
                                             std::string name) {
    if (b->chans.size() > b->last_rank || b->held >= b->budget ||
        !b->taken.insert(name).second) {
        return;
    }
    b->held += 2 * (name.size() + NGX_HTTP_SSE_REDIS_BACKFILL_OVERHEAD);
    b->queue.push_back({b->chans.size(), b->to});
    b->chans.push_back({std::move(name), {}, 0, 0, false, 0, 0});
    if (b->held >= b->budget) {
        b->last_rank = b->chans.size() - 1;
    }
}

static void ngx_http_sse_redis_backfill_chans_reply(
    ngx_http_sse_redis_conn_t *rc, void *data, redisReply *r, const char *err) {
    auto *rw = rc->rw;
    if (!ngx_http_sse_redis_backfill_current(rw, (uint64_t)(uintptr_t)data)) {
        return;
    }
    auto *b = rw->backfill;
    b->chans_sent = false;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        ngx_http_sse_redis_backfill_failed(rw, r, err,
                                           "reading the zone's channels");
        return;
    }
    // WITHSCORES: channel, newest seq, ..., newest first.
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        redisReply *c = r->element[i], *sc = r->element[i + 1];
        if (c->type != REDIS_REPLY_STRING || sc->type != REDIS_REPLY_STRING) {
            continue;
        }
        b->max = "(" + std::string(sc->str, sc->len);
        ngx_http_sse_redis_backfill_take(b, std::string(c->str, c->len));
    }
    if (r->elements / 2 < NGX_HTTP_SSE_REDIS_BACKFILL_CHANS) {
        b->chans_done = true;
    }
    ngx_http_sse_redis_backfill_pump(rw);
}

static void ngx_http_sse_redis_backfill_reply(ngx_http_sse_redis_conn_t *rc,
                                              void *data, redisReply *r,
                                              const char *err) {
    auto *rw = rc->rw;
    std::unique_ptr<ngx_http_sse_redis_backfill_cmd_t> cmd(
        static_cast<ngx_http_sse_redis_backfill_cmd_t *>(data));
    if (!ngx_http_sse_redis_backfill_current(rw, cmd->gen)) {
        return;
    }
    auto *b = rw->backfill;
    b->inflight--;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 6 ||
        r->element[1]->type != REDIS_REPLY_ARRAY ||
        r->element[3]->type != REDIS_REPLY_STRING) {
        ngx_http_sse_redis_backfill_failed(rw, r, err,
                                           "reading a channel's stream");
        return;
    }
    if (ngx_http_sse_redis_u64(r->element[0]) != rw->sync_epoch) {
        // Redis started a new epoch meanwhile: sync again, which takes it.
        ngx_http_sse_redis_backfill_free(rw);
        ngx_http_sse_redis_resync(rw);
        return;
    }
    size_t k = cmd->rank;
    if (k > b->last_rank) {
        ngx_http_sse_redis_backfill_pump(rw);  // dropped meanwhile
        return;
    }
    auto &ch = b->chans[k];
    redisReply *page = r->element[1];
    uint64_t oldest = ch.evs.empty() ? cmd->end + 1 : ch.evs.back().seq;
    for (size_t i = 0; i < page->elements; i++) {
        ngx_http_sse_redis_event_t ev;
        uint64_t p;
        if (!ngx_http_sse_redis_entry(rw, page->element[i], ev, &p) ||
            ev.seq <= b->from || ev.seq >= oldest) {
            continue;  // out of the range asked
        }
        if (ev.buffer_length == 0) {
            continue;  // no stream entry is a delete; never taken as one
        }
        size_t cost = ev.body.size() + ch.name.size() +
                      NGX_HTTP_SSE_REDIS_BACKFILL_OVERHEAD;
        ch.bytes += cost;
        b->held += cost;
        oldest = ev.seq;
        ch.oldest_p = p;
        ch.evs.push_back(std::move(ev));
    }
    uint64_t first = ngx_http_sse_redis_u64(r->element[3]->str,
                                            strcspn(r->element[3]->str, "-"));
    if (ch.evs.empty() && first > b->to) {
        // Its events are all in the log: where its history starts.
        ch.first_known = true;
        ch.first_p = ngx_http_sse_redis_u64(r->element[4]);
        ch.first_ttl = (ngx_msec_t)ngx_http_sse_redis_u64(r->element[5]);
    }
    // Over budget: the coldest channels read go first; then this one
    // reads no further, and nothing colder is read.
    while (b->held > b->budget && b->chans.size() - 1 > k && b->last_rank > k) {
        size_t last = ngx_min(b->last_rank, b->chans.size() - 1);
        auto &cold = b->chans[last];
        b->held -= cold.bytes;
        cold.evs.clear();
        cold.evs.shrink_to_fit();
        cold.bytes = 0;
        b->last_rank = last - 1;
    }
    if (b->held >= b->budget) {
        b->last_rank = k;
    } else if (ngx_http_sse_redis_u64(r->element[2]) == 1 &&
               oldest - 1 > b->from && oldest <= cmd->end) {
        // Older entries next, before other channels: the newest channels
        // are the ones kept whole.
        b->queue.push_front({k, oldest - 1});
    }
    ngx_http_sse_redis_backfill_pump(rw);
}

static void ngx_http_sse_redis_backfill_commit(ngx_event_t *ev);
static void ngx_http_sse_redis_backfill_sort(ngx_http_sse_redis_worker_t *rw);

// Sends what may be sent; when all is read, commits it.
static void ngx_http_sse_redis_backfill_pump(ngx_http_sse_redis_worker_t *rw) {
    auto *b = rw->backfill;
    if (b->last_rank != SIZE_MAX) {
        // Full: the channels not read yet keep their history from the log.
        b->chans_done = true;
        b->heard_done = true;
    }
    if (b->chans_done && !b->heard_done && !b->chans_sent) {
        // A channel published after its :chans page was asked for moved
        // up past the pages: the bus heard it (unless it heard more than
        // it keeps).
        b->heard_done = true;
        for (const auto &e : rw->heard) {
            if (e.buffer_length != 0) {
                ngx_http_sse_redis_backfill_take(b, e.channel);
            }
        }
    }
    while (!b->queue.empty() &&
           b->inflight < NGX_HTTP_SSE_REDIS_BACKFILL_INFLIGHT) {
        auto pc = b->queue.front();
        b->queue.pop_front();
        if (pc.first > b->last_rank) {
            continue;
        }
        auto *cmd =
            new ngx_http_sse_redis_backfill_cmd_t{b->gen, pc.first, pc.second};
        b->inflight++;
        std::string end = std::to_string(pc.second) + "-1";
        std::string start = std::to_string(b->from + 1) + "-0";
        // Replies in flight stay within half the budget.
        size_t bytes = ngx_max(
            b->budget / (2 * NGX_HTTP_SSE_REDIS_BACKFILL_INFLIGHT), (size_t)1);
        ngx_http_sse_redis_send(
            &rw->cmd,
            {"EVAL", ngx_http_sse_redis_backfill_lua, "2", rw->keys[0],
             rw->keys[4] + b->chans[pc.first].name, end, start,
             std::to_string(NGX_HTTP_SSE_REDIS_BACKFILL_COUNT),
             std::to_string(bytes)},
            ngx_http_sse_redis_backfill_reply, cmd);
    }
    if (!b->chans_done && !b->chans_sent &&
        b->queue.size() < NGX_HTTP_SSE_REDIS_BACKFILL_INFLIGHT) {
        b->chans_sent = true;
        ngx_http_sse_redis_send(
            &rw->cmd,
            {"ZREVRANGEBYSCORE", rw->keys[2], b->max,
             "(" + std::to_string(b->from), "WITHSCORES", "LIMIT", "0",
             std::to_string(NGX_HTTP_SSE_REDIS_BACKFILL_CHANS)},
            ngx_http_sse_redis_backfill_chans_reply, (void *)(uintptr_t)b->gen);
        return;
    }
    if (!b->chans_done || !b->heard_done || b->chans_sent || b->inflight != 0 ||
        !b->queue.empty()) {
        return;
    }
    try {
        ngx_http_sse_redis_backfill_sort(rw);
    } catch (const std::exception &e) {
        // Nothing else would end this sync (no command in flight, no
        // timer): it fails, and the bus syncs again from its backoff.
        ngx_http_sse_redis_backfill_failed(rw, NULL, e.what(),
                                           "sorting the channels' events");
    }
}

// All read: in seq order, committed a part per turn.
static void ngx_http_sse_redis_backfill_sort(ngx_http_sse_redis_worker_t *rw) {
    auto *b = rw->backfill;
    size_t n = 0, channels = 0;
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        for (auto &ch : b->chans) {
            n += ch.evs.size();
            if (ch.first_known && ch.first_p <= b->to) {
                // Its events are all in the log: made now, before the
                // log's first page, with its own start, where a channel
                // made later takes the log's (mark_gone_unheld in hole()).
                s->make_known(ch.name, ngx_current_msec, ch.first_p,
                              ch.first_ttl ? ch.first_ttl : 3600000);
            }
        }
    }
    b->evs.reserve(n);
    for (auto &ch : b->chans) {
        if (ch.evs.empty()) {
            continue;
        }
        channels++;
        // Only the oldest event read of the channel says what came before
        // it is gone: its previous seq p (an event trimmed off the stream,
        // the channel's delete, or its newest before the stream expired),
        // which a resume from at least that point does not need, nor a
        // zone that holds it already (an earlier sync got that far); 0:
        // the channel's first event (or one older than the zone's :chans).
        ch.evs.back().lost = ch.oldest_p;
        for (auto &e : ch.evs) {
            e.channel = ch.name;
            b->evs.push_back(std::move(e));
        }
        ch.evs.clear();
        ch.evs.shrink_to_fit();
    }
    std::sort(b->evs.begin(), b->evs.end(),
              [](const auto &x, const auto &y) { return x.seq < y.seq; });
    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "sse: zone \"%V\": %uz events of %uz channels read from "
                  "their streams (%uz of %uz bytes)%s",
                  &rw->zw->zone->shm_zone->shm.name, b->evs.size(), channels,
                  b->held, b->budget,
                  b->last_rank != SIZE_MAX
                      ? "; the colder channels start at the log"
                      : "");
    b->commit_ev.handler = ngx_http_sse_redis_backfill_commit;
    ngx_http_sse_redis_backfill_commit(&b->commit_ev);
}

static void ngx_http_sse_redis_backfill_commit(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    auto *b = rw->backfill;
    try {
        if (b->gen != rw->sync_gen) {
            ngx_http_sse_redis_backfill_free(rw);
            return;
        }
        size_t n = ngx_min(b->evs.size() - b->committed,
                           (size_t)NGX_HTTP_SSE_REDIS_BACKFILL_COMMIT);
        std::vector<ngx_http_sse_redis_event_t> part(
            std::make_move_iterator(b->evs.begin() + b->committed),
            std::make_move_iterator(b->evs.begin() + b->committed + n));
        b->committed += n;
        ngx_http_sse_redis_commit(rw, part, 0);
        if (b->committed < b->evs.size()) {
            ngx_add_timer(&b->commit_ev, 1);  // the rest after other work
            return;
        }
        uint64_t to = b->to, at = b->at;
        // What the zone held of the epoch when the back-fill began is
        // checked from there.
        uint64_t held = b->from > rw->sync_epoch ? b->from : 0;
        ngx_http_sse_redis_backfill_free(rw);
        // The channels not read start their history at the log, and the
        // log goes on (backfill_gen: no second back-fill).
        ngx_http_sse_redis_hole(rw, to, at, held);
    } catch (const std::exception &e) {
        ngx_http_sse_redis_backfill_free(rw);
        ngx_http_sse_redis_bus_down(rw, e.what());
    }
}

// The log has nothing between the zone's seq and `to` (trimmed before this
// machine read it, or lost); the repair goes on at `at`. A fresh machine
// (a new one, or a new epoch) starts the history of what it does not hold
// there; the channels held that changed meanwhile (or since `held`, the
// zone's seq when a back-fill just committed began) are marked gone first.
static void ngx_http_sse_redis_hole(ngx_http_sse_redis_worker_t *rw,
                                    uint64_t to, uint64_t at, uint64_t held) {
    uint64_t from = rw->fetch_next - 1;
    rw->fetch_next = at;
    if (rw->fresh) {
        if (ngx_http_sse_redis_backfill(rw, to, at)) {
            return;  // calls hole() again once the streams are read
        }
        // Held channels with events in the hole must not resume across
        // them: those held before a back-fill that it did not read (over
        // its bound, or deleted), and those held when the log was trimmed
        // under this machine's reader (a busy zone, a long back-fill). A
        // channel with a later event is caught by that entry's p
        // (commit()); one whose newest is in the hole by :chans, whose
        // scores in (from, to] are at most the hole's size, so this ends
        // however fast the log is trimmed (all of :chans changed since
        // `from`, as below, may not: it grows with the load).
        uint64_t trimmed = from;
        if (held != 0) {
            from = ngx_min(from, held);
        }
        if (to <= from) {
            ngx_http_sse_redis_hole_end(rw, to);
            return;
        }
        if (trimmed < to) {  // (else what a back-fill read is checked)
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "sse: zone \"%V\": redis's log no longer holds "
                          "seqs %uL to %uL (trimmed while this machine read "
                          "it, or lost): the channels held that changed "
                          "there resume with an sse-gap",
                          &rw->zw->zone->shm_zone->shm.name, trimmed + 1, to);
        }
    } else {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sse: zone \"%V\": redis's log no longer holds seqs "
                      "%uL to %uL that this machine missed: the channels "
                      "changed meanwhile resume with an sse-gap",
                      &rw->zw->zone->shm_zone->shm.name, from + 1, to);
    }
    rw->hole_to = to;
    rw->hole_min = "(" + std::to_string(from);
    ngx_http_sse_redis_chans_page(rw);
}

// Everything the log had is committed: then what the bus held meanwhile,
// as far as it follows; the bus goes on from there.
static void ngx_http_sse_redis_finish(ngx_http_sse_redis_worker_t *rw) {
    if (rw->check_newest) {
        // The log is empty: nothing to compare our newest with.
        rw->check_newest = false;
        rw->fetch_next = rw->fetch_from + 1;
    }
    if (rw->fetch_next <= rw->sync_seq) {
        // The log ends short of what Redis had given when we synced.
        ngx_http_sse_redis_hole(rw, rw->sync_seq, rw->sync_seq + 1);
        return;
    }
    bool hole;
    size_t n = ngx_http_sse_redis_runnable(rw, &hole);
    ngx_http_sse_redis_commit_heard(rw, n);
    uint64_t seq = sse::store::peek_seq(rw->zw->zone->root);
    if (hole && rw->stall_seq != seq + 1) {
        // The bus is past what the log gave (published meanwhile, or
        // dropped past its bound): read on from the zone.
        rw->stall_seq = seq + 1;
        rw->fetch_next = seq + 1;
        ngx_http_sse_redis_log_page(rw);
        return;
    }
    if (hole) {
        // Twice at the same seq: Redis has no such events (of an epoch it
        // lost, or seqs it lost with a failed primary). Not committed; a
        // seq given again shows as a divergence.
        for (size_t i = n; i < rw->heard.size(); i++) {
            rw->heard_bytes -=
                ngx_min(rw->heard_bytes, rw->heard[i].body.size());
        }
        rw->heard.erase(rw->heard.begin() + n, rw->heard.end());
    }
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        s->set_external(2);  // subscribers welcome
    }
    rw->backoff = NGX_HTTP_SSE_REDIS_BACKOFF_MIN;
    ngx_http_sse_redis_set_state(rw, NGX_HTTP_SSE_REDIS_UP);
    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "sse: zone \"%V\" is in sync with redis \"%V\"",
                  &rw->zw->zone->shm_zone->shm.name, &rw->conf->url);
    if (!rw->heard.empty() && !rw->commit_ev.posted) {
        ngx_post_event(&rw->commit_ev, &ngx_posted_events);
    }
}

// The log is read past what Redis had when the bus subscribed, and what
// the bus heard since goes on from where the log stops (it is contiguous
// from its first event: a drop past its bound clears it all): the rest is
// the bus's. Reading on instead would chase a log that grows as fast as
// it is read (a busy zone over a slow link fills every page) forever.
static bool ngx_http_sse_redis_bus_covers(ngx_http_sse_redis_worker_t *rw) {
    if (rw->fetch_next <= rw->sync_seq || rw->heard.empty()) {
        return false;
    }
    uint64_t first = UINT64_MAX;
    for (const auto &e : rw->heard) {
        if (e.epoch != rw->sync_epoch) {
            return false;  // a new epoch: the log's pages say where
        }
        first = ngx_min(first, e.seq);
    }
    return first <= rw->fetch_next;
}

static void ngx_http_sse_redis_log_reply(ngx_http_sse_redis_conn_t *rc,
                                         void *data, redisReply *r,
                                         const char *err) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(rc->rw);
    uint64_t gen = (uint64_t)(uintptr_t)data;
    if (gen != rw->sync_gen) {
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        std::string why =
            r != NULL && r->type == REDIS_REPLY_ERROR
                ? "reading the log: " + std::string(r->str, r->len)
                : std::string(err ? err : "XRANGE of the log failed");
        ngx_http_sse_redis_bus_down(rw, why.c_str());
        return;
    }
    if (ngx_http_sse_redis_u64(r->element[0]) != rw->sync_epoch) {
        // Redis started a new epoch meanwhile: sync again, which takes it
        // (what follows in the log is the new epoch's).
        ngx_http_sse_redis_resync(rw);
        return;
    }
    redisReply *page = r->element[1];
    std::vector<ngx_http_sse_redis_event_t> evs;
    evs.reserve(page->elements);
    for (size_t i = 0; i < page->elements; i++) {
        ngx_http_sse_redis_event_t ev;
        uint64_t prev;
        if (!ngx_http_sse_redis_entry(rw, page->element[i], ev, &prev)) {
            continue;
        }
        ev.prev = ngx_http_sse_redis_checked_prev(rw, ev.epoch, prev);
        if (rw->check_newest) {
            rw->check_newest = false;
            rw->fetch_next = rw->fetch_from + 1;
            if (ev.seq == rw->fetch_from) {
                // The newest event this machine holds must be Redis's too.
                bool differs;
                {
                    auto s = ngx_http_sse_session(rw->zw->zone);
                    differs = s->epoch() == ev.epoch &&
                              ngx_http_sse_redis_differs(s.operator->(), ev);
                }
                if (differs) {
                    ngx_http_sse_redis_fork(rw, ev);
                    // The new epoch arrives on the bus; sync again after.
                    ngx_http_sse_redis_bus_down(rw,
                                                "redis lost acknowledged "
                                                "events: a new epoch");
                    return;
                }
                continue;
            }
        }
        if (ev.seq > rw->fetch_next) {
            // Trimmed before this machine read it: what came before is
            // committed, the hole handled, and the log read on from here.
            ngx_http_sse_redis_commit(rw, evs, 0);
            ngx_http_sse_redis_hole(rw, ev.seq - 1, ev.seq);
            return;
        }
        if (ev.seq < rw->fetch_next) {
            continue;
        }
        rw->fetch_next = ev.seq + 1;
        evs.push_back(std::move(ev));
    }
    ngx_http_sse_redis_commit(rw, evs, 0);
    if (page->elements == NGX_HTTP_SSE_REDIS_PAGE &&
        !ngx_http_sse_redis_bus_covers(rw)) {
        ngx_http_sse_redis_log_page(rw);
        return;
    }
    ngx_http_sse_redis_finish(rw);
}

static void ngx_http_sse_redis_log_page(ngx_http_sse_redis_worker_t *rw) {
    std::string start = std::to_string(rw->fetch_next) + "-0";
    ngx_http_sse_redis_send(
        &rw->cmd,
        {"EVAL", ngx_http_sse_redis_page_lua, "2", rw->keys[0], rw->keys[5],
         start, std::to_string(NGX_HTTP_SSE_REDIS_PAGE)},
        ngx_http_sse_redis_log_reply, (void *)(uintptr_t)rw->sync_gen);
}

static void ngx_http_sse_redis_sync_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(rc->rw);
    uint64_t gen = (uint64_t)(uintptr_t)data;
    if (gen != rw->sync_gen) {
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        std::string why = r != NULL && r->type == REDIS_REPLY_ERROR
                              ? "sync script: " + std::string(r->str, r->len)
                              : std::string(err ? err : "sync script failed");
        ngx_http_sse_redis_bus_down(rw, why.c_str());
        return;
    }
    uint64_t epoch = ngx_http_sse_redis_u64(r->element[0]);
    uint64_t seq = 0;
    bool older = false;
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        // A zone that never synced has an epoch of its own making: any of
        // Redis's goes. Once synced, epochs only grow.
        older = s->external() == 2 && epoch < s->epoch();
        bool adopted = !older && s->adopt_epoch(epoch);
        if (adopted) {
            // The epoch's first seq is past its value.
            s->skip_to(epoch);
            ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                          "sse: zone \"%V\" takes the epoch %uL of redis "
                          "\"%V\"",
                          &rw->zw->zone->shm_zone->shm.name, epoch,
                          &rw->conf->url);
        }
        seq = s->seq();
        rw->fetch_from = seq;
        rw->fresh = adopted || s->external() != 2;
        // Same epoch: the newest event we hold must be Redis's too.
        rw->check_newest = !adopted && !older && seq > epoch;
    }
    if (older) {
        // Redis holds an older copy of the zone than this machine had (a
        // replica promoted before the newer epoch reached it): it lost
        // data, so a new epoch, past this machine's seqs.
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sse: zone \"%V\": redis \"%V\" holds the older epoch "
                      "%uL: it lost the zone's data; starting a new epoch",
                      &rw->zw->zone->shm_zone->shm.name, &rw->conf->url, epoch);
        ngx_http_sse_redis_send(
            &rw->cmd,
            {"EVAL", ngx_http_sse_redis_fork_lua, "3", rw->keys[0], rw->keys[1],
             rw->keys[3], std::to_string(epoch), std::to_string(seq)},
            ngx_http_sse_redis_fork_reply, NULL);
        ngx_http_sse_redis_bus_down(rw, "redis holds an older epoch");
        return;
    }
    rw->sync_epoch = epoch;
    rw->sync_seq = ngx_http_sse_redis_u64(r->element[1]);
    rw->stall_seq = 0;
    // Every process: old streams end if the epoch changed.
    sse::slot_set all;
    for (auto &b : all.bits) {
        b = ~uint64_t{0};
    }
    ngx_http_sse_notify(rw->zw->zone, all);
    // Missed some (or a fresh machine: its history): the zone's log has
    // them, in seq order, read a page at a time; it starts with our
    // newest, which must be the same event there.
    rw->fetch_next = rw->fetch_from + (rw->check_newest ? 0 : 1);
    if (rw->fetch_from >= rw->sync_seq && !rw->check_newest) {
        ngx_http_sse_redis_finish(rw);  // nothing missed
        return;
    }
    ngx_http_sse_redis_log_page(rw);
}

static void ngx_http_sse_redis_subscribed(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {
    auto *rw = rc->rw;
    if (r == NULL) {
        return;  // closed: bus_down runs from on_close
    }
    if (r->type == REDIS_REPLY_ERROR) {
        std::string why = "SUBSCRIBE: " + std::string(r->str, r->len);
        ngx_http_sse_redis_close(rc, why.c_str());
        return;
    }
    // Subscribed: from now on nothing published is missed. Repair what
    // came before it.
    ngx_http_sse_redis_resync(rw);
}

// Reads what the zone missed from Redis (while the bus keeps what it
// hears for after), then goes on with the bus.
static void ngx_http_sse_redis_resync(ngx_http_sse_redis_worker_t *rw) {
    ngx_http_sse_redis_set_state(rw, NGX_HTTP_SSE_REDIS_SYNCING);
    uint64_t gen = ++rw->sync_gen;
    std::string epoch, seq;
    {
        auto s = ngx_http_sse_session(rw->zw->zone);
        epoch = std::to_string(s->epoch());
        seq = std::to_string(s->seq());
    }
    static const char *script = ngx_http_sse_redis_sync_lua;
    ngx_http_sse_redis_send(
        &rw->cmd, {"EVAL", script, "2", rw->keys[0], rw->keys[1], epoch, seq},
        ngx_http_sse_redis_sync_reply, (void *)(uintptr_t)gen);
}

static void ngx_http_sse_redis_ping_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {}

static void ngx_http_sse_redis_bus_timer(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    try {
        if (!rw->leader || ngx_exiting || ngx_terminate) {
            return;
        }
        if (rw->bus_state == NGX_HTTP_SSE_REDIS_DOWN) {
            ngx_http_sse_redis_bus_start(rw);
            return;
        }
        if (rw->bus.connected && rw->bus.pending.empty()) {
            // Finds a Redis that hangs without closing (its reply is due
            // within redis_timeout).
            ngx_http_sse_redis_send(&rw->bus, {"PING"},
                                    ngx_http_sse_redis_ping_reply, NULL);
        }
        ngx_add_timer(ev, NGX_HTTP_SSE_REDIS_PING_MS);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "sse: redis: %s",
                      e.what());
        ngx_add_timer(ev, NGX_HTTP_SSE_REDIS_BACKOFF_MAX);
    }
}

static void ngx_http_sse_redis_bus_start(ngx_http_sse_redis_worker_t *rw) {
    ngx_http_sse_redis_set_state(rw, NGX_HTTP_SSE_REDIS_CONNECTING);
    rw->heard.clear();
    rw->heard_bytes = 0;
    rw->sync_gen++;
    ngx_http_sse_redis_send(&rw->bus, {"SUBSCRIBE", rw->keys[3]},
                            ngx_http_sse_redis_subscribed, NULL);
    if (rw->bus_state == NGX_HTTP_SSE_REDIS_CONNECTING &&
        !rw->bus_timer.timer_set) {
        ngx_add_timer(&rw->bus_timer, NGX_HTTP_SSE_REDIS_PING_MS);
    }
}

static void ngx_http_sse_redis_bus_down(ngx_http_sse_redis_worker_t *rw,
                                        const char *err) {
    if (rw->bus_state == NGX_HTTP_SSE_REDIS_DOWN) {
        return;
    }
    ngx_http_sse_redis_set_state(rw, NGX_HTTP_SSE_REDIS_DOWN);
    rw->sync_gen++;
    rw->heard.clear();
    rw->heard_bytes = 0;
    if (rw->bus.connected || rw->bus.connecting) {
        rw->bus.on_close = NULL;
        ngx_http_sse_redis_close(&rw->bus, err);
        rw->bus.on_close = ngx_http_sse_redis_bus_close;
    }
    __atomic_fetch_add(&sse::store::ext(rw->zw->zone->root).reconnects, 1,
                       __ATOMIC_RELAXED);
    if (err != NULL) {
        ngx_http_sse_redis_set_error(rw->zw->zone, err);
    }
    if (rw->bus_timer.timer_set) {
        ngx_del_timer(&rw->bus_timer);
    }
    if (rw->leader && !ngx_exiting && !ngx_terminate) {
        ngx_add_timer(&rw->bus_timer, rw->backoff);
        rw->backoff = ngx_min(rw->backoff * 2,
                              (ngx_msec_t)NGX_HTTP_SSE_REDIS_BACKOFF_MAX);
    }
}

// ------------------------------------------------------------- worker

void ngx_http_sse_redis_worker_init(ngx_http_sse_zone_worker_t *zw) {
    ngx_http_sse_zone_t *z = zw->zone;
    if (z->redis == NULL) {
        return;
    }
    auto *rw = new ngx_http_sse_redis_worker_t();
    zw->redis = rw;
    rw->zw = zw;
    rw->conf = z->redis;
    const std::string &p = *z->redis->prefix;
    rw->keys[0] = p + ":epoch";
    rw->keys[1] = p + ":seq";
    rw->keys[2] = p + ":chans";
    rw->keys[3] = p + ":bus";
    rw->keys[4] = p + ":ch:";
    rw->keys[5] = p + ":log";
    rw->keys[6] = p + ":alive";
    rw->keys[7] = p + ":subs:";
    ngx_http_sse_redis_conn_init(&rw->cmd, rw, "command");
    ngx_http_sse_redis_conn_init(&rw->bus, rw, "bus");
    ngx_http_sse_redis_conn_init(&rw->ask, rw, "ASK");
    // Their commands carry publishers waiting for an answer: a graceful
    // exit (reload, quit) waits for it, within redis_timeout.
    rw->cmd.timer.cancelable = 0;
    rw->ask.timer.cancelable = 0;
    ngx_http_sse_redis_conn_init(&rw->sentinel, rw, "sentinel");
    ngx_http_sse_redis_hosts_init(rw);
    rw->discover_ev.handler = ngx_http_sse_redis_discover_handler;
    rw->discover_ev.data = rw;
    rw->discover_ev.log = ngx_cycle->log;
    rw->check_ev.handler = ngx_http_sse_redis_check_handler;
    rw->check_ev.data = rw;
    rw->check_ev.log = ngx_cycle->log;
    rw->check_ev.cancelable = 1;
    if (rw->conf->sentinels != NULL) {
        ngx_add_timer(&rw->check_ev, NGX_HTTP_SSE_REDIS_CHECK_MS);
    }
    rw->bus.on_message = ngx_http_sse_redis_on_message;
    rw->bus.on_close = ngx_http_sse_redis_bus_close;
    rw->bus_timer.handler = ngx_http_sse_redis_bus_timer;
    rw->bus_timer.data = rw;
    rw->bus_timer.log = ngx_cycle->log;
    rw->bus_timer.cancelable = 1;
    rw->commit_ev.handler = ngx_http_sse_redis_commit_handler;
    rw->commit_ev.data = rw;
    rw->commit_ev.log = ngx_cycle->log;
    rw->backoff = NGX_HTTP_SSE_REDIS_BACKOFF_MIN;
    rw->sha = ngx_http_sse_redis_sha(ngx_http_sse_redis_publish_lua);
    rw->flush_ev.handler = ngx_http_sse_redis_flush_handler;
    rw->flush_ev.data = rw;
    rw->flush_ev.log = ngx_cycle->log;
    ngx_http_sse_redis_count_init(zw);
}

static void ngx_http_sse_redis_resign(ngx_http_sse_redis_worker_t *rw) {
    if (!rw->leader) {
        return;
    }
    rw->leader = false;
    ngx_http_sse_redis_bus_down(rw, NULL);
    auto s = ngx_http_sse_session(rw->zw->zone);
    if (s->bus_pid() == ngx_pid) {
        s->set_bus_pid(0);
    }
}

// At a worker's exit, before the command connection closes: what it
// still has to say (a clean stop's removal of the machine's counts)
// reaches Redis. A close with replies unread sends a reset, and Redis
// drops what it had not read yet; so the rest is written, the sending
// side shut, and the replies read until Redis closes (it has read
// everything then). Blocking (the worker is leaving), for `ms` at most,
// and 1 s for all the zones together: `nginx -s stop` kills a worker
// that takes longer.
static void ngx_http_sse_redis_linger(ngx_http_sse_redis_conn_t *rc,
                                      ngx_msec_t ms) {
    static int64_t all_until;  // ms, CLOCK_MONOTONIC
    if (!rc->connected || rc->pc.connection == NULL) {
        return;
    }
    ngx_connection_t *c = rc->pc.connection;
    auto now = []() { return (int64_t)(ngx_http_sse_redis_now_us() / 1000); };
    int64_t until = now() + (int64_t)ms;
    if (all_until == 0) {
        all_until = now() + 1000;
    }
    until = std::min(until, all_until);
    // False once the time is up; true when the socket may be ready.
    auto wait = [&](short events) -> bool {
        for (;;) {
            int64_t left = until - now();
            if (left <= 0) {
                return false;
            }
            struct pollfd p = {c->fd, events, 0};
            int n = poll(&p, 1, (int)left);
            if (n > 0) {
                return true;
            }
            if (n == -1 && errno != EINTR) {
                return false;
            }
        }
    };
    while (!rc->out.empty()) {
        ssize_t n =
            c->send(c, reinterpret_cast<u_char *>(&rc->out[0]), rc->out.size());
        if (n == NGX_ERROR) {
            return;
        }
        if (n == NGX_AGAIN) {
            // TLS may want to read first; plain TCP waits for room only
            // (unread replies would keep POLLIN up).
            if (!wait(c->ssl != NULL ? POLLIN | POLLOUT : POLLOUT)) {
                return;
            }
            continue;
        }
        rc->out.erase(0, n);
    }
    if (shutdown(c->fd, SHUT_WR) == -1) {
        return;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            continue;  // replies nobody waits for any more
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            return;  // closed by Redis
        }
        if (errno == EAGAIN && !wait(POLLIN)) {
            return;
        }
    }
}

void ngx_http_sse_redis_worker_exit(ngx_http_sse_zone_worker_t *zw) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(zw->redis);
    if (rw == NULL) {
        return;
    }
    if (ngx_http_sse_redis_count_exit(zw)) {
        ngx_http_sse_redis_linger(&rw->cmd,
                                  ngx_min(rw->conf->timeout, (ngx_msec_t)1000));
    }
    ngx_http_sse_redis_resign(rw);
    rw->bus.on_close = NULL;
    ngx_http_sse_redis_close(&rw->bus, NULL);
    // Requests still waiting are being torn down with the process.
    ngx_http_sse_redis_forget_requests(rw);
    rw->discovering = false;
    if (rw->discover_ev.posted) {
        ngx_delete_posted_event(&rw->discover_ev);
    }
    if (rw->check_ev.timer_set) {
        ngx_del_timer(&rw->check_ev);
    }
    ngx_http_sse_redis_hosts_exit(rw);
    ngx_http_sse_redis_close(&rw->sentinel, NULL);
    ngx_http_sse_redis_close(&rw->ask, NULL);
    ngx_http_sse_redis_close(&rw->cmd, NULL);
    if (rw->bus_timer.timer_set) {
        ngx_del_timer(&rw->bus_timer);
    }
    if (rw->commit_ev.posted) {
        ngx_delete_posted_event(&rw->commit_ev);
    }
    ngx_http_sse_redis_backfill_free(rw);
    delete rw;
    zw->redis = NULL;
}

// From the worker's poll: claims the bus when nobody alive holds it.
void ngx_http_sse_redis_poll(ngx_http_sse_zone_worker_t *zw) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(zw->redis);
    if (rw == NULL || zw->slot == sse::no_slot) {
        return;
    }
    if (ngx_exiting || ngx_terminate) {
        // A newer worker takes over; it repairs what passes meanwhile.
        ngx_http_sse_redis_resign(rw);
        return;
    }
    ngx_http_sse_redis_count_poll(zw);
    if (rw->leader) {
        return;
    }
    ngx_pid_t pid = sse::store::peek_bus_pid(zw->zone->root);
    if (pid != 0 && !(kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH)) {
        return;
    }
    {
        auto s = ngx_http_sse_session(zw->zone);
        pid = s->bus_pid();
        if (pid != 0 && !(kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH)) {
            return;
        }
        s->set_bus_pid(ngx_pid);
    }
    rw->leader = true;
    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                  "sse: this worker holds the redis bus of zone \"%V\"",
                  &zw->zone->shm_zone->shm.name);
    ngx_http_sse_redis_bus_start(rw);
}

// ------------------------------------------------------------- publishing

// One request's events in a script call (a POST's event, a streaming
// publish's group, a DELETE): what its caller holds.
struct ngx_http_sse_redis_item_t {
    ngx_http_sse_redis_done_pt done;
    void *data;  // nullptr: cancelled, or nobody waits
    std::string channel;
    std::vector<std::string> bodies;  // encoded; none for a delete
    std::string maxlen;
    std::string ttl;
    uint32_t buffer_length;
    ngx_msec_t ttl_ms;
};

// One script call: a DELETE, or the group commit of publishes. It goes
// (and goes again: ASK, TRYAGAIN, MOVED, NOSCRIPT) as a whole.
struct ngx_http_sse_redis_publish_t {
    ngx_http_sse_redis_worker_t *rw;
    uint64_t start_us;  // monotonic
    bool eval;          // sent as EVAL after NOSCRIPT
    bool redirected;    // sent again after MOVED or READONLY
    bool remove;        // a DELETE of the channel (one item, no body)
    std::vector<std::unique_ptr<ngx_http_sse_redis_item_t>> items;
    size_t events;
    size_t bytes;       // of the bodies
    ngx_event_t retry;  // TRYAGAIN: sent again when it fires
    ngx_msec_t retry_delay;
};

static void ngx_http_sse_redis_publish_send(ngx_http_sse_redis_publish_t *p);
static void ngx_http_sse_redis_retry(ngx_event_t *ev);

// A primary that refuses writes because fewer replicas than its
// min-replicas-to-write are in sync (NOREPLICAS): nothing of the script
// ran (its first write was refused). The 503 and last_error say it
// plainly; the machine logs it once until a publish goes through again.
static void ngx_http_sse_redis_refused(ngx_http_sse_redis_worker_t *rw,
                                       redisReply *r, std::string &why) {
    if (r == NULL || !ngx_http_sse_redis_is_error(r, "NOREPLICAS")) {
        return;
    }
    why =
        "the primary refuses writes (NOREPLICAS): fewer replicas in sync "
        "than its min-replicas-to-write";
    ngx_http_sse_redis_set_error(rw->zw->zone, why.c_str());
    sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
    if (!(__atomic_fetch_or(&x.told,
                            (uint32_t)NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS,
                            __ATOMIC_RELAXED) &
          NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS)) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "sse: zone \"%V\": %s; publishes get 503 until its "
                      "replicas are back",
                      &rw->zw->zone->shm_zone->shm.name, why.c_str());
    }
}

// Redis stored a publish: a refusal told before is over.
static void ngx_http_sse_redis_accepted(ngx_http_sse_redis_worker_t *rw) {
    sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
    if ((__atomic_load_n(&x.told, __ATOMIC_RELAXED) &
         NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS) &&
        (__atomic_fetch_and(&x.told,
                            ~(uint32_t)NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS,
                            __ATOMIC_RELAXED) &
         NGX_HTTP_SSE_REDIS_TOLD_NOREPLICAS)) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      "sse: zone \"%V\": the primary accepts writes again",
                      &rw->zw->zone->shm_zone->shm.name);
    }
}
static void ngx_http_sse_redis_load_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err);

// Someone still waits for the call's outcome.
static bool ngx_http_sse_redis_waited(ngx_http_sse_redis_publish_t *p) {
    for (auto &it : p->items) {
        if (it->data != NULL) {
            return true;
        }
    }
    return false;
}

// One event's result in the publish script's reply ({epoch, seq[,
// others]}): false
// when it is not one.
static bool ngx_http_sse_redis_event_result(redisReply *e, uint64_t *epoch,
                                            uint64_t *seq, int64_t *others) {
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2) {
        return false;
    }
    *epoch = ngx_http_sse_redis_u64(e->element[0]);
    *seq = ngx_http_sse_redis_u64(e->element[1]);
    // A counted event's third element: the other machines' subscribers.
    *others = e->elements > 2 && e->element[2]->type == REDIS_REPLY_INTEGER
                  ? e->element[2]->integer
                  : -1;
    return *seq != 0;
}

static void ngx_http_sse_redis_publish_reply(ngx_http_sse_redis_conn_t *rc,
                                             void *data, redisReply *r,
                                             const char *err) {
    auto *p = static_cast<ngx_http_sse_redis_publish_t *>(data);
    ngx_http_sse_redis_worker_t *rw = p->rw;
    sse::external_stats &x = sse::store::ext(rw->zw->zone->root);
    // MOVED: the cluster's slot map changed; READONLY: the primary became
    // a replica (Sentinel). Either way the command was not run, and the
    // connection now goes where it should.
    bool moved =
        (r != NULL && (ngx_http_sse_redis_is_moved(r) ||
                       (rw->conf->sentinels != NULL &&
                        ngx_http_sse_redis_is_error(r, "READONLY")))) ||
        (r == NULL && err != NULL &&
         (ngx_strncmp(err, "MOVED ", 6) == 0 ||
          ngx_strncmp(err, "READONLY", 8) == 0));
    if (r != NULL && ngx_http_sse_redis_is_error(r, "TRYAGAIN")) {
        // The zone's slot is being migrated and its keys are split between
        // the two nodes for a moment: nothing ran; send it again shortly,
        // while redis_timeout allows.
        ngx_msec_t spent =
            (ngx_msec_t)((ngx_http_sse_redis_now_us() - p->start_us) / 1000);
        ngx_msec_t delay =
            p->retry_delay == 0
                ? NGX_HTTP_SSE_REDIS_TRYAGAIN_MIN
                : ngx_min(p->retry_delay * 2,
                          (ngx_msec_t)NGX_HTTP_SSE_REDIS_TRYAGAIN_MAX);
        if (ngx_http_sse_redis_waited(p) && spent + delay < rw->conf->timeout) {
            try {
                rw->waiting.push_back(p);
                p->retry_delay = delay;
                p->retry.handler = ngx_http_sse_redis_retry;
                p->retry.data = p;
                p->retry.log = ngx_cycle->log;
                // Not cancelable: a graceful exit waits for the answer.
                p->retry.cancelable = 0;
                ngx_add_timer(&p->retry, delay);
                return;
            } catch (const std::exception &) {
                // Fails below.
            }
        }
    }
    if (moved && !p->redirected) {
        // Sent once more, to the node that holds the zone's slot.
        p->redirected = true;
        try {
            ngx_http_sse_redis_send(
                &rw->cmd, {"SCRIPT", "LOAD", ngx_http_sse_redis_publish_lua},
                ngx_http_sse_redis_load_reply, NULL);
            ngx_http_sse_redis_publish_send(p);
            return;
        } catch (const std::exception &e) {
            err = "out of memory";
            r = NULL;
        }
    }
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !p->eval && r->len >= 8 &&
        ngx_strncmp(r->str, "NOSCRIPT", 8) == 0) {
        // The script cache was flushed: send it whole; that loads it.
        p->eval = true;
        try {
            ngx_http_sse_redis_publish_send(p);
            return;
        } catch (const std::exception &e) {
            err = "out of memory";
            r = NULL;
        }
    }
    std::string why;
    uint64_t epoch = 0;
    std::vector<uint64_t> seqs;  // per event
    bool existed = true;
    std::vector<int64_t> others;  // per event, -1: not counted
    if (r != NULL && p->remove && r->type == REDIS_REPLY_ARRAY &&
        r->elements == 4) {
        epoch = ngx_http_sse_redis_u64(r->element[0]);
        seqs.push_back(ngx_http_sse_redis_u64(r->element[1]));
        existed = ngx_http_sse_redis_u64(r->element[2]) != 0;
        others.push_back(r->element[3]->type == REDIS_REPLY_INTEGER
                             ? r->element[3]->integer
                             : -1);
        if (seqs[0] == 0) {
            seqs.clear();
        }
    } else if (r != NULL && !p->remove && r->type == REDIS_REPLY_ARRAY &&
               r->elements == p->events) {
        seqs.resize(p->events);
        others.resize(p->events);
        for (size_t i = 0; i < p->events; i++) {
            if (!ngx_http_sse_redis_event_result(r->element[i], &epoch,
                                                 &seqs[i], &others[i])) {
                seqs.clear();
                break;
            }
        }
    }
    if (seqs.empty()) {
        why = r != NULL && r->type == REDIS_REPLY_ERROR
                  ? std::string(r->str, r->len)
                  : std::string(err ? err : "unexpected reply");
        __atomic_fetch_add(&x.publish_errors, p->events, __ATOMIC_RELAXED);
        ngx_http_sse_redis_refused(rw, r, why);
        if (r == NULL) {
            // Connection trouble: publishes fail fast for a moment rather
            // than each waiting for its own timeout.
            rw->cmd_down_until =
                ngx_current_msec + NGX_HTTP_SSE_REDIS_BACKOFF_MIN;
            rw->cmd_error = why;
        }
    } else {
        uint64_t rtt_us = ngx_http_sse_redis_now_us() - p->start_us;
        ngx_http_sse_redis_accepted(rw);
        if (!p->remove) {
            __atomic_fetch_add(&x.publishes, p->events, __ATOMIC_RELAXED);
            __atomic_fetch_add(&x.rtt_us_total, rtt_us * p->events,
                               __ATOMIC_RELAXED);
            __atomic_store_n(&x.rtt_us_last, rtt_us, __ATOMIC_RELAXED);
        }
        // The first is the next seq the zone expects: nothing can be
        // missing before the call's events (one script: consecutive
        // seqs), so deliver them now rather than after the bus's round
        // trip.
        ngx_http_sse_zone_t *z = rw->zw->zone;
        if (sse::store::peek_seq(z->root) + 1 == seqs[0] &&
            sse::store::peek_epoch(z->root) == epoch &&
            sse::store::peek_external(z->root) == 2) {
            try {
                std::vector<ngx_http_sse_redis_event_t> evs(seqs.size());
                size_t i = 0;
                for (auto &it : p->items) {
                    size_t n = p->remove ? 1 : it->bodies.size();
                    for (size_t j = 0; j < n; j++, i++) {
                        evs[i].epoch = epoch;
                        evs[i].seq = seqs[i];
                        evs[i].buffer_length =
                            p->remove ? 0 : it->buffer_length;
                        evs[i].ttl = it->ttl_ms;
                        evs[i].channel = it->channel;
                        if (!p->remove) {
                            evs[i].body = std::move(it->bodies[j]);
                        }
                    }
                }
                ngx_http_sse_redis_commit(rw, evs, 0);
            } catch (const std::exception &) {
                // The bus brings them.
            }
        }
    }
    // Each request gets its own answer: its last event's seq.
    size_t i = 0;
    for (auto &it : p->items) {
        i += p->remove ? 1 : it->bodies.size();
        if (it->data != NULL && it->done != NULL) {
            void *cbdata = it->data;
            it->data = NULL;
            it->done(cbdata, !seqs.empty(), epoch,
                     seqs.empty() || !existed ? 0 : seqs[i - 1],
                     seqs.empty() ? -1 : others[i - 1], why);
        }
    }
    delete p;
}

// A publish that timed out got 503, yet its call may still sit in the
// socket of a Redis that stalled (SIGSTOP, a long command) and run once it
// wakes: it must then do nothing. So each call carries a cut-off by
// Redis's clock, before the earliest moment this worker can give it up:
// the deadline of the oldest command on the connection (a timeout fails
// all that follow), less a tenth of redis_timeout for the reply's way
// back. Our monotonic clock is ngx_current_msec's; the offset to Redis's
// is at most the true one (the probe's reply came after Redis read its
// clock), so the cut-off errs early. "0": no cut-off (no clock known).
static std::string ngx_http_sse_redis_fence(ngx_http_sse_redis_worker_t *rw) {
    if (!rw->clock_fence) {
        return "0";
    }
    ngx_msec_t due = rw->cmd.pending.empty()
                         ? ngx_current_msec + rw->conf->timeout
                         : rw->cmd.pending.front().deadline;
    due -= rw->conf->timeout / 10;
    return std::to_string((int64_t)due * 1000 + rw->clock_off_us);
}

static void ngx_http_sse_redis_time_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {
    ngx_http_sse_redis_worker_t *rw = rc->rw;
    rw->clock_probing = false;
    if (r == NULL) {
        if (!rw->clock_known) {
            // The calls that waited for it would have failed alike.
            std::vector<ngx_http_sse_redis_publish_t *> calls;
            calls.swap(rw->calls);
            for (ngx_http_sse_redis_publish_t *p : calls) {
                ngx_http_sse_redis_publish_reply(rc, p, NULL, err);
            }
        }
        return;
    }
    uint64_t now = ngx_http_sse_redis_now_us();
    // ngx_current_msec is CLOCK_MONOTONIC's, truncated to ms, in the
    // nginx we build with: checked, so that one where it is not goes
    // without a cut-off rather than with a wrong one.
    int64_t lag = (int64_t)(now / 1000) - (int64_t)ngx_current_msec;
    rw->clock_fence = false;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && lag >= 0 &&
        lag < 60000) {
        uint64_t t = ngx_http_sse_redis_u64(r->element[0]) * 1000000 +
                     ngx_http_sse_redis_u64(r->element[1]);
        rw->clock_off_us = (int64_t)(t - now);
        rw->clock_fence = t != 0;
    }
    rw->clock_known = true;
    rw->clock_life = rc->life;
    rw->clock_at = ngx_current_msec;
    if (!rw->calls.empty() && !rw->flush_ev.posted) {
        ngx_post_event(&rw->flush_ev, &ngx_posted_events);
    }
}

static void ngx_http_sse_redis_publish_send(ngx_http_sse_redis_publish_t *p) {
    ngx_http_sse_redis_worker_t *rw = p->rw;
    std::string epoch, seq;
    {
        // Read unlocked: only a hint to Redis about what we hold.
        sse::zone_root *root = rw->zw->zone->root;
        epoch = std::to_string(sse::store::peek_epoch(root));
        seq = std::to_string(sse::store::peek_seq(root));
    }
    // The zone's liveness hash (keys[6]) and this machine's id, for the
    // counts of the answers (NGX_HTTP_SSE_REDIS_COUNT_LUA).
    const std::string &me = ngx_http_sse_redis_count_me(rw->zw);
    if (p->remove) {
        // Rare: sent whole, no script cache to keep.
        ngx_http_sse_redis_item_t *it = p->items[0].get();
        std::string stream = rw->keys[4] + it->channel;
        std::string subs = rw->keys[7] + it->channel;
        ngx_http_sse_redis_send(
            &rw->cmd,
            {"EVAL", ngx_http_sse_redis_delete_lua, "8", rw->keys[0],
             rw->keys[1], stream, rw->keys[2], rw->keys[3], rw->keys[5], subs,
             rw->keys[6], epoch, seq, it->channel, me,
             ngx_http_sse_redis_fence(rw)},
            ngx_http_sse_redis_publish_reply, p);
        return;
    }
    std::vector<std::string> streams, counts, at;
    streams.reserve(p->items.size());
    counts.reserve(p->items.size());
    at.reserve(p->items.size());
    for (auto &it : p->items) {
        streams.push_back(rw->keys[4] + it->channel);
        // Counted: the last event of a request whose answer waits for it
        // (nobody waits on the module's own publishes).
        if (it->done != NULL && !it->bodies.empty()) {
            counts.push_back(rw->keys[7] + it->channel);
            at.push_back(std::to_string(6 + p->events + counts.size()));
        } else {
            at.emplace_back("0");
        }
    }
    std::string numkeys = std::to_string(6 + p->events + counts.size());
    std::vector<std::string_view> args;
    args.reserve(3 + 6 + p->events + counts.size() + 4 + 5 * p->events);
    args.insert(args.end(),
                {p->eval ? "EVAL" : "EVALSHA",
                 p->eval ? std::string_view(ngx_http_sse_redis_publish_lua)
                         : std::string_view(rw->sha),
                 numkeys, rw->keys[0], rw->keys[1], rw->keys[2], rw->keys[3],
                 rw->keys[5], rw->keys[6]});
    for (size_t k = 0; k < p->items.size(); k++) {
        args.insert(args.end(), p->items[k]->bodies.size(), streams[k]);
    }
    args.insert(args.end(), counts.begin(), counts.end());
    std::string cutoff = ngx_http_sse_redis_fence(rw);
    args.insert(args.end(), {epoch, seq, cutoff, me});
    for (size_t k = 0; k < p->items.size(); k++) {
        auto &it = p->items[k];
        for (size_t j = 0; j < it->bodies.size(); j++) {
            args.insert(args.end(),
                        {it->channel, it->bodies[j], it->maxlen, it->ttl,
                         j + 1 == it->bodies.size() ? std::string_view(at[k])
                                                    : std::string_view("0")});
        }
    }
    ngx_http_sse_redis_send(&rw->cmd, args, ngx_http_sse_redis_publish_reply,
                            p);
}

static void ngx_http_sse_redis_load_reply(ngx_http_sse_redis_conn_t *rc,
                                          void *data, redisReply *r,
                                          const char *err) {}

// A call that met TRYAGAIN goes again (or is dropped: nobody waits).
static void ngx_http_sse_redis_retry(ngx_event_t *ev) {
    auto *p = static_cast<ngx_http_sse_redis_publish_t *>(ev->data);
    ngx_http_sse_redis_worker_t *rw = p->rw;
    auto it = std::find(rw->waiting.begin(), rw->waiting.end(), p);
    if (it != rw->waiting.end()) {
        rw->waiting.erase(it);
    }
    if (!ngx_http_sse_redis_waited(p)) {
        delete p;
        return;
    }
    try {
        ngx_http_sse_redis_publish_send(p);
    } catch (const std::exception &e) {
        ngx_http_sse_redis_publish_reply(&rw->cmd, p, NULL, e.what());
    }
}

// End of the event loop's turn: the calls gathered go, in order.
static void ngx_http_sse_redis_flush_handler(ngx_event_t *ev) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(ev->data);
    if (!rw->clock_probing &&
        (!rw->clock_known || rw->clock_life != rw->cmd.life ||
         ngx_current_msec - rw->clock_at > NGX_HTTP_SSE_REDIS_CLOCK_AGE)) {
        try {
            if (!rw->cmd.connected && !rw->cmd.connecting) {
                // A fresh connection loads the script first.
                ngx_http_sse_redis_send(
                    &rw->cmd,
                    {"SCRIPT", "LOAD", ngx_http_sse_redis_publish_lua},
                    ngx_http_sse_redis_load_reply, NULL);
            }
            rw->clock_probing = true;  // its reply may come from inside
            ngx_http_sse_redis_send(&rw->cmd, {"TIME"},
                                    ngx_http_sse_redis_time_reply, NULL);
        } catch (const std::exception &) {
            rw->clock_probing = false;  // sent without a cut-off meanwhile
        }
    }
    if (!rw->clock_known && rw->clock_probing) {
        return;  // the first cut-off needs Redis's clock: sent from there
    }
    std::vector<ngx_http_sse_redis_publish_t *> calls;
    calls.swap(rw->calls);
    for (ngx_http_sse_redis_publish_t *p : calls) {
        try {
            if (!p->remove && !rw->cmd.connected && !rw->cmd.connecting) {
                // A fresh connection loads the script first.
                ngx_http_sse_redis_send(
                    &rw->cmd,
                    {"SCRIPT", "LOAD", ngx_http_sse_redis_publish_lua},
                    ngx_http_sse_redis_load_reply, NULL);
            }
            ngx_http_sse_redis_publish_send(p);
        } catch (const std::exception &e) {
            // Answered here, never from inside the call that queued it.
            ngx_http_sse_redis_publish_reply(&rw->cmd, p, NULL, e.what());
        }
    }
}

// Queues item (events for one channel, or a delete) for the end of this
// turn of the event loop: publishes join the call being gathered while it
// has room, so that they all take one script call; a delete, and a call
// that is full, end it. The item's events stay together, in one call.
// The handle for the caller, or NULL (and *err) while Redis is known to be
// unreachable: it fails fast.
static ngx_http_sse_redis_item_t *ngx_http_sse_redis_queue(
    ngx_http_sse_redis_worker_t *rw,
    std::unique_ptr<ngx_http_sse_redis_item_t> item, bool remove,
    std::string *err) {
    if ((ngx_msec_int_t)(rw->cmd_down_until - ngx_current_msec) > 0 &&
        !rw->cmd.connected) {
        *err = rw->cmd_error;
        __atomic_fetch_add(&sse::store::ext(rw->zw->zone->root).publish_errors,
                           1, __ATOMIC_RELAXED);
        return NULL;
    }
    size_t events = remove ? 1 : item->bodies.size();
    size_t bytes = 0;
    for (const std::string &b : item->bodies) {
        bytes += b.size();
    }
    ngx_http_sse_redis_publish_t *p =
        rw->calls.empty() ? NULL : rw->calls.back();
    if (p == NULL || remove || p->remove ||
        p->events + events > NGX_HTTP_SSE_REDIS_GROUP_EVENTS ||
        p->bytes + bytes > NGX_HTTP_SSE_REDIS_GROUP_BYTES) {
        auto call = std::make_unique<ngx_http_sse_redis_publish_t>();
        call->rw = rw;
        call->remove = remove;
        call->start_us = ngx_http_sse_redis_now_us();
        rw->calls.push_back(call.get());
        p = call.release();
    }
    p->items.push_back(std::move(item));
    p->events += events;
    p->bytes += bytes;
    if (!rw->flush_ev.posted) {
        ngx_post_event(&rw->flush_ev, &ngx_posted_events);
    }
    return p->items.back().get();
}

void *ngx_http_sse_redis_delete(ngx_http_sse_zone_worker_t *zw,
                                std::string_view channel,
                                ngx_http_sse_redis_done_pt done, void *cbdata,
                                std::string *err) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(zw->redis);
    auto item = std::make_unique<ngx_http_sse_redis_item_t>();
    item->done = done;
    item->data = cbdata;
    item->channel.assign(channel);
    return ngx_http_sse_redis_queue(rw, std::move(item), true, err);
}

void *ngx_http_sse_redis_publish(ngx_http_sse_zone_worker_t *zw,
                                 std::string_view channel,
                                 const ngx_http_sse_event_list &events,
                                 uint32_t buffer_length, ngx_msec_t ttl,
                                 ngx_http_sse_redis_done_pt done, void *cbdata,
                                 std::string *err) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(zw->redis);
    auto item = std::make_unique<ngx_http_sse_redis_item_t>();
    item->done = done;
    item->data = cbdata;
    item->channel.assign(channel);
    item->bodies.reserve(events.size());
    for (auto &[event, data] : events) {
        item->bodies.emplace_back(sse::encoded_body_size(event, data), '\0');
        sse::encode_body(&item->bodies.back()[0], event, data);
    }
    item->buffer_length = std::max<uint32_t>(buffer_length, 1);
    item->ttl_ms = ttl ? ttl : 1;
    item->maxlen = std::to_string(item->buffer_length);
    item->ttl = std::to_string(item->ttl_ms);
    return ngx_http_sse_redis_queue(rw, std::move(item), false, err);
}

static void ngx_http_sse_redis_forget_requests(
    ngx_http_sse_redis_worker_t *rw) {
    for (ngx_http_sse_redis_conn_t *rc : {&rw->cmd, &rw->ask}) {
        for (auto &cmd : rc->pending) {
            if (cmd.handler == ngx_http_sse_redis_publish_reply) {
                for (auto &it :
                     static_cast<ngx_http_sse_redis_publish_t *>(cmd.data)
                         ->items) {
                    it->data = NULL;
                }
            }
        }
    }
    for (ngx_http_sse_redis_publish_t *p : rw->waiting) {
        if (p->retry.timer_set) {
            ngx_del_timer(&p->retry);
        }
        delete p;
    }
    rw->waiting.clear();
    for (ngx_http_sse_redis_publish_t *p : rw->calls) {
        delete p;
    }
    rw->calls.clear();
    if (rw->flush_ev.posted) {
        ngx_delete_posted_event(&rw->flush_ev);
    }
}

void ngx_http_sse_redis_cancel(void *handle) {
    static_cast<ngx_http_sse_redis_item_t *>(handle)->data = NULL;
}

bool ngx_http_sse_redis_ready(ngx_http_sse_zone_t *z) {
    return z->redis == NULL || sse::store::peek_external(z->root) == 2;
}

// ------------------------------------------------------------- status

void ngx_http_sse_redis_figures(ngx_http_sse_zone_t *z,
                                ngx_http_sse_redis_figures_t *f) {
    f->redis = z->redis != NULL;
    if (!f->redis) {
        return;
    }
    const sse::external_stats &x = sse::store::ext(z->root);
    uint32_t st = __atomic_load_n(&x.state, __ATOMIC_RELAXED);
    f->state = ngx_http_sse_redis_state_text[st < 4 ? st : 0];
    f->url = ngx_http_sse_redis_str(z->redis->url);
    // Never the password.
    size_t at = f->url.rfind('@');
    size_t scheme = f->url.find("://");
    if (at != std::string::npos && scheme != std::string::npos && scheme < at) {
        f->url = f->url.substr(0, scheme + 3) + "***" + f->url.substr(at);
    }
    char buf[sizeof(x.last_error)];
    ngx_memcpy(buf, x.last_error, sizeof(buf));
    buf[sizeof(buf) - 1] = '\0';
    f->last_error = buf;
    f->bus_pid = sse::store::peek_bus_pid(z->root);
    f->reconnects = __atomic_load_n(&x.reconnects, __ATOMIC_RELAXED);
    f->publishes = __atomic_load_n(&x.publishes, __ATOMIC_RELAXED);
    f->publish_errors = __atomic_load_n(&x.publish_errors, __ATOMIC_RELAXED);
    uint64_t total = __atomic_load_n(&x.rtt_us_total, __ATOMIC_RELAXED);
    f->rtt_avg_us = f->publishes ? total / f->publishes : 0;
    f->rtt_last_us = __atomic_load_n(&x.rtt_us_last, __ATOMIC_RELAXED);
    f->sentinels = z->redis->sentinels ? z->redis->sentinels->nelts : 0;
    f->sentinels_answered =
        __atomic_load_n(&x.sentinels_answered, __ATOMIC_RELAXED);
    uint64_t confirmed =
        __atomic_load_n(&x.sentinel_confirmed_ms, __ATOMIC_RELAXED);
    // Another process may have stored a time a little ahead of ours.
    uint64_t now = ngx_current_msec;
    f->sentinel_confirmed_ago_ms = confirmed == 0 ? -1
                                   : confirmed > now
                                       ? 0
                                       : (int64_t)(now - confirmed);
}

// ------------------------------------------------------------- counts

// The commands of ngx_http_sse_redis_count.cpp, on the command connection.
struct ngx_http_sse_redis_command_t {
    ngx_http_sse_redis_reply_fn handler;
    void *data;
};

static void ngx_http_sse_redis_command_reply(ngx_http_sse_redis_conn_t *rc,
                                             void *data, redisReply *r,
                                             const char *err) {
    std::unique_ptr<ngx_http_sse_redis_command_t> c(
        static_cast<ngx_http_sse_redis_command_t *>(data));
    c->handler(c->data, r, err);
}

bool ngx_http_sse_redis_command(ngx_http_sse_zone_worker_t *zw,
                                const std::vector<std::string_view> &args,
                                ngx_http_sse_redis_reply_fn handler,
                                void *data) {
    auto *rw = static_cast<ngx_http_sse_redis_worker_t *>(zw->redis);
    if (rw == NULL ||
        ((ngx_msec_int_t)(rw->cmd_down_until - ngx_current_msec) > 0 &&
         !rw->cmd.connected)) {
        return false;
    }
    // Owned by the command once sent (out of memory: lost, never freed
    // twice).
    auto *c = new ngx_http_sse_redis_command_t{handler, data};
    ngx_http_sse_redis_send(&rw->cmd, args, ngx_http_sse_redis_command_reply,
                            c);
    return true;
}

const std::string &ngx_http_sse_redis_prefix(ngx_http_sse_zone_t *z) {
    return *z->redis->prefix;
}
