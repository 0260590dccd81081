#include "store_layout.hpp"

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace sse {

uint32_t hash_channel_id(std::string_view id) {
    uint32_t h = 2166136261u;  // FNV-1a
    for (unsigned char c : id) {
        h = (h ^ c) * 16777619u;
    }
    return h;
}

const char *describe(gap_reason r) {
    switch (r) {
        case gap_reason::none:
            return "none";
        case gap_reason::malformed:
            return "malformed";
        case gap_reason::epoch:
            return "epoch";
        case gap_reason::unknown:
            return "unknown";
        case gap_reason::evicted:
            return "evicted";
    }
    return "unknown";
}

uint64_t store::layout() {
    return sizeof(zone_root) | sizeof(channel) << 20 |
           uint64_t{sizeof(message)} << 32 | uint64_t{sizeof(member)} << 40 |
           uint64_t{max_slots} << 48;
}

bool store::compatible(const zone_root *root) {
    return root->magic == magic && root->layout == layout();
}

session::session(zone_root *root, const allocator &a, const mutex &mx)
    : st_(root, a), mx_(mx) {
    mx_.lock(mx_.ctx);
    if (root->dirty) {
        st_.repair();
    }
    root->dirty = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

session::~session() {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    st_.root_->dirty = 0;
    mx_.unlock(mx_.ctx);
}

// ---------------------------------------------------------------- figures

uint64_t store::epoch() const { return root_->epoch; }
uint64_t store::seq() const { return root_->seq; }
uint64_t store::control_gen() const { return root_->control_gen; }
uint64_t store::lost_seq() const { return root_->lost_seq; }
uint64_t store::cursor(uint32_t slot) const {
    return root_->slots[slot].cursor;
}
int32_t store::slot_pid(uint32_t slot) const { return root_->slots[slot].pid; }
std::vector<std::pair<const channel *, uint32_t>> store::memberships(
    uint32_t slot) const {
    std::vector<std::pair<const channel *, uint32_t>> out;
    for (const member *mb = root_->slots[slot].members; mb != nullptr;
         mb = mb->snext) {
        out.emplace_back(mb->chan, mb->count);
    }
    return out;
}
uint32_t store::external() const { return root_->external; }
void store::set_external(uint32_t v) { root_->external = v; }
int32_t store::bus_pid() const { return root_->bus_pid; }
void store::set_bus_pid(int32_t pid) { root_->bus_pid = pid; }

store::figures store::get_figures() const {
    const zone_root *r = root_;
    figures f{};
    f.channels = r->nchannels;
    f.messages = r->nmessages - r->nretired;
    f.retained = r->nretired;
    f.message_bytes = r->message_bytes;
    f.stats = r->stats;
    // Per-slot totals: work proportional to the processes, not channels.
    f.workers.reserve(max_slots);
    for (const slot &sl : r->slots) {
        f.stats.delivered +=
            __atomic_load_n(&sl.stats.delivered, __ATOMIC_RELAXED);
        f.stats.slow_dropped +=
            __atomic_load_n(&sl.stats.slow_dropped, __ATOMIC_RELAXED);
        f.stats.batched_writes +=
            __atomic_load_n(&sl.stats.batched_writes, __ATOMIC_RELAXED);
        if (sl.pid != 0) {
            f.workers.emplace_back(sl.pid, sl.subscriptions);
        }
        f.subscribers += sl.subscriptions;
    }
    return f;
}

void *store::aux_alloc(size_t size, int64_t now) {
    auto *b = static_cast<aux_block *>(
        alloc_evicting(sizeof(aux_block) + size, nullptr, now));
    if (b == nullptr) {
        return nullptr;
    }
    b->size = size;
    b->prev = nullptr;
    b->next = root_->aux;
    if (b->next != nullptr) {
        b->next->prev = b;
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    root_->aux = b;  // the commit point: a repair keeps it or frees it
    return b + 1;
}

void *store::glue_data() const { return root_->glue; }
void store::set_glue_data(void *p) { root_->glue = p; }

void store::aux_free(void *p) {
    aux_block *b = static_cast<aux_block *>(p) - 1;
    (b->prev ? b->prev->next : root_->aux) = b->next;  // the commit point
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (b->next != nullptr) {
        b->next->prev = b->prev;
    }
    a_.free(a_.ctx, b);
}

uint64_t store::peek_seq(const zone_root *r) {
    return __atomic_load_n(&r->seq, __ATOMIC_RELAXED);
}
uint64_t store::peek_epoch(const zone_root *r) {
    return __atomic_load_n(&r->epoch, __ATOMIC_RELAXED);
}
uint64_t store::peek_control_gen(const zone_root *r) {
    return __atomic_load_n(&r->control_gen, __ATOMIC_RELAXED);
}
int64_t store::peek_last_sweep(const zone_root *r) {
    return __atomic_load_n(&r->last_sweep, __ATOMIC_RELAXED);
}
uint64_t store::peek_cursor(const zone_root *r, uint32_t slot) {
    return __atomic_load_n(&r->slots[slot].cursor, __ATOMIC_RELAXED);
}
int32_t store::peek_slot_pid(const zone_root *r, uint32_t slot) {
    return __atomic_load_n(&r->slots[slot].pid, __ATOMIC_RELAXED);
}
slot_set store::peek_answering(const zone_root *r) {
    slot_set set{};
    for (uint32_t i = 0; i < max_slots / 64; i++) {
        set.bits[i] = __atomic_load_n(&r->answering[i], __ATOMIC_RELAXED);
    }
    return set;
}
void store::set_answering(zone_root *r, uint32_t slot, bool on) {
    uint64_t bit = uint64_t{1} << (slot % 64);
    if (on) {
        __atomic_fetch_or(&r->answering[slot / 64], bit, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_and(&r->answering[slot / 64], ~bit, __ATOMIC_RELAXED);
    }
}
uint32_t store::peek_external(const zone_root *r) {
    return __atomic_load_n(&r->external, __ATOMIC_RELAXED);
}
int32_t store::peek_bus_pid(const zone_root *r) {
    return __atomic_load_n(&r->bus_pid, __ATOMIC_RELAXED);
}
slot_stats &store::own_stats(zone_root *r, uint32_t slot) {
    return r->slots[slot].stats;
}
external_stats &store::ext(zone_root *r) { return r->ext; }

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
    for (auto &s : root->slots) {
        s.worker = -1;
    }
    return root;
}

// ---------------------------------------------------------------- slots

uint32_t store::claim_slot(int32_t pid, int32_t worker) {
    for (uint32_t i = 0; i < max_slots; i++) {
        slot &s = root_->slots[i];
        if (s.pid == 0) {
            uint64_t gen = s.generation + 1;
            std::memset(&s, 0, sizeof(slot));
            s.generation = gen;
            s.worker = worker;
            // Nothing to read yet: it has no subscribers.
            s.cursor = root_->seq;
            s.pid = pid;
            set_answering(root_, i, false);  // a dead process's, if any
            return i;
        }
    }
    return no_slot;
}

void store::clear_slot(uint32_t i, int64_t now) {
    slot &s = root_->slots[i];
    root_->stats.delivered += s.stats.delivered;
    root_->stats.slow_dropped += s.stats.slow_dropped;
    root_->stats.batched_writes += s.stats.batched_writes;
    s.stats = {};
    s.hold = 0;
    set_answering(root_, i, false);
    while (s.pending != nullptr) {
        message *m = s.pending;
        s.pending = m->next;
        a_.free(a_.ctx, m);
    }
    while (s.members != nullptr) {
        member *mb = s.members;
        channel *c = mb->chan;
        c->nsubs -= std::min(c->nsubs, mb->count);
        c->idle_since = now;  // kept a ttl like any channel left empty
        drop_member(mb);
        release(c);
    }
    s.subscriptions = 0;
    s.worker = -1;
    s.pid = 0;
}

void store::drop_member(member *mb) {
    channel *c = mb->chan;
    for (member **p = &c->members; *p != nullptr; p = &(*p)->cnext) {
        if (*p == mb) {
            *p = mb->cnext;
            break;
        }
    }
    slot &s = root_->slots[mb->slot];
    (mb->sprev ? mb->sprev->snext : s.members) = mb->snext;
    if (mb->snext != nullptr) {
        mb->snext->sprev = mb->sprev;
    }
    a_.free(a_.ctx, mb);
}

// ---------------------------------------------------------------- channels

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
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *b = c;  // the commit point: a repair finds it or does not
    root_->nchannels++;
    return c;
}

join_status store::join(uint32_t si, const std::vector<std::string_view> &ids,
                        uint32_t max_subscribers, int64_t now,
                        std::vector<channel *> &out) {
    out.clear();
    slot &s = root_->slots[si];
    for (std::string_view id : ids) {
        channel *c = find_or_create(id, now);
        join_status st = join_status::ok;
        member *mb = nullptr;
        if (c == nullptr) {
            st = join_status::zone_full;
        } else if (max_subscribers != 0 && c->nsubs >= max_subscribers) {
            st = join_status::max_subscribers;
        } else {
            for (mb = c->members; mb != nullptr && mb->slot != si;
                 mb = mb->cnext) {
            }
            if (mb == nullptr) {
                mb = static_cast<member *>(
                    alloc_evicting(sizeof(member), c, now));
                if (mb == nullptr) {
                    st = join_status::zone_full;
                } else {
                    std::memset(mb, 0, sizeof(member));
                    mb->chan = c;
                    mb->slot = si;
                    mb->snext = s.members;
                    if (s.members != nullptr) {
                        s.members->sprev = mb;
                    }
                    s.members = mb;
                    mb->cnext = c->members;
                    c->members = mb;
                }
            }
        }
        if (st != join_status::ok) {
            // All or nothing.
            leave(si, out.data(), out.size(), now);
            out.clear();
            root_->stats.refused += st == join_status::zone_full;
            return st;
        }
        mb->count++;
        c->nsubs++;
        s.subscriptions++;
        out.push_back(c);  // reserved by the caller: cannot throw
    }
    return join_status::ok;
}

void store::leave(uint32_t si, channel *const *chans, size_t n, int64_t now) {
    slot &s = root_->slots[si];
    for (size_t i = 0; i < n; i++) {
        channel *c = chans[i];
        member *mb = c->members;
        while (mb != nullptr && mb->slot != si) {
            mb = mb->cnext;
        }
        if (mb == nullptr || mb->count == 0) {
            continue;
        }
        mb->count--;
        c->nsubs--;
        s.subscriptions--;
        if (mb->count == 0) {
            drop_member(mb);
        }
        c->idle_since = now;
        release(c);
    }
}

slot_set store::slots_of(const channel *c) const {
    slot_set set{};
    for (const member *mb = c->members; mb != nullptr; mb = mb->cnext) {
        set.add(mb->slot);
    }
    return set;
}

void store::unlink_channel(channel *c) {
    channel **p = c->deleted ? &root_->deleted
                             : &root_->buckets[c->hash & (root_->nbuckets - 1)];
    while (*p != nullptr && *p != c) {
        p = &(*p)->hnext;
    }
    if (*p == c) {
        *p = c->hnext;
        if (!c->deleted) {
            root_->nchannels--;
        }
    }
}

void store::free_channel(channel *c) {
    unlink_channel(c);
    uint64_t dropped = std::max(c->dropped_seq, c->last_seq);
    if (dropped > root_->orphan_dropped_seq) {
        root_->orphan_dropped_seq = dropped;
    }
    if (c->ring != nullptr) {
        a_.free(a_.ctx, c->ring);
    }
    a_.free(a_.ctx, c);
}

bool store::free_channel_if_idle(channel *c, int64_t now, bool force) {
    if (c->count == 0 && c->nsubs == 0 && !c->deleted &&
        (force || now - c->idle_since >= c->ttl)) {
        free_channel(c);
        return true;
    }
    return false;
}

void store::remove(channel *c, int64_t now) {
    if (c->deleted) {
        return;
    }
    // Resuming past its events cannot be exact any more.
    c->dropped_seq = std::max(c->dropped_seq, c->last_seq);
    root_->orphan_dropped_seq =
        std::max(root_->orphan_dropped_seq, c->dropped_seq);
    unlink_channel(c);
    c->deleted = 1;
    c->idle_since = now;
    root_->nretired += c->count - c->retired;
    c->retired = c->count;
    c->hnext = root_->deleted;
    root_->deleted = c;
    root_->control_gen++;
    release(c);
}

// ---------------------------------------------------------------- events

void store::unlink_message(message *m) {
    // The first write is the commit point: a repair walks the log forwards.
    (m->prev ? m->prev->next : root_->head) = m->next;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    (m->next ? m->next->prev : root_->tail) = m->prev;
    root_->nmessages--;
    root_->message_bytes -= m->size;
}

void store::free_message(message *m) {
    unlink_message(m);
    a_.free(a_.ctx, m);
}

uint64_t store::min_hold() const {
    uint64_t h = 0;
    for (const slot &s : root_->slots) {
        if (s.hold != 0 && (h == 0 || s.hold < h)) {
            h = s.hold;
        }
    }
    return h;
}

bool store::needed(const message *m, uint64_t hold) const {
    if (hold != 0 && m->seq >= hold) {
        return true;
    }
    for (const member *mb = m->chan->members; mb != nullptr; mb = mb->cnext) {
        if (root_->slots[mb->slot].cursor < m->seq) {
            return true;
        }
    }
    return false;
}

void store::retire_oldest(channel *c) {
    message *m = c->at(c->retired);
    // The gap is recorded first: a process killed in between must not leave
    // an event out of resume that a resume from before it does not notice.
    c->dropped_seq = std::max(c->dropped_seq, m->seq);
    root_->dropped_seq = std::max(root_->dropped_seq, m->seq);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    c->retired++;
    root_->nretired++;
}

void store::pop_front(channel *c) {
    message *m = c->at(0);
    if (c->retired == 0) {
        c->dropped_seq = std::max(c->dropped_seq, m->seq);
        root_->dropped_seq = std::max(root_->dropped_seq, m->seq);
    } else {
        c->retired--;
        root_->nretired--;
    }
    c->head = (c->head + 1) % c->cap;
    c->count--;
}

void store::release(channel *c, uint32_t budget) {
    uint64_t hold = c->retired ? min_hold() : 0;
    while (c->retired > 0 && budget-- > 0) {
        message *m = c->at(0);
        if (needed(m, hold)) {
            break;
        }
        pop_front(c);
        free_message(m);
    }
    if (c->deleted && c->count == 0 && c->nsubs == 0) {
        free_channel(c);
    }
}

void store::mark_lost(channel *c, uint64_t seq) {
    c->lost_seq = std::max(c->lost_seq, seq);
    root_->lost_seq = std::max(root_->lost_seq, c->lost_seq);
    root_->stats.lost++;
}

bool store::evict_one(const channel *keep, bool needed_too) {
    uint64_t hold = min_hold();
    // The oldest event no process still needs (kept only for resume), among
    // the first release_budget of the log: only a channel's oldest can go.
    message *m = nullptr;
    uint32_t budget = release_budget;
    for (message *e = root_->head; e != nullptr && budget-- > 0; e = e->next) {
        if (hold != 0 && e->seq >= hold) {
            break;  // a process is copying it and all after it right now
        }
        if (e == e->chan->at(0) && !needed(e, 0)) {
            m = e;
            break;
        }
    }
    if (m == nullptr && needed_too) {
        // The zone's oldest is always its channel's oldest.
        m = root_->head;
        if (m == nullptr || (hold != 0 && m->seq >= hold)) {
            return false;
        }
    }
    if (m == nullptr) {
        return false;
    }
    channel *c = m->chan;
    bool buffered = c->retired == 0;
    // The loss is recorded before the event goes: a process killed in
    // between leaves a loss told of, never a silent one.
    if (needed(m, 0)) {
        mark_lost(c, m->seq);
    }
    root_->stats.evicted += buffered;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    pop_front(c);
    free_message(m);
    if (c->deleted && c->count == 0 && c->nsubs == 0 && c != keep) {
        free_channel(c);
    }
    return true;
}

void *store::alloc_evicting(size_t size, const channel *keep, int64_t now) {
    // Frees one idle channel among the first nb buckets from the sweep's
    // position, whatever its ttl.
    auto free_idle = [&](uint32_t nb) {
        nb = std::min(nb, root_->nbuckets);
        for (uint32_t k = 0; k < nb; k++) {
            uint32_t b = (root_->sweep_pos + k) & (root_->nbuckets - 1);
            channel *next;
            for (channel *c = root_->buckets[b]; c != nullptr; c = next) {
                next = c->hnext;
                if (c != keep && free_channel_if_idle(c, now, true)) {
                    return true;
                }
            }
        }
        return false;
    };
    for (;;) {
        void *p = a_.alloc(a_.ctx, size);
        if (p != nullptr) {
            return p;
        }
        // Cheapest loss first: an event kept only for resume, an idle
        // channel (a bounded look), and only then an event a process has
        // not read yet (its channel's lost_seq tells the process); with no
        // events left at all, any idle channel.
        if (evict_one(keep, false) || free_idle(sweep_buckets) ||
            evict_one(keep, true) || free_idle(root_->nbuckets)) {
            continue;
        }
        return nullptr;
    }
}

bool store::grow_ring(channel *c, int64_t now) {
    uint32_t cap = c->cap ? c->cap * 2 : 4;
    auto *ring = static_cast<message **>(
        alloc_evicting(size_t{cap} * sizeof(message *), c, now));
    if (ring == nullptr) {
        return false;
    }
    // Eviction may have shortened c meanwhile: copy what is there now. Each
    // event goes where both the old cap and the new one look for it with
    // the same head, so that a process killed between the two writes below
    // leaves a ring a repair reads whole (head + i < 2 * old cap).
    for (uint32_t i = 0; i < c->count; i++) {
        ring[(c->head + i) % cap] = c->at(i);
        ring[(c->head + i) % c->cap] = c->at(i);
    }
    message **old = c->ring;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    c->ring = ring;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    c->cap = cap;
    if (old != nullptr) {
        a_.free(a_.ctx, old);
    }
    return true;
}

message *store::prepare(uint32_t si, size_t size, int64_t now) {
    // A message that needs half the zone would evict everything else.
    if (sizeof(message) + size > root_->capacity / 2 || size > UINT32_MAX) {
        return nullptr;
    }
    auto *m = static_cast<message *>(
        alloc_evicting(sizeof(message) + size, nullptr, now));
    if (m == nullptr) {
        return nullptr;
    }
    std::memset(m, 0, sizeof(message));
    m->size = static_cast<uint32_t>(size);
    // On the slot's pending list (via prev/next) until committed, so that
    // the slot's clearing frees it if its process dies meanwhile.
    slot &s = root_->slots[si];
    m->next = s.pending;
    if (s.pending != nullptr) {
        s.pending->prev = m;
    }
    s.pending = m;
    return m;
}

void store::abandon(uint32_t si, message *m) {
    slot &s = root_->slots[si];
    (m->prev ? m->prev->next : s.pending) = m->next;
    if (m->next != nullptr) {
        m->next->prev = m->prev;
    }
    a_.free(a_.ctx, m);
}

publish_status store::commit(uint32_t si, message *m, channel *c, int64_t now,
                             uint32_t buffer_length, int64_t ttl,
                             uint64_t *seq) {
    uint64_t next = root_->seq + 1;
    publish_status st = commit_seq(si, m, c, now, buffer_length, ttl, next);
    if (st == publish_status::ok) {
        *seq = next;
    }
    return st;
}

publish_status store::commit_at(uint32_t si, message *m, channel *c,
                                int64_t now, uint32_t buffer_length,
                                int64_t ttl, uint64_t seq) {
    if (seq <= root_->seq) {
        abandon(si, m);
        return publish_status::duplicate;
    }
    return commit_seq(si, m, c, now, buffer_length, ttl, seq);
}

bool store::adopt_epoch(uint64_t epoch) {
    if (epoch == root_->epoch) {
        return false;
    }
    root_->epoch = epoch;
    for (uint32_t b = 0; b < root_->nbuckets; b++) {
        for (channel *c = root_->buckets[b]; c != nullptr; c = c->hnext) {
            c->dropped_seq = std::max(c->dropped_seq, c->last_seq);
            root_->nretired += c->count - c->retired;
            c->retired = c->count;
        }
    }
    root_->dropped_seq = root_->seq;
    root_->orphan_dropped_seq = root_->seq;
    root_->control_gen++;
    return true;
}

void store::mark_gone(channel *c, uint64_t seq) {
    c->dropped_seq = std::max(c->dropped_seq, seq);
    root_->dropped_seq = std::max(root_->dropped_seq, seq);
    if (c->members != nullptr) {
        c->lost_seq = std::max(c->lost_seq, seq);
        root_->lost_seq = std::max(root_->lost_seq, c->lost_seq);
    }
}

void store::drop_through(channel *c, uint64_t seq) {
    mark_gone(c, seq);
    while (c->retired < c->count && c->at(c->retired)->seq <= seq) {
        retire_oldest(c);
    }
}

bool store::note_prev(channel *c, uint64_t prev) {
    if (prev <= std::max(c->last_seq, c->dropped_seq)) {
        return false;
    }
    drop_through(c, prev);
    return true;
}

void store::skip_to(uint64_t seq) { root_->seq = std::max(root_->seq, seq); }

void store::mark_gone_unheld(uint64_t seq) {
    root_->orphan_dropped_seq = std::max(root_->orphan_dropped_seq, seq);
}

channel *store::make_known(std::string_view id, int64_t now, uint64_t gone,
                           int64_t ttl) {
    channel *c = find(id);
    if (c != nullptr) {
        return c;
    }
    c = find_or_create(id, now);
    if (c != nullptr) {
        c->dropped_seq = gone;
        c->ttl = ttl;
    }
    return c;
}

publish_status store::commit_seq(uint32_t si, message *m, channel *c,
                                 int64_t now, uint32_t buffer_length,
                                 int64_t ttl, uint64_t seq) {
    if (c->deleted) {
        abandon(si, m);
        return publish_status::no_channel;
    }
    slot &s = root_->slots[si];
    (m->prev ? m->prev->next : s.pending) = m->next;
    if (m->next != nullptr) {
        m->next->prev = m->prev;
    }
    m->prev = m->next = nullptr;

    expire(c, now);
    release(c);
    // A failed grow may still have made room: its evictions shorten c too.
    if (c->count == c->cap && !grow_ring(c, now) && c->count == c->cap) {
        // No room for a bigger ring: the channel's oldest makes room.
        message *old = c->count ? c->at(0) : nullptr;
        uint64_t hold = min_hold();
        if (old == nullptr || (hold != 0 && old->seq >= hold)) {
            a_.free(a_.ctx, m);
            return publish_status::no_memory;
        }
        if (needed(old, 0)) {
            mark_lost(c, old->seq);  // first, as in evict_one
        }
        root_->stats.evicted++;
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        pop_front(c);
        free_message(old);
    }

    m->seq = seq;
    m->chan = c;
    m->expires = now + ttl;
    m->prev = root_->tail;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    (root_->tail ? root_->tail->next : root_->head) = m;  // commit point
    root_->tail = m;
    root_->seq = m->seq;
    root_->nmessages++;
    root_->message_bytes += m->size;
    root_->stats.published++;
    c->ring[(c->head + c->count) % c->cap] = m;
    c->count++;
    c->last_seq = m->seq;
    c->published++;
    c->ttl = ttl;
    c->idle_since = now;

    while (c->buffered() > std::max<uint32_t>(buffer_length, 1)) {
        retire_oldest(c);
    }
    release(c);
    return publish_status::ok;
}

void store::expire(channel *c, int64_t now) {
    while (c->buffered() > 0 && c->at(c->retired)->expires <= now) {
        retire_oldest(c);
    }
}

// ---------------------------------------------------------------- reading

namespace {

// Index of the first resumable event of c with seq > after.
uint32_t first_after(const channel *c, uint64_t after) {
    uint32_t lo = c->retired, hi = c->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (c->at(mid)->seq <= after) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// Appends c's resumable events after `after`: at most the newest `limit`,
// and from the oldest of those no more than about max_bytes. Returns the
// seq of the last one appended if it stopped short of c's newest, else 0.
uint64_t collect(const channel *c, uint64_t after, uint32_t limit,
                 size_t max_bytes, std::vector<const message *> &out) {
    uint32_t i = first_after(c, after);
    if (c->count - i > limit) {
        i = c->count - limit;
    }
    size_t bytes = 0;
    for (; i < c->count && bytes <= max_bytes; i++) {
        const message *m = c->at(i);
        out.push_back(m);
        bytes += m->size + reader_overhead;
    }
    return i < c->count ? out.back()->seq : 0;
}

// Past the earliest point where a channel stopped short, the merge of the
// channels misses events: give only what comes before, and say more is
// owed after it.
void cut_merge(std::vector<const message *> &out, uint64_t cut,
               catch_up_result &r) {
    if (cut != 0) {
        while (out.back()->seq > cut) {
            out.pop_back();
        }
        r.more = true;
        r.last_seq = cut;
    }
}

}  // namespace

void store::limit_catch_up(uint32_t si, size_t max_bytes,
                           std::vector<const message *> &out,
                           catch_up_result &r) {
    // The oldest part that fits (always one event); the rest comes later.
    size_t bytes = 0;
    for (size_t i = 0; i < out.size(); i++) {
        bytes += out[i]->size + reader_overhead;
        if (bytes > max_bytes && i > 0) {
            out.resize(i);
            r.more = true;
            r.last_seq = out.back()->seq;
            break;
        }
    }
    if (!out.empty()) {
        root_->slots[si].hold = out.front()->seq;
    }
}

catch_up_result store::catch_up(uint32_t si, channel *const *chans, size_t n,
                                std::string_view resume, uint32_t initial,
                                int64_t now, size_t max_bytes,
                                std::vector<const message *> &out) {
    catch_up_result r{gap_reason::none, root_->epoch, root_->seq, false};
    uint64_t after = 0;
    uint32_t limit = UINT32_MAX;
    if (!resume.empty()) {
        auto id = parse_event_id(resume);
        if (!id) {
            r.gap = gap_reason::malformed;
        } else if (id->epoch != root_->epoch) {
            r.gap = gap_reason::epoch;
        } else if (id->seq > root_->seq && root_->external) {
            // Published elsewhere and not here yet: its events come
            // through the bus; what follows it is live.
            after = id->seq;
            r.last_seq = id->seq;
        } else if (id->seq > root_->seq) {
            r.gap = gap_reason::unknown;
        } else {
            after = id->seq;
        }
        if (r.gap != gap_reason::none) {
            // No exact point: as for a new subscriber.
            limit = initial;
        }
    } else {
        limit = initial;
    }
    for (size_t i = 0; i < n; i++) {
        expire(chans[i], now);
        if (r.gap == gap_reason::none && !resume.empty() &&
            gap(chans[i], after)) {
            r.gap = gap_reason::evicted;
        }
    }
    out.clear();
    if (limit == 0) {
        return r;
    }
    // A channel's byte cut is safe only when nothing is cut by count
    // afterwards: which events are the newest `limit` depends on all.
    size_t channel_bytes = limit == UINT32_MAX ? max_bytes : SIZE_MAX;
    uint64_t cut = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t c = collect(chans[i], after, limit, channel_bytes, out);
        cut = c != 0 && (cut == 0 || c < cut) ? c : cut;
    }
    std::sort(out.begin(), out.end(), [](const message *a, const message *b) {
        return a->seq < b->seq;
    });
    if (out.size() > limit) {
        out.erase(out.begin(), out.end() - limit);
    }
    cut_merge(out, cut, r);
    limit_catch_up(si, max_bytes, out, r);
    return r;
}

catch_up_result store::catch_up_after(uint32_t si, channel *const *chans,
                                      size_t n, uint64_t after,
                                      size_t max_bytes,
                                      std::vector<const message *> &out) {
    catch_up_result r{gap_reason::none, root_->epoch, root_->seq, false};
    out.clear();
    for (size_t i = 0; i < n; i++) {
        if (gap(chans[i], after)) {
            r.gap = gap_reason::evicted;
            return r;
        }
    }
    uint64_t cut = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t c = collect(chans[i], after, UINT32_MAX, max_bytes, out);
        cut = c != 0 && (cut == 0 || c < cut) ? c : cut;
    }
    std::sort(out.begin(), out.end(), [](const message *a, const message *b) {
        return a->seq < b->seq;
    });
    cut_merge(out, cut, r);
    limit_catch_up(si, max_bytes, out, r);
    return r;
}

uint64_t store::read_since_cursor_fn(uint32_t si,
                                     void (*f)(void *ctx, const message *m),
                                     void *ctx) {
    slot &s = root_->slots[si];
    s.hold = s.cursor + 1;
    message *m = root_->tail;
    if (m != nullptr && m->seq > s.cursor) {
        while (m->prev != nullptr && m->prev->seq > s.cursor) {
            m = m->prev;
        }
        for (; m != nullptr; m = m->next) {
            f(ctx, m);
        }
    }
    return root_->seq;
}

void store::end_read(uint32_t si, uint64_t cursor, channel *const *chans,
                     size_t n, uint32_t budget) {
    slot &s = root_->slots[si];
    s.hold = 0;
    if (cursor > s.cursor) {
        // Read unlocked by publishers waiting for it (peek_cursor).
        __atomic_store_n(&s.cursor, cursor, __ATOMIC_RELAXED);
    }
    for (size_t i = 0; i < n; i++) {
        release(chans[i], budget);
    }
}

bool store::release_deleted(uint32_t budget) {
    bool more = false;
    channel *next;
    for (channel *c = root_->deleted; c != nullptr; c = next) {
        next = c->hnext;  // c may be freed
        release(c, budget);
    }
    for (channel *c = root_->deleted; c != nullptr; c = c->hnext) {
        if (c->retired > 0 && c->nsubs == 0) {
            more = true;
        }
    }
    return more;
}

// ---------------------------------------------------------------- upkeep

void store::sweep(int64_t now) {
    root_->last_sweep = now;
    uint32_t nb = std::min(sweep_buckets, root_->nbuckets);
    for (uint32_t k = 0; k < nb; k++) {
        uint32_t b = (root_->sweep_pos + k) & (root_->nbuckets - 1);
        channel *next;
        for (channel *c = root_->buckets[b]; c != nullptr; c = next) {
            next = c->hnext;  // c may be freed
            expire(c, now);
            release(c);
            free_channel_if_idle(c, now, false);
        }
    }
    root_->sweep_pos = (root_->sweep_pos + nb) & (root_->nbuckets - 1);
    release_deleted();
}

// ---------------------------------------------------------------- checks

std::string store::check() const {
    const zone_root *r = root_;
    auto fail = [](const std::string &what) { return what; };
    if (a_.rebuildable != nullptr && *a_.rebuildable->check() != '\0') {
        return a_.rebuildable->check();
    }
    // The log.
    uint64_t n = 0, bytes = 0, last = 0;
    const message *prev = nullptr;
    std::unordered_set<const message *> logged;
    for (const message *m = r->head; m != nullptr; m = m->next) {
        if (++n > r->nmessages + 1) {
            return fail("log longer than nmessages (or a cycle)");
        }
        if (m->prev != prev) {
            return fail("log prev link broken at seq " +
                        std::to_string(m->seq));
        }
        if (m->seq <= last || m->seq > r->seq) {
            return fail("log seq out of order at " + std::to_string(m->seq));
        }
        if (m->chan == nullptr) {
            return fail("logged event without channel");
        }
        last = m->seq;
        bytes += m->size;
        prev = m;
        logged.insert(m);
    }
    if (r->tail != prev) {
        return fail("log tail wrong");
    }
    if (n != r->nmessages) {
        return fail("nmessages " + std::to_string(r->nmessages) + " but " +
                    std::to_string(n) + " events in the log");
    }
    if (bytes != r->message_bytes) {
        return fail("message_bytes " + std::to_string(r->message_bytes) +
                    " but " + std::to_string(bytes) + " in the log");
    }
    // Channels, rings and members.
    uint64_t in_rings = 0, nchannels = 0, members = 0, retired = 0;
    uint64_t per_slot[max_slots] = {};
    auto check_channel = [&](const channel *c, bool deleted) -> std::string {
        std::string id(c->id());
        if (bool(c->deleted) != deleted) {
            return "channel " + id + ": deleted flag wrong";
        }
        if (c->retired > c->count || c->count > c->cap ||
            (c->cap != 0 && c->ring == nullptr)) {
            return "channel " + id + ": ring counts wrong";
        }
        uint64_t s = 0;
        for (uint32_t i = 0; i < c->count; i++) {
            const message *m = c->at(i);
            if (logged.count(m) == 0 || m->chan != c || m->seq <= s) {
                return "channel " + id + ": ring entry " + std::to_string(i) +
                       " not its event in the log";
            }
            s = m->seq;
        }
        in_rings += c->count;
        retired += c->retired;
        uint32_t subs = 0, k = 0;
        for (const member *mb = c->members; mb != nullptr; mb = mb->cnext) {
            if (++k > max_slots || mb->chan != c || mb->slot >= max_slots ||
                mb->count == 0 || r->slots[mb->slot].pid == 0) {
                return "channel " + id + ": member list broken";
            }
            subs += mb->count;
            per_slot[mb->slot] += mb->count;
            members++;
        }
        if (subs != c->nsubs) {
            return "channel " + id + ": nsubs " + std::to_string(c->nsubs) +
                   " but members hold " + std::to_string(subs);
        }
        return "";
    };
    for (uint32_t b = 0; b < r->nbuckets; b++) {
        for (const channel *c = r->buckets[b]; c != nullptr; c = c->hnext) {
            if (++nchannels > r->nchannels + 1) {
                return fail("more channels than nchannels (or a cycle)");
            }
            if ((c->hash & (r->nbuckets - 1)) != b) {
                return fail("channel in the wrong bucket");
            }
            std::string e = check_channel(c, false);
            if (!e.empty()) {
                return e;
            }
        }
    }
    if (nchannels != r->nchannels) {
        return fail("nchannels " + std::to_string(r->nchannels) + " but " +
                    std::to_string(nchannels) + " in the table");
    }
    uint64_t k = 0;
    for (const channel *c = r->deleted; c != nullptr; c = c->hnext) {
        if (++k > 1000000) {
            return fail("deleted list cycles");
        }
        std::string e = check_channel(c, true);
        if (!e.empty()) {
            return e;
        }
    }
    if (retired != r->nretired) {
        return fail("nretired " + std::to_string(r->nretired) + " but " +
                    std::to_string(retired) + " retired in rings");
    }
    if (in_rings != n) {
        return fail(std::to_string(n) + " events in the log but " +
                    std::to_string(in_rings) + " in rings");
    }
    uint64_t slot_members = 0;
    for (uint32_t i = 0; i < max_slots; i++) {
        const slot &s = r->slots[i];
        uint64_t subs = 0, j = 0;
        const member *p = nullptr;
        for (const member *mb = s.members; mb != nullptr; mb = mb->snext) {
            if (++j > members + 1 || mb->slot != i || mb->sprev != p) {
                return fail("slot " + std::to_string(i) +
                            ": member list broken");
            }
            subs += mb->count;
            p = mb;
            slot_members++;
        }
        if (subs != s.subscriptions || subs != per_slot[i]) {
            return fail("slot " + std::to_string(i) + ": subscriptions " +
                        std::to_string(s.subscriptions) + " but members " +
                        "hold " + std::to_string(subs) + "/" +
                        std::to_string(per_slot[i]));
        }
        if (s.pid == 0 && (s.members != nullptr || s.pending != nullptr)) {
            return fail("free slot " + std::to_string(i) + " holds state");
        }
    }
    if (slot_members != members) {
        return fail("slots and channels disagree on members");
    }
    uint64_t naux = 0;
    const aux_block *aprev = nullptr;
    for (const aux_block *b = r->aux; b != nullptr; b = b->next) {
        if (++naux > r->capacity / sizeof(aux_block) || b->prev != aprev) {
            return fail("glue block list broken");
        }
        aprev = b;
    }
    return "";
}

template <typename F>
void store::for_each_block(F &&f) const {
    const zone_root *r = root_;
    f(r, sizeof(zone_root));
    f(r->buckets, size_t{r->nbuckets} * sizeof(channel *));
    auto chan = [&](const channel *c) {
        f(c, sizeof(channel) + c->id_len);
        if (c->ring != nullptr) {
            f(c->ring, size_t{c->cap} * sizeof(message *));
        }
        for (const member *mb = c->members; mb != nullptr; mb = mb->cnext) {
            f(mb, sizeof(member));
        }
    };
    for (uint32_t b = 0; b < r->nbuckets; b++) {
        for (const channel *c = r->buckets[b]; c != nullptr; c = c->hnext) {
            chan(c);
        }
    }
    for (const channel *c = r->deleted; c != nullptr; c = c->hnext) {
        chan(c);
    }
    for (const message *m = r->head; m != nullptr; m = m->next) {
        f(m, sizeof(message) + m->size);
    }
    for (const slot &s : r->slots) {
        for (const message *m = s.pid ? s.pending : nullptr; m != nullptr;
             m = m->next) {
            f(m, sizeof(message) + m->size);
        }
    }
    for (const aux_block *b = r->aux; b != nullptr; b = b->next) {
        f(b, sizeof(aux_block) + b->size);
    }
}

// More events than one process prepares at once (a streamed publish's
// batch); a longer pending list is a cycle.
constexpr uint32_t max_pending_repair = 1u << 20;

void store::repair() {
    zone_root *r = root_;
    r->stats.repairs++;
    try {
        // 1. The log, forwards from its head: every unlink and append has
        //    its commit point on a forward link.
        std::unordered_set<message *> logged;
        message *prev = nullptr;
        uint64_t n = 0, bytes = 0;
        for (message *m = r->head; m != nullptr; m = m->next) {
            if ((prev != nullptr && m->seq <= prev->seq) ||
                m->chan == nullptr) {
                // Whatever follows cannot be trusted: cut the log here.
                (prev ? prev->next : r->head) = nullptr;
                break;
            }
            m->prev = prev;
            logged.insert(m);
            n++;
            bytes += m->size;
            prev = m;
        }
        r->tail = prev;
        if (prev != nullptr && prev->seq > r->seq) {
            r->seq = prev->seq;
        }

        // 2. Channels: the table and the deleted list.
        std::unordered_set<channel *> chans;
        std::vector<channel *> order;
        uint32_t nchannels = 0;
        for (uint32_t b = 0; b < r->nbuckets; b++) {
            for (channel **p = &r->buckets[b]; *p != nullptr;) {
                channel *c = *p;
                if (!chans.insert(c).second) {
                    *p = nullptr;  // a cycle
                    break;
                }
                c->deleted = 0;
                order.push_back(c);
                nchannels++;
                p = &c->hnext;
            }
        }
        for (channel **p = &r->deleted; *p != nullptr;) {
            channel *c = *p;
            if (!chans.insert(c).second) {
                *p = nullptr;
                break;
            }
            c->deleted = 1;
            order.push_back(c);
            p = &c->hnext;
        }
        r->nchannels = nchannels;
        // A channel on neither list was being moved from the table to the
        // deleted list by remove(): its events and its members' records
        // still point to it. Finish the removal, or they would be lost
        // silently (a channel that free_channel() was unlinking has
        // neither, and stays lost).
        auto adopt = [&](channel *c) {
            if (c != nullptr && chans.insert(c).second) {
                c->deleted = 1;
                c->hnext = r->deleted;
                r->deleted = c;
                order.push_back(c);
                r->control_gen++;
            }
        };
        for (message *m : logged) {
            adopt(m->chan);
        }
        for (uint32_t i = 0; i < max_slots; i++) {
            std::unordered_set<member *> seen;
            for (member *mb = r->slots[i].pid ? r->slots[i].members : nullptr;
                 mb != nullptr && mb->slot == i && seen.insert(mb).second;
                 mb = mb->snext) {
                adopt(mb->chan);
            }
        }

        // 3. Rings keep only their own logged events, in order; members
        //    only sane ones of live slots.
        std::unordered_set<message *> ringed;
        std::vector<message *> keep;
        uint64_t nretired = 0;
        for (channel *c : order) {
            keep.clear();
            uint32_t retired = 0;
            uint64_t last = 0;
            for (uint32_t i = 0; i < c->count && c->cap != 0; i++) {
                message *m = c->at(i);
                if (logged.count(m) && m->chan == c && m->seq > last) {
                    keep.push_back(m);
                    retired += i < c->retired;
                    last = m->seq;
                }
            }
            for (uint32_t i = 0; i < keep.size(); i++) {
                c->ring[i] = keep[i];
                ringed.insert(keep[i]);
            }
            c->head = 0;
            c->count = static_cast<uint32_t>(keep.size());
            // A deleted channel keeps nothing for resume.
            c->retired = c->deleted ? c->count : retired;
            nretired += c->retired;
            uint32_t subs = 0;
            for (member **p = &c->members; *p != nullptr;) {
                member *mb = *p;
                if (mb->chan != c || mb->slot >= max_slots || mb->count == 0 ||
                    r->slots[mb->slot].pid == 0) {
                    *p = mb->cnext;  // left unfreed: it may be garbage
                    continue;
                }
                subs += mb->count;
                p = &mb->cnext;
            }
            c->nsubs = subs;
        }

        // 4. Logged events no ring holds: their removal was under way.
        for (message *m : logged) {
            if (!ringed.count(m)) {
                // Someone subscribed had not read it: tell, never hide.
                if (chans.count(m->chan) && needed(m, 0)) {
                    mark_lost(m->chan, m->seq);
                }
                n--;
                bytes -= m->size;
                (m->prev ? m->prev->next : r->head) = m->next;
                (m->next ? m->next->prev : r->tail) = m->prev;
                if (a_.rebuildable == nullptr) {
                    a_.free(a_.ctx, m);  // else the rebuild below frees it
                }
            }
        }
        r->nmessages = n;
        r->nretired = nretired;
        r->message_bytes = bytes;

        // 5. The slots' member lists, rebuilt from the channels'.
        for (slot &s : r->slots) {
            s.members = nullptr;
            s.subscriptions = 0;
        }
        for (channel *c : order) {
            for (member *mb = c->members; mb != nullptr; mb = mb->cnext) {
                slot &s = r->slots[mb->slot];
                mb->sprev = nullptr;
                mb->snext = s.members;
                if (s.members != nullptr) {
                    s.members->sprev = mb;
                }
                s.members = mb;
                s.subscriptions += mb->count;
            }
        }

        // 6. Prepared events: only their own process changes a pending
        //    list, so a broken one belongs to the dead; its slot's clearing
        //    walks it forwards. Set its back links straight for that.
        for (slot &s : r->slots) {
            message *prev = nullptr;
            uint32_t k = 0;
            for (message **p = s.pid ? &s.pending : nullptr;
                 p != nullptr && *p != nullptr; p = &(*p)->next) {
                if (++k > max_pending_repair) {
                    *p = nullptr;  // a cycle: cut it
                    break;
                }
                (*p)->prev = prev;
                prev = *p;
            }
        }

        // 7. The glue's blocks: forwards from the head, where every change
        //    has its commit point; back links set straight.
        {
            std::unordered_set<aux_block *> seen;
            aux_block *prev = nullptr;
            for (aux_block **p = &r->aux; *p != nullptr; p = &(*p)->next) {
                if (!seen.insert(*p).second) {
                    *p = nullptr;  // a cycle: cut it
                    break;
                }
                (*p)->prev = prev;
                prev = *p;
            }
        }

        // 8. The allocator, laid out anew from what the zone holds: the
        //    dead process may have been inside it, and whatever it had
        //    allocated and not yet linked is free again.
        if (a_.rebuildable != nullptr) {
            a_.rebuildable->rebuild(
                [this](auto &&mark) { for_each_block(mark); });
        }
    } catch (...) {
        // Out of process memory: the next session tries again.
        return;
    }
}

}  // namespace sse
