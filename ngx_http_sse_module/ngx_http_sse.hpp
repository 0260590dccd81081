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

// Per sse_zone, in the cycle pool.
struct ngx_http_sse_zone_t {
    ngx_shm_zone_t *shm_zone;
    ngx_slab_pool_t *shpool;
    sse::zone_root *root;
    ngx_uint_t index;  // in main conf's zones
};

struct ngx_http_sse_main_conf_t {
    ngx_array_t zones;  // of ngx_http_sse_zone_t *
    ngx_uint_t default_zone_needed;
    ngx_array_t zone_uses;  // "zone=NAME"s, checked once all are declared
    ngx_int_t *notify_fds;  // one eventfd per worker, made before fork
    ngx_uint_t nworkers;
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
    ngx_uint_t initial_events;
    size_t max_message_size;
    size_t max_pending;
    ngx_uint_t max_subscribers;
};

// The zone's lock guards every sse::store call; hold it briefly.
struct ngx_http_sse_locked {
    explicit ngx_http_sse_locked(ngx_http_sse_zone_t *z) : z_(z) {
        ngx_shmtx_lock(&z_->shpool->mutex);
    }
    ~ngx_http_sse_locked() { ngx_shmtx_unlock(&z_->shpool->mutex); }
    ngx_http_sse_locked(const ngx_http_sse_locked &) = delete;
    ngx_http_sse_locked &operator=(const ngx_http_sse_locked &) = delete;

private:
    ngx_http_sse_zone_t *z_;
};

sse::store ngx_http_sse_store(ngx_http_sse_zone_t *z);
ngx_http_sse_zone_t *ngx_http_sse_loc_zone(ngx_http_request_t *r,
                                           ngx_http_sse_loc_conf_t *lcf);

char *ngx_http_sse_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
                                  void *conf);
// Resolves "zone=NAME" (a zone declared before or after the reference).
ngx_shm_zone_t *ngx_http_sse_zone_ref(ngx_conf_t *cf, ngx_str_t *name);

// A worker's own copy of one event, shared by all its subscribers: one
// copy per worker, none per subscriber. Followed by `len` bytes.
struct ngx_http_sse_msg_t {
    uint32_t refs;
    uint32_t len;
    uint64_t seq;

    u_char *data() { return reinterpret_cast<u_char *>(this + 1); }
};

// One queued write of a subscriber.
struct ngx_http_sse_out_t {
    ngx_buf_t buf;
    ngx_chain_t cl;
    ngx_http_sse_msg_t *msg;  // nullptr: static bytes
    ngx_http_sse_out_t *next;
};

struct ngx_http_sse_subscriber_t;
struct ngx_http_sse_zone_worker_t;

// A channel that has subscribers in this worker.
struct ngx_http_sse_local_channel_t {
    sse::channel *shm;  // kept alive by the subscribers' counts
    ngx_queue_t subs;   // of ngx_http_sse_link_t
    ngx_uint_t nsubs;
};

struct ngx_http_sse_link_t {
    ngx_queue_t queue;
    ngx_http_sse_subscriber_t *sub;
    ngx_http_sse_local_channel_t *lc;
    sse::channel *shm;
};

enum ngx_http_sse_end_e {
    NGX_HTTP_SSE_END_NONE = 0,
    NGX_HTTP_SSE_END_RETRY,  // "retry:" and a clean end of stream
    NGX_HTTP_SSE_END_CLOSE,  // drop the connection (slow or broken)
};

// Per subscriber request, in r->pool; released by its pool cleanup.
struct ngx_http_sse_subscriber_t {
    ngx_http_request_t *r;
    ngx_http_sse_loc_conf_t *lcf;
    ngx_http_sse_zone_worker_t *zw;
    uint64_t last_seq;  // newest seq queued: later events only
    ngx_http_sse_link_t *links;
    ngx_uint_t nlinks;
    ngx_http_sse_out_t *out_head;  // queued, oldest first
    ngx_http_sse_out_t *out_tail;
    ngx_http_sse_out_t *unsent;  // first one not given to the filters yet
    size_t pending;              // bytes queued and not fully sent
    size_t catchup;  // of those, the catch-up's: bounded by the ring, and
                     // allowed on top of sse_max_pending
    ngx_msec_t last_write;
    ngx_event_t heartbeat;
    ngx_event_t timeout;
    ngx_event_t end_ev;
    ngx_queue_t all;    // in the zone worker's subscribers
    ngx_queue_t dirty;  // in the worker's queue of those with unsent events
    unsigned queued : 1;
    unsigned attached : 1;
    unsigned end : 2;
};

static_assert(std::is_trivially_destructible_v<ngx_http_sse_subscriber_t>);

// A worker's view of one zone.
struct ngx_http_sse_zone_worker_t {
    ngx_http_sse_zone_t *zone;
    uint32_t slot;
    uint64_t last_seen;  // newest zone seq delivered here
    uint64_t control_gen;
    ngx_event_t wake;
    ngx_queue_t subs;
    std::unordered_map<sse::channel *, ngx_http_sse_local_channel_t *> channels;
    std::vector<std::pair<ngx_http_sse_local_channel_t *, ngx_http_sse_msg_t *>>
        batch;
};

ngx_int_t ngx_http_sse_worker_init(ngx_cycle_t *cycle);
void ngx_http_sse_worker_exit(ngx_cycle_t *cycle);
ngx_http_sse_zone_worker_t *ngx_http_sse_zone_worker(ngx_http_sse_zone_t *z);
// Wakes the workers in `workers` (bits as sse::store::workers_of; this one
// through a posted event) to deliver what was just published into zone z.
void ngx_http_sse_notify(ngx_http_sse_zone_t *z, uint64_t workers);
// Adds n to this worker's figure in the zone (no lock needed).
void ngx_http_sse_count(ngx_http_sse_zone_worker_t *zw,
                        uint64_t sse::slot_stats::*field, uint64_t n);

// A worker-local event of `bytes`, one reference held; NULL when out of
// memory.
ngx_http_sse_msg_t *ngx_http_sse_msg_new(std::string_view bytes, uint64_t seq);
void ngx_http_sse_msg_unref(ngx_http_sse_msg_t *msg);
ngx_http_sse_out_t *ngx_http_sse_out_get();
void ngx_http_sse_out_put(ngx_http_sse_out_t *o);

// Subscriber side (ngx_http_sse_subscriber.cpp).
ngx_int_t ngx_http_sse_enqueue(ngx_http_sse_subscriber_t *sub,
                               ngx_http_sse_msg_t *msg);
// Hands queued events to the output filters in one write, then checks
// what the subscriber owes; may end it (posted, never synchronously).
void ngx_http_sse_send(ngx_http_sse_subscriber_t *sub);
// Schedules ngx_http_sse_send(): the worker writes to its dirty
// subscribers in slices between event-loop turns, so publishes are served
// meanwhile and events that arrive before a subscriber's turn share its
// one write.
void ngx_http_sse_mark_dirty(ngx_http_sse_subscriber_t *sub);
void ngx_http_sse_unmark_dirty(ngx_http_sse_subscriber_t *sub);
// Stops deliveries now and ends the stream from a posted event, so callers
// iterating subscribers are never disturbed.
void ngx_http_sse_end(ngx_http_sse_subscriber_t *sub, ngx_uint_t how);
void ngx_http_sse_attach(ngx_http_sse_subscriber_t *sub);
void ngx_http_sse_detach(ngx_http_sse_subscriber_t *sub);

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
