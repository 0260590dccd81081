// The channel store: channels, their ring buffers of encoded events and the
// zone-wide event list, laid out for a shared-memory zone.
//
// Every structure here lives in memory handed out by an `allocator` (nginx's
// slab pool in the module, a plain arena in the tests), holds only
// pointers into that same memory, and is standard-layout and trivially
// destructible, so that processes mapping the zone at one address share it.
//
// Locking: every `store` call must be made with the zone's lock held; the
// store itself never locks. Calls are short: no call waits or does I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "event.hpp"

namespace sse {

// Process slots: each worker (old ones draining after a reload included)
// counts its subscribers in its own slot, so that the counts of a worker
// that died can be dropped by whoever takes the slot next.
constexpr uint32_t max_slots = 32;

struct allocator {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size);  // nullptr when the zone is full
    void (*free)(void *ctx, void *p);
};

struct channel;

// One published event in wire form; followed in memory by `size` bytes.
struct message {
    message *prev;  // zone-wide list, oldest first (= seq order)
    message *next;
    channel *chan;
    uint64_t seq;
    int64_t expires;  // ms
    uint32_t size;
    uint32_t reserved;

    const char *bytes() const {
        return reinterpret_cast<const char *>(this + 1);
    }
    std::string_view wire() const { return {bytes(), size}; }
};

// A channel; followed in memory by its id bytes.
struct channel {
    channel *hnext;
    message **ring;        // cap slots, count used, oldest at head
    uint64_t last_seq;     // newest seq published here
    uint64_t dropped_seq;  // newest seq no longer held for resume
    uint64_t published;
    int64_t ttl;         // ms; set by the last publish
    int64_t idle_since;  // ms; when it last became empty of everything
    uint32_t hash;
    uint32_t cap;
    uint32_t head;
    uint32_t count;
    uint32_t subs[max_slots];
    uint16_t id_len;
    uint8_t deleted;
    uint8_t reserved;

    std::string_view id() const {
        return {reinterpret_cast<const char *>(this + 1), id_len};
    }
    message *at(uint32_t i) const { return ring[(head + i) % cap]; }
};

struct zone_stats {
    uint64_t published;
    uint64_t delivered;
    uint64_t slow_dropped;
    uint64_t evicted;  // dropped early because the zone was full
};

// Counts a worker adds to without the lock (only its process writes its
// slot, with relaxed atomics); folded into zone_stats when the slot is
// cleared.
struct slot_stats {
    uint64_t delivered;
    uint64_t slow_dropped;
};

struct zone_root {
    uint64_t magic;
    uint64_t layout;  // store::layout() of the build that made the zone
    uint64_t epoch;
    uint64_t seq;                 // newest assigned
    uint64_t dropped_seq;         // newest seq dropped anywhere
    uint64_t orphan_dropped_seq;  // newest dropped_seq of freed channels
    uint64_t control_gen;         // bumped when a channel is deleted
    int64_t last_sweep;           // ms
    uint64_t capacity;            // bytes of the zone, for sanity limits
    message *head;
    message *tail;
    channel **buckets;
    channel *deleted;  // removed, still held by subscribers; via hnext
    uint32_t nbuckets;
    uint32_t nchannels;
    uint64_t nmessages;
    uint64_t message_bytes;
    zone_stats stats;
    int32_t slot_pid[max_slots];
    int16_t slot_worker[max_slots];  // the process's worker number, or -1
    slot_stats per_slot[max_slots];
};

static_assert(std::is_standard_layout_v<message> &&
              std::is_trivially_destructible_v<message>);
static_assert(std::is_standard_layout_v<channel> &&
              std::is_trivially_destructible_v<channel>);
static_assert(std::is_standard_layout_v<zone_root> &&
              std::is_trivially_destructible_v<zone_root>);

enum class publish_status { ok, no_memory, no_channel };

struct publish_result {
    publish_status status;
    uint64_t seq;
};

// A view of a zone; cheap to make, holds no state of its own.
class store {
public:
    static constexpr uint64_t magic = 0x5353455a4f4e4531ull;  // "SSEZONE1"

    store(zone_root *root, const allocator &a) : root_(root), a_(a) {}

    // Changes whenever the shared structures change shape: a zone reused
    // across a reload must have been made by a build with the same layout.
    static constexpr uint64_t layout() {
        return sizeof(zone_root) | sizeof(channel) << 16 |
               uint64_t{sizeof(message)} << 32 | uint64_t{max_slots} << 48;
    }
    static bool compatible(const zone_root *root) {
        return root->magic == magic && root->layout == layout();
    }

    // Lays out a new zone; nullptr when `a` cannot supply the root.
    static zone_root *create(const allocator &a, uint64_t epoch,
                             uint64_t capacity);

    zone_root *root() const { return root_; }

    channel *find(std::string_view id) const;
    // nullptr only when the zone cannot hold one more channel even after
    // evicting buffered messages.
    channel *find_or_create(std::string_view id, int64_t now);

    // Assigns the next seq, encodes the event with its id, and buffers it
    // in the channel's ring of `buffer_length` (>= 1), evicting the ring's
    // oldest, then the zone's oldest events, to make room.
    publish_result publish(channel *c, std::string_view event,
                           std::string_view data, int64_t now,
                           uint32_t buffer_length, int64_t ttl);

    // Unlinks the channel: later lookups see no channel, and a channel of
    // the same name made later reports a gap for resume points before now.
    // Subscribers still holding it see `deleted`; its buffered events stay
    // (for workers still to deliver them) until the last one unsubscribes
    // and frees it.
    void remove(channel *c, int64_t now);

    void subscribe(channel *c, uint32_t slot) { c->subs[slot]++; }
    void unsubscribe(channel *c, uint32_t slot, int64_t now);
    static uint32_t subscribers(const channel *c);
    // Bit w set: worker number w (slot_worker) has subscribers of c; bit
    // 63 stands for every worker numbered 63 or more.
    uint64_t workers_of(const channel *c) const;

    // Adds each slot's channel subscriptions into per_slot.
    void count_subscribers(uint64_t (&per_slot)[max_slots]);

    // Forgets every count of `slot` (its process is gone), folding its
    // slot_stats into the zone's.
    void clear_slot(uint32_t slot, int64_t now);

    // Drops expired messages everywhere, and frees channels that have been
    // empty, unsubscribed and unused for a ttl.
    void sweep(int64_t now);

    // Drops the channel's expired messages.
    void expire(channel *c, int64_t now);

    // True when an event of `c` newer than `after_seq` is no longer held,
    // so a resume from `after_seq` cannot be exact.
    bool gap(const channel *c, uint64_t after_seq) const {
        return c->dropped_seq > after_seq;
    }

    // Calls f(message*) for every buffered event with seq > after_seq, in
    // seq order, zone-wide.
    template <typename F>
    void for_each_since(uint64_t after_seq, F &&f) const {
        message *m = root_->tail;
        if (m == nullptr || m->seq <= after_seq) {
            return;
        }
        while (m->prev != nullptr && m->prev->seq > after_seq) {
            m = m->prev;
        }
        for (; m != nullptr; m = m->next) {
            f(m);
        }
    }

    // Calls f(message*) for the channel's buffered events with seq >
    // after_seq, oldest first; at most the newest `limit` of them.
    template <typename F>
    void for_each_in(const channel *c, uint64_t after_seq, uint32_t limit,
                     F &&f) const {
        uint32_t i = c->count;
        while (i > 0 && c->count - i < limit && c->at(i - 1)->seq > after_seq) {
            i--;
        }
        for (; i < c->count; i++) {
            f(c->at(i));
        }
    }

private:
    void *alloc_evicting(size_t size, const channel *keep, int64_t now);
    void drop_oldest(channel *c);
    void drop_all(channel *c);
    void unlink_message(message *m);
    bool resize_ring(channel *c, uint32_t cap, int64_t now);
    void free_channel(channel *c);
    bool free_idle_channels(const channel *keep, int64_t now, bool force);
    template <typename F>
    void for_each_channel(F &&f);

    zone_root *root_;
    allocator a_;
};

uint32_t hash_channel_id(std::string_view id);

}  // namespace sse
