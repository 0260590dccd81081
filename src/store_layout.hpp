// The shared-memory zone's root and process slots: private to the engine.
// store.cpp and the engine's own tests include this; the nginx glue does
// not, so it can reach them only through a session or store::peek_*.
#pragma once

#include "store.hpp"

namespace sse {

struct slot {
    int32_t pid;       // 0: free
    int32_t worker;    // the process's worker number, or -1
    uint64_t cursor;   // newest zone seq this process has read
    uint64_t hold;     // nonzero: it is copying events with seq >= hold
    message *pending;  // prepared by it, not yet committed
    member *members;
    uint64_t subscriptions;
    uint64_t generation;  // bumped each time the slot is claimed
    slot_stats stats;
};

// A block of the glue's own (presence's records) in the zone: on the
// root's list so that repairs keep it; followed by its bytes.
struct aux_block {
    aux_block *prev;
    aux_block *next;
    uint64_t size;
    uint64_t reserved;  // keeps the bytes 16-aligned
};

struct zone_root {
    uint64_t magic;
    uint64_t layout;  // store::layout() of the build that made the zone
    uint64_t epoch;
    uint64_t seq;                 // newest assigned
    uint64_t dropped_seq;         // newest seq dropped from any ring
    uint64_t orphan_dropped_seq;  // newest dropped_seq of freed channels
    uint64_t lost_seq;            // newest lost_seq of any channel
    uint64_t control_gen;         // bumped when a channel is deleted
    // The slots whose processes hold publishes' answers until the processes
    // of their channels have read them (the glue's sse_publish_wait): a
    // reader wakes them after reading. Each process sets and clears its own
    // bit; readers test one word per 64 slots.
    uint64_t answering[max_slots / 64];
    int64_t last_sweep;  // ms
    uint64_t capacity;   // bytes of the zone, for sanity limits
    message *head;
    message *tail;
    channel **buckets;
    channel *deleted;  // removed, still held by subscribers; via hnext
    uint32_t nbuckets;
    uint32_t nchannels;
    uint32_t sweep_pos;
    uint32_t dirty;  // set inside a session that changes anything
    // Nonzero: seqs and the epoch come from outside (the Redis engine):
    // events arrive by commit_at, and a resume point a little ahead of
    // this machine is waited for rather than unknown.
    uint32_t external;
    int32_t bus_pid;     // the process that holds the machine's Redis bus
    uint64_t nmessages;  // in the log: resumable and retired
    uint64_t nretired;   // out of their rings, kept for readers
    uint64_t message_bytes;
    zone_stats stats;
    external_stats ext;
    aux_block *aux;
    void *glue;  // the glue's own root, an aux block (presence's table)
    slot slots[max_slots];
};

static_assert(std::is_standard_layout_v<zone_root> &&
              std::is_trivially_destructible_v<zone_root>);

}  // namespace sse
