// Store operation sequences (src/store.hpp): four processes, each with its
// slot, join and leave channels, publish in two sessions (prepare, write
// outside the lock, commit or abandon), read live from their cursor and
// catch up from resume points (in parts, at a byte limit) with the copying
// done between two sessions while the others carry on, delete channels,
// sweep, let time pass, and die: between sessions, or inside one at its
// n-th allocation or free (the lock forced open, the zone marked
// interrupted: the next session repairs it), their slot then cleared. All
// in a small zone so that eviction is common. After every step:
//   - store::check() finds every invariant of the zone's structures intact;
//   - the allocator saw no double or foreign free;
// and along the way:
//   - events held for a read keep their bytes until end_read (ASan would
//     catch a free, the check catches an overwrite);
//   - a live reader gets, in seq order, every event of its channels
//     published while it was subscribed, unless the channel's lost_seq says
//     memory exhaustion freed it first;
//   - catch-up returns only events of the asked channels, in seq order,
//     newer than an exact resume point;
//   - at the end, with every slot cleared and time run out, the zone holds
//     no channel and no event: nothing is pinned.
//
// Input: a byte code of operations (FuzzedDataProvider), any bytes valid.

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "fuzz_check.hpp"
#include "store_layout.hpp"

namespace {

// FUZZ_TRACE=1 build/fuzz/fuzz_store CRASH prints the steps of one input.
const bool tracing = std::getenv("FUZZ_TRACE") != nullptr;
#define TRACE(...)                             \
    do {                                       \
        if (tracing) {                         \
            std::fprintf(stderr, __VA_ARGS__); \
        }                                      \
    } while (0)

struct killed {};

// malloc with a byte budget; every pointer tracked.
struct counting_allocator {
    size_t limit = 0;
    size_t bytes = 0;
    std::unordered_map<void *, size_t> live;
    uint32_t kill_in = 0;  // nonzero: the process dies at that call

    // The process calling dies here (a SIGKILL, the OOM killer): thrown,
    // caught by the harness, which leaves the zone as the kill would.
    void maybe_die() {
        if (kill_in != 0 && --kill_in == 0) {
            throw killed{};
        }
    }

    static void *alloc(void *ctx, size_t size) {
        auto *self = static_cast<counting_allocator *>(ctx);
        self->maybe_die();
        if (size > self->limit || self->bytes > self->limit - size) {
            return nullptr;
        }
        void *p = std::malloc(size);
        FUZZ_CHECK(p != nullptr);
        self->live[p] = size;
        self->bytes += size;
        return p;
    }
    static void release(void *ctx, void *p) {
        auto *self = static_cast<counting_allocator *>(ctx);
        self->maybe_die();
        auto it = self->live.find(p);
        FUZZ_CHECK(it != self->live.end());  // double or foreign free
        self->bytes -= it->second;
        self->live.erase(it);
        std::free(p);
    }
    ~counting_allocator() {
        for (auto &kv : live) {
            std::free(kv.first);
        }
    }
    sse::allocator get() { return {this, &alloc, &release, nullptr}; }
};

struct fake_mutex {
    bool held = false;
    static void lock(void *ctx) {
        auto *m = static_cast<fake_mutex *>(ctx);
        FUZZ_CHECK(!m->held);  // sessions never nest
        m->held = true;
    }
    static void unlock(void *ctx) {
        auto *m = static_cast<fake_mutex *>(ctx);
        FUZZ_CHECK(m->held);
        m->held = false;
    }
    sse::mutex get() { return {this, &lock, &unlock}; }
};

const char *const channel_names[] = {"a",       "b",      "c",          "news",
                                     "room/42", "user:7", "x.y@z~w-v_u"};
constexpr size_t nnames = sizeof(channel_names) / sizeof(channel_names[0]);
constexpr uint32_t nslots = 4;

// The bytes a publish writes: its tag (a counter), then bytes derived from
// it; checked whenever a reader copies the event.
char pattern(uint64_t tag, size_t i) {
    return static_cast<char>('a' + (tag * 7 + i) % 26);
}
constexpr size_t min_body = sizeof(uint64_t);

struct subscriber {
    std::vector<sse::channel *> chans;
};

struct held_read {
    bool live = false;
    uint64_t to = 0;    // live: the cursor end_read moves to
    bool more = false;  // catch-up: stopped at max_bytes after `to`
    size_t max_bytes = 0;
    std::vector<const sse::message *> msgs;
    std::vector<sse::channel *> chans;  // passed to end_read
};

struct process {
    uint32_t slot = sse::no_slot;
    std::vector<subscriber> subs;
    bool reading = false;
    held_read read;
    // Between prepare and commit: the event, and where it goes (nullptr:
    // it will be abandoned).
    sse::message *prepared = nullptr;
    const char *commit_to = nullptr;
    uint32_t length = 0;
    int64_t ttl = 0;
    // Live expectations: channel -> seqs published while subscribed.
    std::map<sse::channel *, std::vector<uint64_t>> owed;

    bool member_of(const sse::channel *c) const {
        for (const auto &s : subs) {
            for (auto *x : s.chans) {
                if (x == c) {
                    return true;
                }
            }
        }
        return false;
    }
    std::vector<sse::channel *> all_chans() const {
        std::vector<sse::channel *> out;
        for (const auto &s : subs) {
            for (auto *c : s.chans) {
                if (std::find(out.begin(), out.end(), c) == out.end()) {
                    out.push_back(c);
                }
            }
        }
        return out;
    }
};

struct harness {
    counting_allocator mem;
    fake_mutex mx;
    sse::zone_root *root = nullptr;
    int64_t now = 1000;
    uint64_t next_tag = 1;
    std::unordered_map<uint64_t, size_t> size_of;  // tag -> body size
    process procs[nslots];
    int32_t next_pid = 100;

    sse::session session() { return sse::session(root, mem.get(), mx.get()); }

    void check() {
        auto s = session();
        std::string what = s->check();
        if (!what.empty()) {
            std::fprintf(stderr, "store::check: %s\n", what.c_str());
        }
        FUZZ_CHECK(what.empty());
    }

    void check_body(const sse::message *m) {
        uint64_t tag;
        FUZZ_CHECK(m->size >= min_body);
        std::memcpy(&tag, m->bytes(), sizeof(tag));
        auto it = size_of.find(tag);
        FUZZ_CHECK(it != size_of.end());
        FUZZ_CHECK(m->size == it->second);
        for (size_t i = min_body; i < m->size; i++) {
            FUZZ_CHECK(m->bytes()[i] == pattern(tag, i));
        }
    }

    // What the process was in the middle of, finished: its copies made.
    void finish(process &p) {
        while (p.reading) {
            for (const auto *m : p.read.msgs) {
                check_body(m);
            }
            {
                auto s = session();
                s->end_read(p.slot, p.read.live ? p.read.to : 0,
                            p.read.chans.data(), p.read.chans.size());
            }
            p.reading = false;
            if (!p.read.more) {
                p.read = held_read{};
                break;
            }
            // The rest of a catch-up, once the first part is written.
            held_read r;
            r.chans = std::move(p.read.chans);
            r.max_bytes = p.read.max_bytes;
            uint64_t after = p.read.to;
            sse::catch_up_result res;
            {
                auto s = session();
                res = s->catch_up_after(p.slot, r.chans.data(), r.chans.size(),
                                        after, r.max_bytes, r.msgs);
            }
            check_caught_up(r, after);
            r.more = res.more;
            r.to = res.last_seq;
            p.read = std::move(r);
            p.reading = true;
        }
        if (p.prepared != nullptr && p.commit_to != nullptr) {
            commit(p);
        } else if (p.prepared != nullptr) {
            auto s = session();
            s->abandon(p.slot, p.prepared);
            p.prepared = nullptr;
        }
    }

    process *claimed(uint8_t k) {
        process &p = procs[k % nslots];
        if (p.slot == sse::no_slot) {
            auto s = session();
            p.slot = s->claim_slot(next_pid++, k % nslots);
            FUZZ_CHECK(p.slot != sse::no_slot);
        }
        return &p;
    }

    void die(process &p) {
        if (p.slot == sse::no_slot) {
            return;
        }
        // Killed: nothing of its own is finished, its slot is cleared.
        {
            auto s = session();
            s->clear_slot(p.slot, now);
        }
        p = process{};
    }

    std::vector<std::string_view> pick_ids(FuzzedDataProvider &in) {
        std::vector<std::string_view> ids;
        unsigned mask = in.ConsumeIntegralInRange<unsigned>(1, 127);
        for (size_t i = 0; i < nnames; i++) {
            if (mask & (1u << i)) {
                ids.push_back(channel_names[i]);
            }
        }
        return ids;
    }

    void join(process &p, FuzzedDataProvider &in) {
        auto ids = pick_ids(in);
        uint32_t max_subs = in.ConsumeIntegralInRange<uint32_t>(0, 4);
        subscriber sub;
        sub.chans.reserve(ids.size());
        sse::join_status st;
        {
            auto s = session();
            st = s->join(p.slot, ids, max_subs, now, sub.chans);
        }
        TRACE("  join %zu channels: %d\n", ids.size(), static_cast<int>(st));
        if (st != sse::join_status::ok) {
            FUZZ_CHECK(sub.chans.empty());
            return;
        }
        FUZZ_CHECK(sub.chans.size() == ids.size());
        for (size_t i = 0; i < ids.size(); i++) {
            FUZZ_CHECK(sub.chans[i]->id() == ids[i]);
            FUZZ_CHECK(!sub.chans[i]->deleted);
        }
        p.subs.push_back(std::move(sub));
    }

    void leave(process &p, size_t which) {
        if (p.subs.empty()) {
            return;
        }
        subscriber sub = std::move(p.subs[which % p.subs.size()]);
        p.subs.erase(p.subs.begin() + which % p.subs.size());
        {
            auto s = session();
            s->leave(p.slot, sub.chans.data(), sub.chans.size(), now);
        }
        for (auto *c : sub.chans) {
            if (!p.member_of(c)) {
                p.owed.erase(c);  // it may be freed from now on
            }
        }
    }

    void publish(process &p, FuzzedDataProvider &in) {
        size_t size = in.ConsumeIntegralInRange<size_t>(min_body, 700);
        // Committed at once, or after other processes ran, or abandoned.
        int how = in.ConsumeIntegralInRange<int>(0, 2);
        p.commit_to = how == 2
                          ? nullptr
                          : channel_names[in.ConsumeIntegralInRange<size_t>(
                                0, nnames - 1)];
        p.length = in.ConsumeIntegralInRange<uint32_t>(1, 6);
        p.ttl = in.ConsumeIntegralInRange<int64_t>(1, 5000);
        {
            auto s = session();
            p.prepared = s->prepare(p.slot, size, now);
        }
        if (p.prepared == nullptr) {
            return;
        }
        uint64_t tag = next_tag++;
        size_of[tag] = size;
        std::memcpy(p.prepared->bytes(), &tag, sizeof(tag));
        for (size_t i = min_body; i < size; i++) {
            p.prepared->bytes()[i] = pattern(tag, i);
        }
        if (how == 0) {
            commit(p);
        }
    }

    void commit(process &p) {
        uint64_t seq = 0;
        sse::publish_status st;
        sse::channel *c;
        {
            auto s = session();
            c = s->find_or_create(p.commit_to, now);
            if (c == nullptr) {
                s->abandon(p.slot, p.prepared);
                p.prepared = nullptr;
                p.commit_to = nullptr;
                return;
            }
            st = s->commit(p.slot, p.prepared, c, now, p.length, p.ttl, &seq);
        }
        p.prepared = nullptr;
        p.commit_to = nullptr;
        if (st != sse::publish_status::ok) {
            return;
        }
        FUZZ_CHECK(seq == root->seq);
        TRACE("  committed seq %llu to %s\n", (unsigned long long)seq,
              std::string(c->id()).c_str());
        for (auto &q : procs) {
            if (q.slot != sse::no_slot && q.member_of(c)) {
                q.owed[c].push_back(seq);
            }
        }
    }

    void read_live(process &p) {
        held_read r;
        r.live = true;
        uint64_t from = root->slots[p.slot].cursor;
        uint64_t last = from;
        {
            auto s = session();
            r.to = s->read_since_cursor(p.slot, [&](const sse::message *m) {
                FUZZ_CHECK(m->seq > last);
                last = m->seq;
                if (p.member_of(m->chan)) {
                    r.msgs.push_back(m);
                }
            });
        }
        FUZZ_CHECK(r.to >= from && r.to == root->seq);
        TRACE("  read live after %llu to %llu:", (unsigned long long)from,
              (unsigned long long)r.to);
        for (const auto *m : r.msgs) {
            TRACE(" %llu", (unsigned long long)m->seq);
        }
        TRACE("\n");
        // Everything owed up to `to` came, unless lost to memory.
        for (auto &[c, seqs] : p.owed) {
            std::vector<uint64_t> rest;
            for (uint64_t q : seqs) {
                if (q > r.to) {
                    rest.push_back(q);
                    continue;
                }
                bool got = false;
                for (const auto *m : r.msgs) {
                    got = got || (m->seq == q && m->chan == c);
                }
                if (!got) {
                    TRACE("  seq %llu of %s not read; lost_seq %llu\n",
                          (unsigned long long)q, std::string(c->id()).c_str(),
                          (unsigned long long)c->lost_seq);
                }
                FUZZ_CHECK(got || c->lost_seq >= q);
            }
            seqs = std::move(rest);
        }
        r.chans = p.all_chans();
        p.read = std::move(r);
        p.reading = true;
    }

    void catch_up(process &p, FuzzedDataProvider &in) {
        if (p.subs.empty()) {
            return;
        }
        const subscriber &sub =
            p.subs[in.ConsumeIntegralInRange<size_t>(0, p.subs.size() - 1)];
        std::string resume;
        uint64_t after = 0;
        switch (in.ConsumeIntegralInRange<int>(0, 3)) {
            case 0:
                break;  // none: initial events
            case 1:
                resume = "junk";
                break;
            case 2: {
                after = in.ConsumeIntegralInRange<uint64_t>(0, root->seq + 1);
                resume =
                    std::to_string(root->epoch) + "-" + std::to_string(after);
                break;
            }
            default:
                resume = std::to_string(root->epoch + 1) + "-1";
                break;
        }
        uint32_t initial = in.ConsumeIntegralInRange<uint32_t>(0, 5);
        size_t max_bytes = in.ConsumeIntegralInRange<size_t>(1, 3000);
        held_read r;
        r.chans = sub.chans;
        sse::catch_up_result res;
        {
            auto s = session();
            res = s->catch_up(p.slot, sub.chans.data(), sub.chans.size(),
                              resume, initial, now, max_bytes, r.msgs);
        }
        // From the resume point (exact, or with events missing since), or
        // else as a new subscriber: the newest `initial`.
        bool from_point =
            !resume.empty() && (res.gap == sse::gap_reason::none ||
                                res.gap == sse::gap_reason::evicted);
        check_caught_up(r, from_point ? after : 0);
        if (!from_point) {
            FUZZ_CHECK(r.msgs.size() <= initial);
        }
        r.more = res.more;
        r.to = res.last_seq;
        r.max_bytes = max_bytes;
        if (res.more) {
            FUZZ_CHECK(!r.msgs.empty() && r.to == r.msgs.back()->seq);
        }
        p.read = std::move(r);
        p.reading = true;
    }

    // Catch-up gives events of the asked channels only, in seq order,
    // after `after`.
    void check_caught_up(const held_read &r, uint64_t after) {
        uint64_t last = after;
        for (const auto *m : r.msgs) {
            FUZZ_CHECK(m->seq > last);
            last = m->seq;
            FUZZ_CHECK(std::find(r.chans.begin(), r.chans.end(), m->chan) !=
                       r.chans.end());
        }
    }

    void remove(FuzzedDataProvider &in) {
        const char *id =
            channel_names[in.ConsumeIntegralInRange<size_t>(0, nnames - 1)];
        auto s = session();
        sse::channel *c = s->find(id);
        if (c != nullptr) {
            s->remove(c, now);
        }
    }
};

// One step of process p (claimed); op < 240.
void step(harness &h, process &p, uint8_t op, FuzzedDataProvider &in) {
    switch (op % 16) {
        case 9:  // killed between sessions, whatever it was doing
            TRACE("slot %u dies\n", p.slot);
            h.die(p);
            return;
        case 12:  // killed at the end of a session: the next one repairs
            TRACE("slot %u dies at the end of a session\n", p.slot);
            h.root->dirty = 1;
            h.die(p);
            return;
        default:
            break;
    }
    // A process does one thing at a time: what it began (other processes
    // ran meanwhile), it finishes first.
    h.finish(p);
    TRACE("slot %u op %u\n", p.slot, op % 16u);
    switch (op % 16) {
        case 0:
        case 1:
        case 2:
            h.join(p, in);
            break;
        case 3:
            h.leave(p, in.ConsumeIntegral<uint8_t>());
            break;
        case 4:
        case 5:
        case 6:
            h.publish(p, in);
            break;
        case 7:
        case 8:
            h.read_live(p);
            break;
        case 10:
            h.catch_up(p, in);
            break;
        case 11:
            h.remove(in);
            break;
        case 13: {
            auto s = h.session();
            if (in.ConsumeBool()) {
                s->sweep(h.now);
            } else {
                s->release_deleted(in.ConsumeIntegralInRange<uint32_t>(1, 8));
            }
            break;
        }
        default:
            h.now += in.ConsumeIntegralInRange<int64_t>(0, 3000);
            break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    FuzzedDataProvider in(bytes, size);
    harness h;
    h.mem.limit = in.ConsumeIntegralInRange<size_t>(8 << 10, 256 << 10);
    h.root = sse::store::create(h.mem.get(), 1764590000, h.mem.limit);
    if (h.root == nullptr) {
        return 0;
    }
    uint32_t kill_in = 0;
    for (int n = 0; n < 400 && in.remaining_bytes() > 0; n++) {
        uint8_t op = in.ConsumeIntegral<uint8_t>();
        process &p = *h.claimed(in.ConsumeIntegral<uint8_t>());
        if (op >= 240) {
            // The next step's process dies at its n-th allocation or free.
            kill_in = 1 + op % 8;
            continue;
        }
        h.mem.kill_in = kill_in;
        kill_in = 0;
        try {
            step(h, p, op, in);
        } catch (const killed &) {
            TRACE("  killed inside a session\n");
            // Unwinding ran the session's destructor, which a kill would
            // not have: the zone stays marked interrupted, and nginx forces
            // the dead process's lock open. Its slot is cleared.
            h.root->dirty = 1;
            h.mx.held = false;
            h.mem.kill_in = 0;
            h.die(p);
        }
        h.mem.kill_in = 0;
        h.check();
    }

    // Everyone gone and every ttl over: nothing may stay pinned.
    for (auto &p : h.procs) {
        h.die(p);
    }
    h.now += 1000000;
    {
        auto s = h.session();
        for (uint32_t i = 0; i * sse::sweep_buckets <= h.root->nbuckets; i++) {
            s->sweep(h.now);
        }
        while (s->release_deleted()) {
        }
    }
    h.check();
    FUZZ_CHECK(h.root->nchannels == 0);
    FUZZ_CHECK(h.root->nmessages == 0);
    FUZZ_CHECK(h.root->deleted == nullptr);
    return 0;
}
