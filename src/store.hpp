// The channel store of the shared-memory engine: channels, the zone-wide
// event log with each channel's ring of resumable events, process slots
// and their subscriptions, laid out for a shared-memory zone.
//
// Every structure here lives in memory handed out by an `allocator` (nginx's
// slab pool in the module, a plain arena in the tests), holds only pointers
// into that same memory, and is standard-layout and trivially destructible,
// so that processes mapping the zone at one address share it.
//
// The only way to the store is a `session`, which holds the zone's lock for
// its life. Sessions are short: no call waits, does I/O or copies an event's
// bytes; the caller copies events out between two sessions, protected by
// its slot's hold (see `slot`).
//
// Delivery does not depend on the ring: an event that leaves its channel's
// ring (length, ttl, DELETE) is retired, not freed, while any process
// subscribed to the channel has not yet read past it (its slot's cursor).
// Only memory exhaustion frees an event some process still needs; that
// channel's `lost_seq` then tells the process which subscribers to end.
//
// A process killed inside a session (nginx force-unlocks the mutex) leaves
// `zone_root::dirty` set; the next session repairs the zone from its
// primary structures before anything else (see `store::repair`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "arena.hpp"
#include "event.hpp"

namespace sse {

// Process slots: each process that serves a zone (workers, and old
// workers still draining after reloads) has one of its own; slots are never
// shared. Enough for worker_processes up to max_workers plus overlaps.
constexpr uint32_t max_slots = 256;
constexpr uint32_t max_workers = max_slots / 2;
constexpr uint32_t no_slot = UINT32_MAX;

// Work done under the lock per call is bounded by these.
constexpr uint32_t release_budget = 1024;  // events freed by one release
constexpr uint32_t sweep_buckets = 256;    // hash buckets per sweep step
// What a reader spends per queued event besides its bytes (its queue
// entry): catch-up limits count it, so small events cannot pin more.
constexpr size_t reader_overhead = 128;

struct allocator {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);  // nullptr when the zone is full
    void (*free)(void *ctx, void *p);
    // The arena behind alloc/free, when they are one: repair() then rebuilds
    // it from the blocks the store holds (a process killed inside alloc or
    // free leaves it half changed) instead of freeing what it drops.
    arena *rebuildable;
};

struct mutex {
    void *ctx;
    void (*lock)(void *ctx);
    void (*unlock)(void *ctx);
};

struct channel;

// One published event: the wire form without its "id:" line, which
// readers prepend from (epoch, seq). Followed in memory by `size` bytes.
struct message {
    message *prev;  // zone-wide log, oldest first (= seq order)
    message *next;
    channel *chan;  // nullptr while prepared and not yet committed
    uint64_t seq;
    int64_t expires;  // ms
    uint32_t size;
    uint32_t reserved;

    const char *bytes() const {
        return reinterpret_cast<const char *>(this + 1);
    }
    char *bytes() { return reinterpret_cast<char *>(this + 1); }
    std::string_view body() const { return {bytes(), size}; }
};

// The subscriptions of one process slot to one channel.
struct member {
    member *cnext;  // the channel's members
    member *sprev;  // the slot's members
    member *snext;
    channel *chan;
    uint32_t slot;
    uint32_t count;
};

// A channel; followed in memory by its id bytes.
struct channel {
    channel *hnext;  // hash chain, or the list of deleted channels
    message **ring;  // cap slots; count used from head, oldest first; the
                     // first `retired` are out of resume, kept for readers
    member *members;
    uint64_t last_seq;     // newest seq published here
    uint64_t dropped_seq;  // newest seq no longer held for resume
    uint64_t lost_seq;     // newest seq freed before a member read it
    uint64_t published;
    int64_t ttl;         // ms; set by the last publish
    int64_t idle_since;  // ms; when it last became empty of everything
    uint32_t hash;
    uint32_t cap;
    uint32_t head;
    uint32_t count;
    uint32_t retired;
    uint32_t nsubs;
    uint16_t id_len;
    uint8_t deleted;
    uint8_t reserved;

    std::string_view id() const {
        return {reinterpret_cast<const char *>(this + 1), id_len};
    }
    message *at(uint32_t i) const { return ring[(head + i) % cap]; }
    uint32_t buffered() const { return count - retired; }
};

struct zone_stats {
    uint64_t published;
    uint64_t delivered;
    uint64_t slow_dropped;
    uint64_t evicted;         // dropped early because the zone was full
    uint64_t lost;            // freed before every subscribed process read them
    uint64_t refused;         // subscriptions refused: zone full, no slot
    uint64_t repairs;         // sessions that found the zone interrupted
    uint64_t batched_writes;  // stream writes sent in io_uring batches
};

// Counts a process adds to without the lock (only it writes its slot, with
// relaxed atomics); folded into zone_stats when the slot is cleared.
struct slot_stats {
    uint64_t delivered;
    uint64_t slow_dropped;
    uint64_t batched_writes;
};

// The Redis engine's figures for sse_status, written by the processes of
// the machine without the lock (relaxed atomics); all zero for a
// shared-memory zone.
struct external_stats {
    uint32_t state;  // the bus connection's, as the glue numbers it
    uint32_t reconnects;
    uint64_t publishes;
    uint64_t publish_errors;
    uint64_t rtt_us_total;  // of the publishes' round trips
    uint64_t rtt_us_last;
    char last_error[120];  // NUL-terminated
    // Redis Sentinel: how many sentinels answered the last check, when
    // one last answered and when one last named the primary in use
    // (ngx_current_msec, 0: never), and which one-time lines are out.
    uint32_t sentinels_answered;
    uint32_t told;  // bits, see the glue
    uint64_t sentinel_answered_ms;
    uint64_t sentinel_confirmed_ms;
    // The subscriber counts across machines (the glue's
    // ngx_http_sse_redis_count.cpp): its record, an aux block made under
    // the lock and never freed; nullptr until then.
    void *count;
};

// The zone's root: private to the engine (src/store_layout.hpp); the glue
// holds it as a handle and reaches it through a session or the peek_*
// functions below.
struct zone_root;

static_assert(std::is_standard_layout_v<message> &&
              std::is_trivially_destructible_v<message>);
static_assert(std::is_standard_layout_v<member> &&
              std::is_trivially_destructible_v<member>);
static_assert(std::is_standard_layout_v<channel> &&
              std::is_trivially_destructible_v<channel>);

// Which slots to wake: bit s of word s / 64.
struct slot_set {
    uint64_t bits[max_slots / 64];
    bool has(uint32_t s) const { return (bits[s / 64] >> (s % 64)) & 1; }
    void add(uint32_t s) { bits[s / 64] |= uint64_t{1} << (s % 64); }
    void remove(uint32_t s) { bits[s / 64] &= ~(uint64_t{1} << (s % 64)); }
    bool empty() const {
        for (uint64_t b : bits) {
            if (b != 0) {
                return false;
            }
        }
        return true;
    }
};

enum class publish_status { ok, no_memory, no_channel, duplicate };

enum class join_status { ok, zone_full, max_subscribers };

// Why a resume cannot be exact; none: it is.
enum class gap_reason { none, malformed, epoch, unknown, evicted };
const char *describe(gap_reason r);

struct catch_up_result {
    gap_reason gap;
    uint64_t epoch;
    uint64_t last_seq;  // the zone's newest: live events come after it
    bool more;  // stopped at the byte limit: more is owed after the last
};

class session;

// The shared-memory store. Every member needs a live session.
class store {
public:
    static constexpr uint64_t magic = 0x5353455a4f4e4533ull;  // "SSEZONE3"

    // Changes whenever the shared structures change shape: a zone reused
    // across a reload must have been made by a build with the same layout.
    static uint64_t layout();
    static bool compatible(const zone_root *root);

    // Lays out a new zone; nullptr when `a` cannot supply the root.
    static zone_root *create(const allocator &a, uint64_t epoch,
                             uint64_t capacity);

    zone_root *root() const { return root_; }

    // ---- the zone's figures, under the session
    uint64_t epoch() const;
    uint64_t seq() const;          // the newest event's
    uint64_t control_gen() const;  // changes when a channel is deleted
    uint64_t lost_seq() const;     // newest seq any channel lost
    uint64_t cursor(uint32_t slot) const;
    int32_t slot_pid(uint32_t slot) const;
    // The channels slot is subscribed to, with its subscribers of each.
    std::vector<std::pair<const channel *, uint32_t>> memberships(
        uint32_t slot) const;
    // The Redis engine's state (external seqs, the machine's bus holder).
    uint32_t external() const;
    void set_external(uint32_t v);
    int32_t bus_pid() const;
    void set_bus_pid(int32_t pid);
    struct figures {
        uint32_t channels;
        uint64_t messages;  // resumable
        uint64_t retained;  // out of their rings, kept for readers
        uint64_t message_bytes;
        uint64_t subscribers;
        zone_stats stats;  // the slots' own counts folded in
        std::vector<std::pair<int32_t, uint64_t>> workers;  // pid, subs
    };
    figures get_figures() const;

    // ---- blocks of the glue's own (presence's records): from the zone,
    // evicting as events do; kept until aux_free, repairs included.
    // nullptr when the zone cannot hold it.
    void *aux_alloc(size_t size, int64_t now);
    void aux_free(void *p);
    // One pointer of the glue's, kept in the zone (to an aux block).
    void *glue_data() const;
    void set_glue_data(void *p);

    // ---- without the lock (relaxed atomics): hints, taken again under a
    // session where it matters
    static uint64_t peek_seq(const zone_root *r);
    static uint64_t peek_epoch(const zone_root *r);
    static uint64_t peek_control_gen(const zone_root *r);
    static int64_t peek_last_sweep(const zone_root *r);
    static uint64_t peek_cursor(const zone_root *r, uint32_t slot);
    static int32_t peek_slot_pid(const zone_root *r, uint32_t slot);
    static slot_set peek_answering(const zone_root *r);
    static uint32_t peek_external(const zone_root *r);
    static int32_t peek_bus_pid(const zone_root *r);
    // Counts only the slot's own process adds to, and the Redis engine's
    // figures, both written with relaxed atomics.
    static slot_stats &own_stats(zone_root *r, uint32_t slot);
    static void set_answering(zone_root *r, uint32_t slot, bool on);
    static external_stats &ext(zone_root *r);

    // ---- process slots
    // A free slot for process pid (worker number, or -1); no_slot if none.
    uint32_t claim_slot(int32_t pid, int32_t worker);
    // Forgets everything of `slot` (its process is gone or exiting):
    // subscriptions, hold, prepared event; folds its stats into the zone's.
    void clear_slot(uint32_t slot, int64_t now);

    // ---- channels
    channel *find(std::string_view id) const;
    // nullptr only when the zone cannot hold one more channel even after
    // evicting buffered messages.
    channel *find_or_create(std::string_view id, int64_t now);

    // Joins `slot` to every id, all or nothing: on failure nothing is
    // counted. out receives the channels, in the order of ids.
    join_status join(uint32_t slot, const std::vector<std::string_view> &ids,
                     uint32_t max_subscribers, int64_t now,
                     std::vector<channel *> &out);
    void leave(uint32_t slot, channel *const *chans, size_t n, int64_t now);
    static uint32_t subscribers(const channel *c) { return c->nsubs; }
    // The slots with subscribers of c.
    slot_set slots_of(const channel *c) const;

    // Unlinks the channel: later lookups see no channel, and a channel of
    // the same name made later reports a gap for resume points before now.
    // Its events stay for the processes still to deliver them; each then
    // ends its streams (control_gen changes).
    void remove(channel *c, int64_t now);

    // ---- publishing, in two sessions so no event is copied under the lock
    // 1. Allocates an event of `size` body bytes for `slot` (evicting the
    //    zone's oldest events if needed); nullptr: it cannot fit at all.
    message *prepare(uint32_t slot, size_t size, int64_t now);
    // 2. The caller writes the body outside the lock, then commits it to c
    //    (not deleted), which assigns its seq, or abandons it.
    publish_status commit(uint32_t slot, message *m, channel *c, int64_t now,
                          uint32_t buffer_length, int64_t ttl, uint64_t *seq);
    // 2'. The same with a seq assigned elsewhere (Redis), which must be
    //    newer than the zone's: an older one is already held (or was
    //    skipped for good), so m is abandoned and duplicate returned.
    publish_status commit_at(uint32_t slot, message *m, channel *c, int64_t now,
                             uint32_t buffer_length, int64_t ttl, uint64_t seq);
    // The epoch now comes from outside; true when it changed. Nothing held
    // before resumes exactly under the new one (resumes see a gap), and
    // control_gen changes so every process ends its streams.
    bool adopt_epoch(uint64_t epoch);
    // Events of c up to `seq` are gone for good (Redis no longer holds
    // them): resumes before it see a gap, and subscribers that had not
    // read up to it are ended (lost_seq), as with memory exhaustion.
    void mark_gone(channel *c, uint64_t seq);
    // mark_gone, and c's events up to `seq` leave its history (kept for
    // the processes still delivering them, as evicted ones are): neither
    // resumed nor served as initial events, so that what is served never
    // skips the missing ones silently.
    void drop_through(channel *c, uint64_t seq);
    // Redis says c's event before the one about to be committed is `prev`:
    // when this zone neither holds it nor knows it gone, the events in
    // between never reached this machine (a log trimmed under its reader),
    // so drop_through(c, prev). True when it did.
    bool note_prev(channel *c, uint64_t prev);
    // The same for a channel not held here: one of any name made later
    // reports a gap for resume points before seq (as for a freed channel).
    void mark_gone_unheld(uint64_t seq);
    // A channel whose history elsewhere (Redis) is known to start after
    // `gone` and whose events this zone is about to receive: made without
    // events, resumable from `gone` on whatever mark_gone_unheld said, and
    // kept `ttl` ms while idle. One that exists is returned unchanged;
    // nullptr: no room.
    channel *make_known(std::string_view id, int64_t now, uint64_t gone,
                        int64_t ttl);
    // The zone's seq passes `seq`, which no event here carries (a delete
    // ordered among the events by the Redis engine).
    void skip_to(uint64_t seq);
    void abandon(uint32_t slot, message *m);

    // ---- reading
    // Resume: the events of chans the subscriber is owed after `resume` (or
    // the newest `initial` when there is no exact resume point), oldest
    // first, at most ~max_bytes of them (always at least one). Sets the
    // slot's hold: the events stay valid until end_read().
    catch_up_result catch_up(uint32_t slot, channel *const *chans, size_t n,
                             std::string_view resume, uint32_t initial,
                             int64_t now, size_t max_bytes,
                             std::vector<const message *> &out);
    // Continues a catch-up that stopped at max_bytes after `after`; gap
    // evicted when the ring moved past it meanwhile.
    catch_up_result catch_up_after(uint32_t slot, channel *const *chans,
                                   size_t n, uint64_t after, size_t max_bytes,
                                   std::vector<const message *> &out);

    // Live: calls f(message*) for each event after the slot's cursor, in
    // seq order, and sets the hold; returns the zone's newest seq, which the
    // caller passes to end_read() once it has copied what it wanted.
    template <typename F>
    uint64_t read_since_cursor(uint32_t slot, F &&f) {
        using fn_t = std::remove_reference_t<F>;
        return read_since_cursor_fn(
            slot,
            [](void *ctx, const message *m) { (*static_cast<fn_t *>(ctx))(m); },
            const_cast<void *>(static_cast<const void *>(&f)));
    }
    uint64_t read_since_cursor_fn(uint32_t slot,
                                  void (*f)(void *ctx, const message *m),
                                  void *ctx);
    // Ends a read: clears the hold; a live read (cursor != 0) also moves
    // the cursor. Frees the retired events of chans nobody needs any more.
    // `budget` bounds the events freed (callers pass about what they read).
    void end_read(uint32_t slot, uint64_t cursor, channel *const *chans,
                  size_t n, uint32_t budget = release_budget);
    // Frees up to `budget` events of deleted channels nobody needs any
    // more; true while some are left to free.
    bool release_deleted(uint32_t budget = release_budget);

    // ---- upkeep
    // Expires and frees a bounded part of the zone (round robin over the
    // hash buckets and the deleted channels).
    void sweep(int64_t now);
    // Drops the channel's expired events out of resume.
    void expire(channel *c, int64_t now);
    // Frees up to `budget` retired events of c that no process still needs,
    // and c itself when deleted and empty.
    void release(channel *c, uint32_t budget = release_budget);

    // True when an event of `c` newer than `after_seq` is no longer held,
    // so a resume from `after_seq` cannot be exact.
    static bool gap(const channel *c, uint64_t after_seq) {
        return c->dropped_seq > after_seq;
    }
    // The first resumable event of c (nullptr if none).
    static const message *first(const channel *c) {
        return c->buffered() ? c->at(c->retired) : nullptr;
    }

    // ---- consistency
    // "" when every invariant holds, else the first one broken.
    std::string check() const;
    // Rebuilds what an interrupted session may have left half done.
    void repair();
    // Calls f(pointer, size) for every block of the allocator the store
    // holds, with the size it was allocated with.
    template <typename F>
    void for_each_block(F &&f) const;

private:
    friend class session;
    store(zone_root *root, const allocator &a) : root_(root), a_(a) {}
    publish_status commit_seq(uint32_t slot, message *m, channel *c,
                              int64_t now, uint32_t buffer_length, int64_t ttl,
                              uint64_t seq);

    void *alloc_evicting(size_t size, const channel *keep, int64_t now);
    bool evict_one(const channel *keep, bool needed_too);
    // Records that c's event seq was freed before a member read it.
    void mark_lost(channel *c, uint64_t seq);
    void limit_catch_up(uint32_t slot, size_t max_bytes,
                        std::vector<const message *> &out, catch_up_result &r);
    bool needed(const message *m, uint64_t min_hold) const;
    uint64_t min_hold() const;
    void retire_oldest(channel *c);
    void pop_front(channel *c);
    void unlink_message(message *m);
    void free_message(message *m);
    bool grow_ring(channel *c, int64_t now);
    void shrink_ring(channel *c);
    bool free_channel_if_idle(channel *c, int64_t now, bool force);
    void free_channel(channel *c);
    void unlink_channel(channel *c);
    void drop_member(member *mb);

    zone_root *root_;
    allocator a_;
};

// Holds the zone's lock for its life; the only way to reach a store. The
// first session after a process died inside one repairs the zone.
class session {
public:
    // Takes the lock; repairs the zone first if a process died inside a
    // session.
    session(zone_root *root, const allocator &a, const mutex &mx);
    ~session();
    session(const session &) = delete;
    session &operator=(const session &) = delete;

    store *operator->() { return &st_; }
    store &operator*() { return st_; }

private:
    store st_;
    mutex mx_;
};

uint32_t hash_channel_id(std::string_view id);

}  // namespace sse
