// Shared declarations of the nginx glue. Includes nginx in extern "C";
// src/ (the engine) never includes this file.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
}

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <type_traits>

#include "event.hpp"
#include "store.hpp"

extern "C" ngx_module_t ngx_http_sse_module;

#define NGX_HTTP_SSE_OFF ((ngx_msec_t)-2)
// Room for "retry: MS\n\n" at its longest (any ngx_msec_t).
#define NGX_HTTP_SSE_RETRY_LINE_LEN sizeof("retry: 18446744073709551615\n\n")

enum ngx_http_sse_role_e {
    NGX_HTTP_SSE_NONE = 0,
    NGX_HTTP_SSE_SUBSCRIBE,
    NGX_HTTP_SSE_PUBLISH,
    NGX_HTTP_SSE_STATUS,
};

struct ngx_http_sse_redis_conf_t;

// Per sse_zone, in the cycle pool.
struct ngx_http_sse_zone_t {
    ngx_shm_zone_t *shm_zone;
    ngx_slab_pool_t *shpool;  // its mutex
    sse::arena *arena;        // everything of the store (see arena.hpp)
    sse::zone_root *root;
    ngx_uint_t index;                  // in main conf's zones
    ngx_http_sse_redis_conf_t *redis;  // NULL: the shared-memory engine
    ngx_msec_t redis_machine_ttl;      // redis_machine_ttl=; 0: the default
};

struct ngx_http_sse_main_conf_t {
    ngx_array_t zones;  // of ngx_http_sse_zone_t *
    ngx_uint_t default_zone_needed;
    ngx_array_t zone_uses;  // "zone=NAME"s, checked once all are declared
    ngx_flag_t io_uring;    // sse_io_uring
};

struct ngx_http_sse_loc_conf_t {
    ngx_uint_t role;
    // Where the role was set, for errors found at merge.
    ngx_str_t role_file;
    ngx_uint_t role_line;
    ngx_shm_zone_t *shm_zone;  // nullptr: the only sse_zone
    // sse_channel: its values (complex values) and options (split=, unescape)
    ngx_array_t *channels;
    sse::channel_rule channel_rule;
    ngx_http_complex_value_t *last_event_id;
    ngx_http_complex_value_t *allow_origin;
    ngx_flag_t allow_credentials;
    ngx_uint_t buffer_length;
    ngx_msec_t message_ttl;
    ngx_msec_t heartbeat;       // NGX_HTTP_SSE_OFF or ms
    ngx_msec_t retry;           // NGX_HTTP_SSE_OFF or ms
    ngx_msec_t stream_timeout;  // NGX_HTTP_SSE_OFF or ms
    ngx_msec_t publish_wait;    // NGX_HTTP_SSE_OFF or ms
    ngx_uint_t initial_events;
    size_t max_message_size;
    size_t max_pending;
    ngx_uint_t max_subscribers;
    // sse_auth_jwt* (ngx_http_sse_auth.cpp)
    ngx_int_t auth_jwt;  // NGX_CONF_UNSET, 0 off, 1 on
    ngx_str_t auth_jwt_realm;
    ngx_http_complex_value_t *auth_jwt_token;  // NULL: Authorization only
    void *auth_jwt_keys;  // sse::jwt::key_set, freed with the cycle
    time_t auth_jwt_leeway;
    ngx_str_t auth_jwt_aud;  // empty: not checked
    ngx_str_t auth_jwt_iss;
    ngx_str_t subscribe_request;  // URI; empty: off
    // ngx_http_sse_presence.cpp
    ngx_str_t unsubscribe_request;               // URI; empty: off
    ngx_http_complex_value_t *presence_channel;  // NULL: off
    // sse_free_request: a plain HTTP/1.1 stream drops its request once set
    // up (ngx_http_sse_subscriber.cpp)
    ngx_flag_t free_request;
};

// The only way to the zone's store: holds its lock for the session's life;
// hold it briefly (`auto s = ngx_http_sse_session(z); s->publish(...)`).
sse::session ngx_http_sse_session(ngx_http_sse_zone_t *z);

ngx_http_sse_zone_t *ngx_http_sse_loc_zone(ngx_http_request_t *r,
                                           ngx_http_sse_loc_conf_t *lcf);

char *ngx_http_sse_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
                                  void *conf);
// Resolves "zone=NAME" (a zone declared before or after the reference).
ngx_shm_zone_t *ngx_http_sse_zone_ref(ngx_conf_t *cf, ngx_str_t *name);

struct ngx_http_sse_zone_worker_t;

// Room before a worker copy's bytes for an HTTP/1.1 chunk-size line.
#define NGX_HTTP_SSE_CHUNK_ROOM (sizeof("ffffffff\r\n") - 1)

// A worker's own copy of one event ("id:" line included), shared by all its
// subscribers, live and catching up alike: one copy per worker, none per
// subscriber. Followed by NGX_HTTP_SSE_CHUNK_ROOM bytes, then the `len`
// bytes framed as one chunk (its size line right before them, CRLF after):
// chunked streams write the frame, others the bytes.
struct ngx_http_sse_msg_t {
    uint32_t refs;
    uint32_t len;
    uint64_t seq;                       // 0: bytes of the module's own
    ngx_http_sse_zone_worker_t *cache;  // where it is listed by seq
    uint32_t hlen;                      // of the chunk-size line
    u_char *data() {
        return reinterpret_cast<u_char *>(this + 1) + NGX_HTTP_SSE_CHUNK_ROOM;
    }
    u_char *frame() { return data() - hlen; }
    size_t frame_len() { return hlen + len + 2; }
};

// One queued write of a subscriber.
struct ngx_http_sse_out_t {
    ngx_buf_t buf;
    ngx_chain_t cl;
    ngx_http_sse_msg_t *msg;  // nullptr: static bytes
    ngx_http_sse_out_t *next;
};

struct ngx_http_sse_subscriber_t;

// A channel that has subscribers in this worker.
struct ngx_http_sse_local_channel_t {
    sse::channel *shm;  // kept alive by this worker's membership
    ngx_queue_t subs;   // of ngx_http_sse_link_t
    ngx_uint_t nsubs;
    uint64_t mark;  // the deliver round that last saw it
};

struct ngx_http_sse_link_t {
    ngx_queue_t queue;
    ngx_http_sse_subscriber_t *sub;
    ngx_http_sse_local_channel_t *lc;
};

enum ngx_http_sse_end_e {
    NGX_HTTP_SSE_END_NONE = 0,
    NGX_HTTP_SSE_END_RETRY,  // sse-error, "retry:" and a clean end of stream
    NGX_HTTP_SSE_END_CLOSE,  // drop the connection (slow or broken)
};

// Why the server ends or refuses a stream: the sse-error event's reason.
enum ngx_http_sse_reason_e {
    NGX_HTTP_SSE_R_NONE = 0,
    NGX_HTTP_SSE_R_MAX_SUBSCRIBERS,
    NGX_HTTP_SSE_R_STREAM_TIMEOUT,
    NGX_HTTP_SSE_R_SHUTDOWN,
    NGX_HTTP_SSE_R_ZONE_FULL,
    NGX_HTTP_SSE_R_DELETED,
    NGX_HTTP_SSE_R_EVICTED,
    NGX_HTTP_SSE_R_TOKEN_EXPIRED,
    NGX_HTTP_SSE_R_UNAVAILABLE,
    NGX_HTTP_SSE_R_CATCH_UP,
};

// Why a stream was dropped (NGX_HTTP_SSE_END_CLOSE), for the log line of
// a request-free stream.
enum ngx_http_sse_drop_e {
    NGX_HTTP_SSE_DROP_ERROR = 0,
    NGX_HTTP_SSE_DROP_CLIENT_CLOSED,
    NGX_HTTP_SSE_DROP_MAX_PENDING,
    NGX_HTTP_SSE_DROP_SEND_TIMEOUT,
};

// Per subscriber request: in r->pool, released by its pool cleanup; or,
// where sse_free_request may apply (`owned`), malloc'd, so that it
// outlives the request: a request-free stream (r NULL) keeps only its
// connection and this record, freed when the connection closes.
struct ngx_http_sse_subscriber_t {
    ngx_http_request_t *r;  // NULL once the request is freed
    ngx_connection_t *c;
    ngx_http_core_loc_conf_t *clcf;  // send_timeout, send_lowat
    ngx_http_sse_loc_conf_t *lcf;
    ngx_http_sse_zone_worker_t *zw;
    uint64_t last_seq;  // newest seq queued: later events only
    ngx_http_sse_link_t *links;
    sse::channel **chans;  // joined in the zone: nlinks of them
    ngx_uint_t nlinks;
    ngx_http_sse_out_t *out_head;  // queued, oldest first
    ngx_http_sse_out_t *out_tail;
    ngx_http_sse_out_t *unsent;  // first one not given to the filters yet
    size_t pending;              // bytes queued and not fully sent
    size_t catchup;  // of those, the catch-up's: bounded by sse_max_pending,
                     // and allowed on top of it
    ngx_msec_t last_write;
    ngx_msec_t start;    // when the stream was set up
    int64_t expires_ms;  // the token's exp + leeway, Unix ms; 0: none
    ngx_event_t heartbeat;
    ngx_event_t timeout;
    ngx_event_t expiry;  // the token's exp
    // Posted to end the stream; posted with `end` NONE, it frees the
    // request of a stream that may go request-free.
    ngx_event_t end_ev;
    ngx_event_t catchup_ev;
    ngx_queue_t all;    // in the zone worker's subscribers
    ngx_queue_t dirty;  // in the worker's queue of those with unsent events
    unsigned queued : 1;
    unsigned attached : 1;
    unsigned joined : 1;
    unsigned live : 1;  // past its catch-up: takes live events
    unsigned end : 2;
    unsigned reason : 4;
    unsigned hooked : 1;  // sse_unsubscribe_request sent
    // Chunked and no body filter at work: writes pre-framed chunks straight
    // to the write filter.
    unsigned framed : 1;
    unsigned owned : 1;      // malloc'd: sse_free_request may apply
    unsigned freeable : 1;   // may still go request-free
    unsigned closing : 1;    // request-free, ended: flushing its last bytes
    unsigned drop : 2;       // ngx_http_sse_drop_e
    ngx_str_t presence;      // sse_presence_channel's value; empty: none
    const std::string *who;  // the token's sub (freed after the pool
                             // cleanup that ends the subscriber), or NULL;
                             // a request-free stream owns copies of both
};

static_assert(std::is_trivially_destructible_v<ngx_http_sse_subscriber_t>);
// sse::reader_overhead stands for a queue entry in the pending counts.
static_assert(sizeof(ngx_http_sse_out_t) <= sse::reader_overhead);

// A worker's view of one zone.
struct ngx_http_sse_zone_worker_t {
    ngx_http_sse_zone_t *zone;
    uint32_t slot;  // sse::no_slot: the zone had none left for us
    uint64_t epoch;
    uint64_t control_gen;
    uint64_t round;
    ngx_event_t wake;
    ngx_queue_t subs;
    std::unordered_map<sse::channel *, ngx_http_sse_local_channel_t *> channels;
    // This worker's copies of events, by seq, while anyone holds them.
    std::unordered_map<uint64_t, ngx_http_sse_msg_t *> copies;
    struct batch_item {
        ngx_http_sse_local_channel_t *lc;
        const sse::message *m;
        ngx_http_sse_msg_t *msg;
    };
    std::vector<batch_item> batch;
    std::vector<sse::channel *> touched;
    std::vector<const sse::message *> owed;
    uint64_t answering;  // publishes' answers held (sse_publish_wait)
    void *redis;         // the Redis engine's state in this worker, or NULL
    void *count;         // ngx_http_sse_redis_count.cpp's, or NULL
};

ngx_int_t ngx_http_sse_worker_init(ngx_cycle_t *cycle);
// True when the response's body reaches the write filter exactly as the
// chunked filter would frame it: chunked, and none of the body filters that
// rewrite a stream (gzip, sub_filter, ssi, charset recoding, ...) took it.
bool ngx_http_sse_can_frame(ngx_http_request_t *r);
void ngx_http_sse_worker_exit(ngx_cycle_t *cycle);
// sse_publish_wait: false when every process of `others` has read the
// zone up to `seq` (or is gone); else done(r) runs once they have, or
// after `wait` ms, whichever comes first (the request must stay until
// then, or until its pool goes).
bool ngx_http_sse_answer_later(ngx_http_sse_zone_t *z, uint64_t seq,
                               const sse::slot_set &others, ngx_msec_t wait,
                               ngx_http_request_t *r,
                               void (*done)(ngx_http_request_t *r));
ngx_http_sse_zone_worker_t *ngx_http_sse_zone_worker(ngx_http_sse_zone_t *z);
// Wakes the processes of `slots` (this one through a posted event) to
// deliver what was just published into zone z, whatever their generation.
void ngx_http_sse_notify(ngx_http_sse_zone_t *z, const sse::slot_set &slots);
// Runs the delivery a publish just posted in this process now, and writes
// at once when few subscribers are concerned: publisher requests call it
// before they answer (never inside a catch-up, whose hold it would end).
void ngx_http_sse_deliver_now(ngx_http_sse_zone_t *z);
// Adds n to this worker's figure in the zone (no lock needed).
void ngx_http_sse_count(ngx_http_sse_zone_worker_t *zw,
                        uint64_t sse::slot_stats::*field, uint64_t n);

// A worker-local buffer of `bytes`, one reference held; NULL when out of
// memory.
ngx_http_sse_msg_t *ngx_http_sse_msg_new(std::string_view bytes);
// This worker's copy of a stored event (made now if it has none), one
// reference held; NULL when out of memory. Call between sessions, with the
// slot's hold covering m.
ngx_http_sse_msg_t *ngx_http_sse_msg_copy(ngx_http_sse_zone_worker_t *zw,
                                          const sse::message *m);
void ngx_http_sse_msg_unref(ngx_http_sse_msg_t *msg);
ngx_http_sse_out_t *ngx_http_sse_out_get();
void ngx_http_sse_out_put(ngx_http_sse_out_t *o);

// Subscriber side (ngx_http_sse_subscriber.cpp).
ngx_int_t ngx_http_sse_enqueue(ngx_http_sse_subscriber_t *sub,
                               ngx_http_sse_msg_t *msg);
// Hands queued events to the output filters in one write, then checks
// what the subscriber owes; may end it (posted, never synchronously).
void ngx_http_sse_send(ngx_http_sse_subscriber_t *sub);
// Subscribers written to per event-loop turn before publishes, accepts and
// reads get their turn (and the most one io_uring batch holds).
#define NGX_HTTP_SSE_SLICE 256
// sse_io_uring: the worker's ring for batched stream writes, set up in
// init_process (off when the kernel refuses it) and closed at exit.
void ngx_http_sse_batch_init(ngx_cycle_t *cycle, bool on);
void ngx_http_sse_batch_exit();
// Queues sub's write into the batch when it can go there (a request-free
// plain-TCP stream the socket takes now); false: ngx_http_sse_send() it.
bool ngx_http_sse_batch_add(ngx_http_sse_subscriber_t *sub);
// Sends the batch with one system call and finishes each write as
// ngx_http_sse_send() would.
void ngx_http_sse_batch_submit();
// Schedules ngx_http_sse_send(): the worker writes to its dirty
// subscribers in slices between event-loop turns, so publishes are served
// meanwhile and events that arrive before a subscriber's turn share its
// one write.
void ngx_http_sse_mark_dirty(ngx_http_sse_subscriber_t *sub);
void ngx_http_sse_unmark_dirty(ngx_http_sse_subscriber_t *sub);
// Stops deliveries now and ends the stream from a posted event, so callers
// iterating subscribers are never disturbed. `reason` goes into the
// sse-error event of a RETRY end.
void ngx_http_sse_end(ngx_http_sse_subscriber_t *sub, ngx_uint_t how,
                      ngx_uint_t reason);
// Adds the subscriber to this worker's local channels; throws bad_alloc
// (the pool cleanup then undoes everything).
void ngx_http_sse_attach(ngx_http_sse_subscriber_t *sub);
// Undoes attach, and leaves the zone's channels if joined.
void ngx_http_sse_detach(ngx_http_sse_subscriber_t *sub);
const char *ngx_http_sse_reason_text(ngx_uint_t reason);

ngx_int_t ngx_http_sse_subscribe_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_sse_publish_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_sse_status_handler(ngx_http_request_t *r);

// Helpers shared by the handlers (ngx_http_sse_http.cpp). Each sends a
// whole response and returns what the handler should return.
ngx_int_t ngx_http_sse_send_text(ngx_http_request_t *r, ngx_uint_t status,
                                 const char *type, std::string_view body);
// status + a one-line reason as text/plain.
ngx_int_t ngx_http_sse_error(ngx_http_request_t *r, ngx_uint_t status,
                             std::string_view reason);
ngx_int_t ngx_http_sse_not_allowed(ngx_http_request_t *r, const char *allow,
                                   std::string_view reason);
// OPTIONS: 204 with Allow, and a CORS preflight answer where
// sse_allow_origin is set.
ngx_int_t ngx_http_sse_options(ngx_http_request_t *r, const char *allow,
                               const char *allow_headers);
// Adds Access-Control-Allow-Origin (and -Credentials) where configured.
ngx_int_t ngx_http_sse_cors(ngx_http_request_t *r);
ngx_int_t ngx_http_sse_add_header(ngx_http_request_t *r, const char *key,
                                  const char *value);
// Evaluates sse_channel into validated ids (pointing into r->pool). False
// when it has answered instead (400 for a bad value): the handler then
// returns *answer.
bool ngx_http_sse_channels(ngx_http_request_t *r, ngx_http_sse_loc_conf_t *lcf,
                           std::vector<std::string_view> &ids,
                           ngx_int_t *answer);
ngx_int_t ngx_http_sse_header(ngx_http_request_t *r, std::string_view name,
                              ngx_str_t *value);
void ngx_http_sse_json_string(std::string &out, std::string_view s);
// Decodes %XX escapes into a copy in r->pool (query arguments arrive
// escaped); leaves v alone when it has none.
ngx_int_t ngx_http_sse_unescape(ngx_http_request_t *r, ngx_str_t *v);

// The Redis engine (ngx_http_sse_redis.cpp).
// sse_zone's redis=, redis_timeout=, redis_ca=, redis_sentinel_auth=,
// redis_cert= and redis_key= (all but the URL may be NULL).
char *ngx_http_sse_redis_parse(ngx_conf_t *cf, ngx_http_sse_zone_t *z,
                               ngx_str_t *url, ngx_str_t *timeout,
                               ngx_str_t *ca, ngx_str_t *sentinel_auth,
                               ngx_str_t *cert, ngx_str_t *key);
void ngx_http_sse_redis_worker_init(ngx_http_sse_zone_worker_t *zw);
void ngx_http_sse_redis_worker_exit(ngx_http_sse_zone_worker_t *zw);
// From the worker's poll: takes the machine's Redis bus when free.
void ngx_http_sse_redis_poll(ngx_http_sse_zone_worker_t *zw);
// False while a Redis zone has not yet taken Redis's epoch and history:
// subscribers are refused (sse-error unavailable) until then.
bool ngx_http_sse_redis_ready(ngx_http_sse_zone_t *z);
// A publish's outcome: stored in Redis with (epoch, seq), or why not;
// others: the channel's subscribers on the other live machines (Redis's
// figure, NGX_HTTP_SSE_REDIS_COUNT_LUA), -1 when not known.
using ngx_http_sse_redis_done_pt = void (*)(void *data, bool ok, uint64_t epoch,
                                            uint64_t seq, int64_t others,
                                            std::string_view err);
// Sends events for one channel to Redis at the end of this turn of the
// event loop, in one script call with whatever else the worker publishes
// in the zone meanwhile (a group commit, up to the figures below; events
// given together always share a call): consecutive seqs, all stored or
// none. done(data, ...) runs later, once, unless cancelled, with the seq
// of the last event and the channel's subscribers on the other machines
// (summed only when done is given). NULL (and *err) when Redis is known
// to be unreachable.
void *ngx_http_sse_redis_publish(
    ngx_http_sse_zone_worker_t *zw, std::string_view channel,
    // (event name, data): ngx_http_sse_event_list
    const std::vector<std::pair<std::string_view, std::string_view>> &events,
    uint32_t buffer_length, ngx_msec_t ttl, ngx_http_sse_redis_done_pt done,
    void *cbdata, std::string *err);
// A call's bounds: Redis runs a script alone, so one call holds it up for
// about 5 us per event (64: a third of a millisecond), and by then the
// cost of the call itself (~15 us) is shared out; a megabyte of bodies
// keeps Redis's query buffer and the Lua strings small. A single larger
// publish goes alone.
#define NGX_HTTP_SSE_REDIS_GROUP_EVENTS 64
#define NGX_HTTP_SSE_REDIS_GROUP_BYTES (1024 * 1024)
// Deletes the channel in Redis and, through the bus, on every machine;
// done() as for a publish, with seq 0 when Redis held no such channel.
void *ngx_http_sse_redis_delete(ngx_http_sse_zone_worker_t *zw,
                                std::string_view channel,
                                ngx_http_sse_redis_done_pt done, void *cbdata,
                                std::string *err);
// After channels were removed: frees their events in bounded steps, then
// has every process end their streams (ngx_http_sse_publisher.cpp).
void ngx_http_sse_release_deleted(ngx_http_sse_zone_t *z);
// The request that waited went away: done() will not be called.
void ngx_http_sse_redis_cancel(void *handle);
struct ngx_http_sse_redis_figures_t {
    bool redis;
    std::string url;  // without the password
    std::string state;
    std::string last_error;
    int32_t bus_pid;  // the worker that holds the bus
    uint64_t reconnects;
    uint64_t publishes;
    uint64_t publish_errors;
    uint64_t rtt_avg_us;
    uint64_t rtt_last_us;
    // Redis Sentinel (sentinels 0: none): how many answered the last
    // check; ms since one last named the primary in use (-1: never).
    uint32_t sentinels;
    uint32_t sentinels_answered;
    int64_t sentinel_confirmed_ago_ms;
};
void ngx_http_sse_redis_figures(ngx_http_sse_zone_t *z,
                                ngx_http_sse_redis_figures_t *f);
// Runs a delivery now if the zone's epoch changed under this worker, so
// that what it copies carries the new one.
void ngx_http_sse_follow_epoch(ngx_http_sse_zone_worker_t *zw);

// Signed-token authorization (ngx_http_sse_auth.cpp).
void ngx_http_sse_auth_create_conf(ngx_http_sse_loc_conf_t *lcf);
char *ngx_http_sse_auth_merge_conf(ngx_conf_t *cf,
                                   ngx_http_sse_loc_conf_t *prev,
                                   ngx_http_sse_loc_conf_t *conf);
char *ngx_http_sse_auth_jwt(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_sse_auth_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
                                 void *conf);
// Registers the access-phase check and the $sse_jwt_*, $sse_channels
// variables.
ngx_int_t ngx_http_sse_auth_init(ngx_conf_t *cf);
// When the request's token expires (exp plus the leeway), in Unix ms; 0
// when it carried no token with "exp".
int64_t ngx_http_sse_auth_expires_at(ngx_http_request_t *r) noexcept;
// The token's "sub" of the request, NULL without one.
const std::string *ngx_http_sse_auth_sub(ngx_http_request_t *r) noexcept;

// (event name, data) pairs, viewing memory that outlives the publish.
using ngx_http_sse_event_list =
    std::vector<std::pair<std::string_view, std::string_view>>;

struct ngx_http_sse_stored_t {
    bool found;  // the channel was there (or made): the figures are set
    uint32_t subscribers;
    uint64_t epoch;
    uint64_t last_seq;
    uint64_t published;
    sse::slot_set others;  // the other processes with its subscribers
};

// The shared-memory publish of events to one channel, in order: allocated
// in one session, written outside the lock, committed in a second; then
// the processes concerned are woken once. The one way events enter the
// zone from this machine (publisher requests and the module's own).
sse::publish_status ngx_http_sse_store_local(
    ngx_http_sse_zone_t *z, std::string_view channel,
    const ngx_http_sse_event_list &events, ngx_uint_t buffer_length,
    ngx_msec_t ttl, ngx_http_sse_stored_t *out);

// Leave hook and presence (ngx_http_sse_presence.cpp).
// Publishes one event from inside the module (no request): the two-phase
// publish of the publisher, then the wake-ups. False when not stored.
bool ngx_http_sse_publish_internal(ngx_http_sse_zone_t *z,
                                   std::string_view channel,
                                   std::string_view event,
                                   std::string_view data,
                                   ngx_uint_t buffer_length, ngx_msec_t ttl);
// Evaluates sse_presence_channel into sub->presence. False when it has
// answered instead (400 for a bad value): the handler returns *answer.
bool ngx_http_sse_presence_prepare(ngx_http_request_t *r,
                                   ngx_http_sse_subscriber_t *sub,
                                   ngx_int_t *answer);
// Publishes "join" for each channel just joined.
void ngx_http_sse_presence_joined(ngx_http_sse_subscriber_t *sub);
// Leaves the zone's channels, publishing "leave" where presence is on.
void ngx_http_sse_presence_leave(ngx_http_sse_subscriber_t *sub,
                                 ngx_http_sse_zone_worker_t *zw);
// Clears a process slot, and publishes "leave" (sub null) for the channels
// that lost subscribers and had a presence channel. With `cleared`, only
// if the slot's process is gone (checked under the lock): the reaper.
void ngx_http_sse_presence_clear_slot(ngx_http_sse_zone_t *z, uint32_t slot,
                                      bool *cleared);
// The worker can publish (true, at the end of its init: what was reaped
// meanwhile is published now) or no longer can (false, at exit).
void ngx_http_sse_presence_worker_ready(bool ready);
// Sends sse_unsubscribe_request (a background subrequest) once; true if
// sent: the request then must end with ngx_http_sse_close_after_hook() or
// a normal NGX_OK finalization, never a termination, which would cut it.
bool ngx_http_sse_unsubscribe_hook(ngx_http_sse_subscriber_t *sub);
void ngx_http_sse_close_after_hook(ngx_http_request_t *r);
// $sse_leave_reason: why the subscriber left, inside the leave hook.
const char *ngx_http_sse_leave_reason(ngx_http_request_t *r);
// sse_subscribe_request / sse_unsubscribe_request: a URI or "off" into
// the ngx_str_t at cmd->offset.
char *ngx_http_sse_hook_uri(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_sse_presence_channel(ngx_conf_t *cf, ngx_command_t *cmd,
                                    void *conf);

// Subscriber counts across the machines of a Redis zone
// (ngx_http_sse_redis_count.cpp).
//
// The Lua snippet every script that answers with a count runs. Inputs,
// Lua locals set before it, both keys named in the script's KEYS (a
// Cluster then moves or retries the script whole): ck, the channel's
// count key ("{sse:NAME}:subs:ID", a hash: machine id -> its
// subscribers); ak, the machines' liveness hash ("{sse:NAME}:alive":
// machine id -> until when it counts, ms of Redis's clock); and me, this
// machine's id, whose own count the caller adds from its zone (exact).
// Output: the local subs, the channel's subscribers on the other live
// machines. Fields of machines whose time ran out are dropped. Their
// times are read a thousand at a time: Lua's unpack takes up to 8000.
#define NGX_HTTP_SSE_REDIS_COUNT_LUA                          \
    "local subs = 0\n"                                        \
    "do\n"                                                    \
    "  local h = redis.call('HGETALL', ck)\n"                 \
    "  if #h > 0 then\n"                                      \
    "    local at, ids = {}, {}\n"                            \
    "    for j = 1, #h, 2 do\n"                               \
    "      if h[j] ~= me then\n"                              \
    "        at[#at + 1] = j\n"                               \
    "        ids[#ids + 1] = h[j]\n"                          \
    "      end\n"                                             \
    "    end\n"                                               \
    "    if #ids > 0 then\n"                                  \
    "      local t = redis.call('TIME')\n"                    \
    "      local now = tonumber(t[1]) * 1000 + "              \
    "math.floor(tonumber(t[2]) / 1000)\n"                     \
    "      local a = {}\n"                                    \
    "      for c = 1, #ids, 1000 do\n"                        \
    "        local r = redis.call('HMGET', ak, "              \
    "unpack(ids, c, math.min(c + 999, #ids)))\n"              \
    "        for j = 1, #r do a[c + j - 1] = r[j] end\n"      \
    "      end\n"                                             \
    "      for j = 1, #ids do\n"                              \
    "        if (tonumber(a[j]) or 0) > now then\n"           \
    "          subs = subs + (tonumber(h[at[j] + 1]) or 0)\n" \
    "        else\n"                                          \
    "          redis.call('HDEL', ck, ids[j])\n"              \
    "        end\n"                                           \
    "      end\n"                                             \
    "    end\n"                                               \
    "  end\n"                                                 \
    "end\n"
struct redisReply;
// Sends one command on the worker's command connection of zone zw
// (pipelined with publishes): handler(data, reply or NULL, err) runs
// later, once (also when the worker exits). False, nothing sent, while
// Redis is known to be unreachable.
using ngx_http_sse_redis_reply_fn = void (*)(void *data, redisReply *r,
                                             const char *err);
bool ngx_http_sse_redis_command(ngx_http_sse_zone_worker_t *zw,
                                const std::vector<std::string_view> &args,
                                ngx_http_sse_redis_reply_fn handler,
                                void *data);
// "{sse:NAME}": the hash tag of every key of the zone.
const std::string &ngx_http_sse_redis_prefix(ngx_http_sse_zone_t *z);
// sse_zone's redis_machine_ttl=TIME.
char *ngx_http_sse_redis_count_parse(ngx_conf_t *cf, ngx_http_sse_zone_t *z,
                                     ngx_str_t *ttl);
void ngx_http_sse_redis_count_init(ngx_http_sse_zone_worker_t *zw);
// From the module's init_module (the master, each start and reload).
void ngx_http_sse_redis_count_init_module(ngx_cycle_t *cycle);
// From the worker's poll: the machine's pusher pushes what changed.
void ngx_http_sse_redis_count_poll(ngx_http_sse_zone_worker_t *zw);
// True when it sent the machine's removal (a clean stop).
bool ngx_http_sse_redis_count_exit(ngx_http_sse_zone_worker_t *zw);
// This machine's id ("" while the zone holds none yet).
const std::string &ngx_http_sse_redis_count_me(ngx_http_sse_zone_worker_t *zw);
// Notes, inside a session, that channels' subscribers on this machine
// changed (joins, leaves, a slot cleared), for the next push. Nothing for
// a shared-memory zone.
void ngx_http_sse_redis_count_touch(ngx_http_sse_zone_t *z, sse::store &s,
                                    std::string_view id);
void ngx_http_sse_redis_count_touch_all(ngx_http_sse_zone_t *z, sse::store &s,
                                        sse::channel *const *chans, size_t n);
void ngx_http_sse_redis_count_touch_slot(ngx_http_sse_zone_t *z, sse::store &s,
                                         uint32_t slot);
// Notes, inside a session, that Redis lost this machine's count of the
// channel (a DELETE removes every machine's): pushed again at the next
// push, even when the count looks unchanged by then.
void ngx_http_sse_redis_count_forget(ngx_http_sse_zone_t *z, sse::store &s,
                                     std::string_view id);
// run false: the worker exits, nothing is to be done but freeing data.
// others: as for ngx_http_sse_redis_done_pt.
using ngx_http_sse_count_done_pt = void (*)(void *data, bool run,
                                            int64_t others);
// Asks Redis for the channel's subscribers on the other live machines;
// done() runs later, once, unless cancelled. NULL (nothing asked) when
// Redis is known to be unreachable or the zone is not a Redis one.
void *ngx_http_sse_redis_count_read(ngx_http_sse_zone_t *z,
                                    std::string_view channel,
                                    ngx_http_sse_count_done_pt done,
                                    void *data);
void ngx_http_sse_redis_count_cancel(void *handle);
// GET's channel info in a Redis zone: json_pre + the count + json_post,
// the count being local plus the other machines' (local alone when Redis
// cannot say); found false: 404 unless other machines have subscribers.
ngx_int_t ngx_http_sse_redis_count_info(ngx_http_request_t *r,
                                        ngx_http_sse_zone_t *z,
                                        std::string_view channel, bool found,
                                        uint32_t local, std::string json_pre,
                                        std::string json_post);
// The counts' figures of a Redis zone (on false: none yet, or not Redis).
struct ngx_http_sse_redis_count_figures_t {
    bool on;
    std::string machine;
    int32_t pusher_pid;
    int64_t last_push_ms_ago;  // -1: never pushed
    uint64_t pending;
    uint64_t pushes;
    uint64_t push_errors;
    uint64_t machine_ttl_ms;
};
void ngx_http_sse_redis_count_figures(ngx_http_sse_zone_t *z,
                                      ngx_http_sse_redis_count_figures_t *f);
// sse_status's "redis_counts" object of a Redis zone ("" for others).
std::string ngx_http_sse_redis_count_json(ngx_http_sse_zone_t *z);
