#include "store.hpp"

#include <cstring>

namespace sse {

uint32_t hash_channel_id(std::string_view id) {
    uint32_t h = 2166136261u;  // FNV-1a
    for (unsigned char c : id) {
        h = (h ^ c) * 16777619u;
    }
    return h;
}

zone_root *store::create(const allocator &a, uint64_t epoch,
                         uint64_t capacity) {
    // About one bucket per 4 KiB of zone, a power of two.
    uint32_t nbuckets = 64;
    while (nbuckets < capacity / 4096 && nbuckets < (1u << 20)) {
        nbuckets <<= 1;
    }
    auto *root = static_cast<zone_root *>(a.alloc(a.ctx, sizeof(zone_root)));
    if (root == nullptr) {
        return nullptr;
    }
    std::memset(root, 0, sizeof(zone_root));
    root->buckets =
        static_cast<channel **>(a.alloc(a.ctx, nbuckets * sizeof(channel *)));
    if (root->buckets == nullptr) {
        a.free(a.ctx, root);
        return nullptr;
    }
    std::memset(root->buckets, 0, nbuckets * sizeof(channel *));
    root->nbuckets = nbuckets;
    root->magic = magic;
    root->layout = layout();
    root->epoch = epoch;
    root->capacity = capacity;
    for (uint32_t s = 0; s < max_slots; s++) {
        root->slot_worker[s] = -1;
    }
    return root;
}

template <typename F>
void store::for_each_channel(F &&f) {
    for (uint32_t b = 0; b < root_->nbuckets; b++) {
        channel *next;
        for (channel *c = root_->buckets[b]; c != nullptr; c = next) {
            next = c->hnext;  // f may free c
            f(c);
        }
    }
}

channel *store::find(std::string_view id) const {
    uint32_t h = hash_channel_id(id);
    for (channel *c = root_->buckets[h & (root_->nbuckets - 1)]; c != nullptr;
         c = c->hnext) {
        if (c->hash == h && c->id() == id) {
            return c;
        }
    }
    return nullptr;
}

channel *store::find_or_create(std::string_view id, int64_t now) {
    channel *c = find(id);
    if (c != nullptr) {
        return c;
    }
    c = static_cast<channel *>(
        alloc_evicting(sizeof(channel) + id.size(), nullptr, now));
    if (c == nullptr) {
        return nullptr;
    }
    std::memset(c, 0, sizeof(channel));
    std::memcpy(reinterpret_cast<char *>(c + 1), id.data(), id.size());
    c->id_len = static_cast<uint16_t>(id.size());
    c->hash = hash_channel_id(id);
    // A channel freed earlier may have held events newer than a resume
    // point; without its history, assume it did.
    c->dropped_seq = root_->orphan_dropped_seq;
    c->idle_since = now;
    channel **b = &root_->buckets[c->hash & (root_->nbuckets - 1)];
    c->hnext = *b;
    *b = c;
    root_->nchannels++;
    return c;
}

void *store::alloc_evicting(size_t size, const channel *keep, int64_t now) {
    for (;;) {
        void *p = a_.alloc(a_.ctx, size);
        if (p != nullptr) {
            return p;
        }
        if (root_->head != nullptr) {
            // The zone-wide oldest is always its channel's oldest.
            drop_oldest(root_->head->chan);
            root_->stats.evicted++;
        } else if (!free_idle_channels(keep, now, true)) {
            return nullptr;
        }
    }
}

void store::unlink_message(message *m) {
    (m->prev ? m->prev->next : root_->head) = m->next;
    (m->next ? m->next->prev : root_->tail) = m->prev;
    root_->nmessages--;
    root_->message_bytes -= m->size;
    a_.free(a_.ctx, m);
}

void store::drop_oldest(channel *c) {
    message *m = c->ring[c->head];
    c->head = (c->head + 1) % c->cap;
    c->count--;
    if (m->seq > c->dropped_seq) {
        c->dropped_seq = m->seq;
    }
    if (m->seq > root_->dropped_seq) {
        root_->dropped_seq = m->seq;
    }
    unlink_message(m);
}

void store::drop_all(channel *c) {
    while (c->count > 0) {
        drop_oldest(c);
    }
    if (c->ring != nullptr) {
        a_.free(a_.ctx, c->ring);
        c->ring = nullptr;
    }
    c->cap = 0;
    c->head = 0;
}

bool store::resize_ring(channel *c, uint32_t cap, int64_t now) {
    auto *ring = static_cast<message **>(
        alloc_evicting(cap * sizeof(message *), c, now));
    if (ring == nullptr) {
        return false;
    }
    while (c->count > cap) {
        drop_oldest(c);
    }
    for (uint32_t i = 0; i < c->count; i++) {
        ring[i] = c->at(i);
    }
    if (c->ring != nullptr) {
        a_.free(a_.ctx, c->ring);
    }
    c->ring = ring;
    c->cap = cap;
    c->head = 0;
    return true;
}

publish_result store::publish(channel *c, std::string_view event,
                              std::string_view data, int64_t now,
                              uint32_t buffer_length, int64_t ttl) {
    if (c->deleted) {
        return {publish_status::no_channel, 0};
    }
    expire(c, now);
    if (buffer_length == 0) {
        buffer_length = 1;
    }
    if (c->cap != buffer_length && !resize_ring(c, buffer_length, now)) {
        return {publish_status::no_memory, 0};
    }

    char id[max_event_id_len];
    uint64_t seq = root_->seq + 1;
    size_t idlen = format_event_id(id, {root_->epoch, seq});
    std::string_view idv(id, idlen);
    size_t size = encoded_size(idv, event, data);
    // A message that needs half the zone would evict everything else.
    if (sizeof(message) + size > root_->capacity / 2 || size > UINT32_MAX) {
        return {publish_status::no_memory, 0};
    }
    auto *m =
        static_cast<message *>(alloc_evicting(sizeof(message) + size, c, now));
    if (m == nullptr) {
        return {publish_status::no_memory, 0};
    }
    if (c->count == c->cap) {
        drop_oldest(c);
    }

    m->size = static_cast<uint32_t>(
        encode_event(reinterpret_cast<char *>(m + 1), idv, event, data));
    m->seq = seq;
    m->expires = now + ttl;
    m->chan = c;
    m->reserved = 0;
    m->next = nullptr;
    m->prev = root_->tail;
    (root_->tail ? root_->tail->next : root_->head) = m;
    root_->tail = m;
    root_->seq = seq;
    root_->nmessages++;
    root_->message_bytes += m->size;
    root_->stats.published++;

    c->ring[(c->head + c->count) % c->cap] = m;
    c->count++;
    c->last_seq = seq;
    c->published++;
    c->ttl = ttl;
    c->idle_since = now;
    return {publish_status::ok, seq};
}

void store::expire(channel *c, int64_t now) {
    while (c->count > 0 && c->at(0)->expires <= now) {
        drop_oldest(c);
    }
}

uint32_t store::subscribers(const channel *c) {
    uint32_t n = 0;
    for (uint32_t s : c->subs) {
        n += s;
    }
    return n;
}

uint64_t store::workers_of(const channel *c) const {
    uint64_t mask = 0;
    for (uint32_t s = 0; s < max_slots; s++) {
        int w = root_->slot_worker[s];
        if (c->subs[s] != 0 && w >= 0) {
            mask |= uint64_t{1} << (w < 63 ? w : 63);
        }
    }
    return mask;
}

void store::free_channel(channel *c) {
    if (c->deleted) {
        for (channel **p = &root_->deleted; *p != nullptr; p = &(*p)->hnext) {
            if (*p == c) {
                *p = c->hnext;
                break;
            }
        }
    } else {
        channel **p = &root_->buckets[c->hash & (root_->nbuckets - 1)];
        while (*p != c) {
            p = &(*p)->hnext;
        }
        *p = c->hnext;
        root_->nchannels--;
    }
    drop_all(c);
    if (c->dropped_seq > root_->orphan_dropped_seq) {
        root_->orphan_dropped_seq = c->dropped_seq;
    }
    a_.free(a_.ctx, c);
}

void store::remove(channel *c, int64_t now) {
    if (c->deleted) {
        return;
    }
    // Its events stay until its last subscriber leaves, so that every
    // worker delivers what was published before the DELETE, then ends the
    // streams. Resuming past them cannot be exact.
    if (c->last_seq > c->dropped_seq) {
        c->dropped_seq = c->last_seq;
    }
    if (c->dropped_seq > root_->orphan_dropped_seq) {
        root_->orphan_dropped_seq = c->dropped_seq;
    }
    channel **p = &root_->buckets[c->hash & (root_->nbuckets - 1)];
    while (*p != c) {
        p = &(*p)->hnext;
    }
    *p = c->hnext;
    root_->nchannels--;
    c->deleted = 1;
    c->idle_since = now;
    c->hnext = root_->deleted;
    root_->deleted = c;
    root_->control_gen++;
    if (subscribers(c) == 0) {
        free_channel(c);
    }
}

void store::unsubscribe(channel *c, uint32_t slot, int64_t now) {
    if (c->subs[slot] > 0) {
        c->subs[slot]--;
    }
    c->idle_since = now;
    if (c->deleted && subscribers(c) == 0) {
        free_channel(c);
    }
}

void store::count_subscribers(uint64_t (&per_slot)[max_slots]) {
    for_each_channel([&](channel *c) {
        for (uint32_t s = 0; s < max_slots; s++) {
            per_slot[s] += c->subs[s];
        }
    });
}

void store::clear_slot(uint32_t slot, int64_t now) {
    root_->stats.delivered += root_->per_slot[slot].delivered;
    root_->stats.slow_dropped += root_->per_slot[slot].slow_dropped;
    root_->per_slot[slot] = {};
    for_each_channel([&](channel *c) {
        if (c->subs[slot] != 0) {
            c->subs[slot] = 0;
            c->idle_since = now;  // kept a ttl like any channel left empty
        }
    });
    channel *next;
    for (channel *c = root_->deleted; c != nullptr; c = next) {
        next = c->hnext;
        c->subs[slot] = 0;
        if (subscribers(c) == 0) {
            free_channel(c);
        }
    }
}

bool store::free_idle_channels(const channel *keep, int64_t now, bool force) {
    bool freed = false;
    for_each_channel([&](channel *c) {
        if (c != keep && c->count == 0 && subscribers(c) == 0 &&
            (force || now - c->idle_since >= c->ttl)) {
            free_channel(c);
            freed = true;
        }
    });
    return freed;
}

void store::sweep(int64_t now) {
    root_->last_sweep = now;
    for_each_channel([&](channel *c) { expire(c, now); });
    free_idle_channels(nullptr, now, false);
}

}  // namespace sse
