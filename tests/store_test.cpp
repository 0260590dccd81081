// The channel store over a plain counting allocator: seqs, rings, resume,
// expiry, deletion, zone-full eviction and leaks.
#include "store.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace {

// malloc/free that counts what is live and fails past a byte limit.
class counting_allocator {
public:
    explicit counting_allocator(size_t limit) : limit_(limit) {}
    counting_allocator(const counting_allocator &) = delete;
    counting_allocator &operator=(const counting_allocator &) = delete;
    ~counting_allocator() {
        for (auto &kv : live_) {
            std::free(kv.first);
        }
    }

    sse::allocator get() { return {this, &alloc, &release}; }
    size_t outstanding() const { return live_.size(); }
    size_t bytes() const { return bytes_; }
    size_t failures() const { return failures_; }
    void set_limit(size_t limit) { limit_ = limit; }

private:
    static void *alloc(void *ctx, size_t size) {
        auto *self = static_cast<counting_allocator *>(ctx);
        if (size > self->limit_ || self->bytes_ > self->limit_ - size) {
            self->failures_++;
            return nullptr;
        }
        void *p = std::malloc(size);
        self->live_[p] = size;
        self->bytes_ += size;
        return p;
    }

    static void release(void *ctx, void *p) {
        auto *self = static_cast<counting_allocator *>(ctx);
        auto it = self->live_.find(p);
        if (it == self->live_.end()) {
            ADD_FAILURE() << "free of a pointer not allocated (or twice)";
            return;
        }
        self->bytes_ -= it->second;
        self->live_.erase(it);
        std::free(p);
    }

    size_t limit_;
    size_t bytes_ = 0;
    size_t failures_ = 0;
    std::map<void *, size_t> live_;
};

constexpr int64_t long_ttl = 3600 * 1000;

// A zone over its own allocator, with shorthands for the tests.
struct zone {
    explicit zone(size_t limit = SIZE_MAX, uint64_t capacity = 1 << 20)
        : mem(limit),
          root(sse::store::create(mem.get(), 7, capacity)),
          st(root, mem.get()) {}

    sse::channel *chan(std::string_view id, int64_t now = 0) {
        sse::channel *c = st.find_or_create(id, now);
        EXPECT_NE(c, nullptr) << id;
        return c;
    }

    uint64_t pub(std::string_view id, std::string_view data, int64_t now = 0,
                 uint32_t buffer_length = 100, int64_t ttl = long_ttl) {
        sse::publish_result r =
            st.publish(chan(id, now), "", data, now, buffer_length, ttl);
        EXPECT_EQ(r.status, sse::publish_status::ok) << id;
        return r.seq;
    }

    std::vector<uint64_t> in(std::string_view id, uint64_t after,
                             uint32_t limit = 1000) {
        std::vector<uint64_t> seqs;
        sse::channel *c = st.find(id);
        EXPECT_NE(c, nullptr) << id;
        if (c != nullptr) {
            st.for_each_in(c, after, limit, [&](const sse::message *m) {
                EXPECT_EQ(m->chan, c);
                seqs.push_back(m->seq);
            });
        }
        return seqs;
    }

    // "chan:seq chan:seq ..." of for_each_since(after).
    std::string since(uint64_t after) {
        std::string s;
        st.for_each_since(after, [&](const sse::message *m) {
            s += (s.empty() ? "" : " ") + std::string(m->chan->id()) + ":" +
                 std::to_string(m->seq);
        });
        return s;
    }

    // The zone-wide list, rings and counters agree.
    void check() {
        uint64_t n = 0;
        uint64_t bytes = 0;
        const sse::message *prev = nullptr;
        for (const sse::message *m = root->head; m; m = m->next) {
            EXPECT_EQ(m->prev, prev);
            if (prev) {
                EXPECT_LT(prev->seq, m->seq);
            }
            EXPECT_LE(m->seq, root->seq);
            n++;
            bytes += m->size;
            prev = m;
        }
        EXPECT_EQ(root->tail, prev);
        EXPECT_EQ(root->nmessages, n);
        EXPECT_EQ(root->message_bytes, bytes);
        uint64_t in_rings = 0;
        uint32_t nchannels = 0;
        for (uint32_t b = 0; b < root->nbuckets; b++) {
            for (sse::channel *c = root->buckets[b]; c; c = c->hnext) {
                nchannels++;
                EXPECT_EQ(c->hash & (root->nbuckets - 1), b);
                EXPECT_LE(c->count, c->cap);
                for (uint32_t i = 0; i < c->count; i++) {
                    EXPECT_EQ(c->at(i)->chan, c);
                    if (i > 0) {
                        EXPECT_LT(c->at(i - 1)->seq, c->at(i)->seq);
                    } else {
                        EXPECT_LT(c->dropped_seq, c->at(i)->seq);
                    }
                }
                in_rings += c->count;
            }
        }
        EXPECT_EQ(root->nchannels, nchannels);
        EXPECT_EQ(in_rings, n);
    }

    counting_allocator mem;
    sse::zone_root *root;
    sse::store st;
};

}  // namespace

TEST(StoreCreate, LaysOutAnEmptyZone) {
    zone z;
    ASSERT_NE(z.root, nullptr);
    EXPECT_EQ(z.root->magic, sse::store::magic);
    EXPECT_EQ(z.root->epoch, 7u);
    EXPECT_EQ(z.root->seq, 0u);
    EXPECT_EQ(z.root->capacity, 1u << 20);
    EXPECT_EQ(z.root->nbuckets, 256u);  // one per 4 KiB
    EXPECT_EQ(z.root->head, nullptr);
    EXPECT_EQ(z.mem.outstanding(), 2u);  // root and buckets
    EXPECT_EQ(z.since(0), "");
}

TEST(StoreCreate, SmallZoneGetsAtLeast64Buckets) {
    zone z(SIZE_MAX, 4096);
    ASSERT_NE(z.root, nullptr);
    EXPECT_EQ(z.root->nbuckets, 64u);
}

TEST(StoreCreate, ReturnsNullAndLeaksNothingWhenAllocatorIsFull) {
    counting_allocator none(0);
    EXPECT_EQ(sse::store::create(none.get(), 1, 1 << 20), nullptr);
    counting_allocator root_only(sizeof(sse::zone_root));
    EXPECT_EQ(sse::store::create(root_only.get(), 1, 1 << 20), nullptr);
    EXPECT_EQ(root_only.outstanding(), 0u);
    EXPECT_EQ(root_only.failures(), 1u);
}

TEST(Store, FindSeesOnlyCreatedChannels) {
    zone z;
    EXPECT_EQ(z.st.find("a"), nullptr);
    sse::channel *a = z.chan("a");
    EXPECT_EQ(z.st.find("a"), a);
    EXPECT_EQ(z.st.find_or_create("a", 0), a);
    EXPECT_EQ(a->id(), "a");
    EXPECT_EQ(z.st.find("b"), nullptr);
    EXPECT_EQ(z.st.find("A"), nullptr);
    EXPECT_EQ(z.root->nchannels, 1u);
}

TEST(Store, ManyChannelsSharingBucketsStayFindable) {
    zone z(SIZE_MAX, 4096);  // 64 buckets
    std::vector<sse::channel *> cs;
    for (int i = 0; i < 1000; i++) {
        cs.push_back(z.chan("ch/" + std::to_string(i)));
    }
    EXPECT_EQ(z.root->nchannels, 1000u);
    for (int i = 0; i < 1000; i += 2) {
        z.st.remove(cs[i], 0);
    }
    for (int i = 0; i < 1000; i++) {
        sse::channel *c = z.st.find("ch/" + std::to_string(i));
        EXPECT_EQ(c, i % 2 ? cs[i] : nullptr) << i;
    }
    EXPECT_EQ(z.root->nchannels, 500u);
    z.check();
}

TEST(Store, PublishAssignsIncreasingSeqAcrossChannels) {
    zone z;
    EXPECT_EQ(z.pub("a", "x"), 1u);
    EXPECT_EQ(z.pub("b", "y"), 2u);
    EXPECT_EQ(z.pub("a", "z"), 3u);
    EXPECT_EQ(z.pub("c", ""), 4u);
    EXPECT_EQ(z.root->seq, 4u);
    EXPECT_EQ(z.root->stats.published, 4u);
    EXPECT_EQ(z.root->nmessages, 4u);
    EXPECT_EQ(z.st.find("a")->last_seq, 3u);
    EXPECT_EQ(z.st.find("a")->published, 2u);
    EXPECT_EQ(z.st.find("b")->last_seq, 2u);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{1, 3}));
    z.check();
}

TEST(Store, PublishStoresTheWireFormWithEpochDashSeqId) {
    zone z;
    z.pub("a", "first");
    sse::channel *a = z.chan("a");
    auto r = z.st.publish(a, "note", "two\nlines", 0, 10, long_ttl);
    ASSERT_EQ(r.status, sse::publish_status::ok);
    ASSERT_EQ(a->count, 2u);
    EXPECT_EQ(a->at(0)->wire(), "id: 7-1\ndata: first\n\n");
    EXPECT_EQ(a->at(1)->wire(),
              "id: 7-2\nevent: note\ndata: two\ndata: lines\n\n");
    EXPECT_EQ(z.root->message_bytes, 21u + 43u);
}

TEST(Store, RingKeepsTheNewestBufferLengthEvents) {
    zone z;
    for (int i = 0; i < 5; i++) {
        z.pub("a", "m" + std::to_string(i), 0, 3);
    }
    sse::channel *a = z.st.find("a");
    EXPECT_EQ(a->count, 3u);
    EXPECT_EQ(a->cap, 3u);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{3, 4, 5}));
    EXPECT_EQ(a->at(0)->wire(), "id: 7-3\ndata: m2\n\n");
    EXPECT_EQ(a->dropped_seq, 2u);
    EXPECT_EQ(z.root->dropped_seq, 2u);
    EXPECT_EQ(z.root->nmessages, 3u);
    EXPECT_EQ(z.root->stats.evicted, 0u);
    EXPECT_EQ(z.since(0), "a:3 a:4 a:5");
    z.check();
}

TEST(Store, BufferLengthZeroKeepsOneEvent) {
    zone z;
    z.pub("a", "1", 0, 0);
    z.pub("a", "2", 0, 0);
    EXPECT_EQ(z.st.find("a")->cap, 1u);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{2}));
}

TEST(Store, GapIsTrueExactlyWhenANewerEventWasDropped) {
    zone z;
    z.pub("a", "1", 0, 2);  // 1
    z.pub("b", "2", 0, 2);  // 2
    z.pub("a", "3", 0, 2);  // 3
    z.pub("b", "4", 0, 2);  // 4
    z.pub("a", "5", 0, 2);  // 5: drops 1 from a
    sse::channel *a = z.st.find("a");
    sse::channel *b = z.st.find("b");
    EXPECT_TRUE(z.st.gap(a, 0));
    EXPECT_FALSE(z.st.gap(a, 1));
    EXPECT_FALSE(z.st.gap(a, 2));
    EXPECT_FALSE(z.st.gap(a, 5));
    EXPECT_FALSE(z.st.gap(b, 0));  // a's drop is not b's gap
    z.pub("a", "6", 0, 2);         // drops 3
    EXPECT_TRUE(z.st.gap(a, 2));
    EXPECT_FALSE(z.st.gap(a, 3));
    EXPECT_EQ(z.in("a", 3), (std::vector<uint64_t>{5, 6}));
}

TEST(Store, ForEachInHonoursAfterSeqAndLimit) {
    zone z;
    for (int i = 0; i < 4; i++) {
        z.pub("a", "x");  // 1 3 5 7
        z.pub("b", "y");  // 2 4 6 8
    }
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{1, 3, 5, 7}));
    EXPECT_EQ(z.in("a", 3), (std::vector<uint64_t>{5, 7}));
    EXPECT_EQ(z.in("a", 4), (std::vector<uint64_t>{5, 7}));
    EXPECT_EQ(z.in("a", 7), (std::vector<uint64_t>{}));
    EXPECT_EQ(z.in("a", 100), (std::vector<uint64_t>{}));
    EXPECT_EQ(z.in("a", 0, 2), (std::vector<uint64_t>{5, 7}));
    EXPECT_EQ(z.in("a", 4, 1), (std::vector<uint64_t>{7}));
    EXPECT_EQ(z.in("a", 0, 4), (std::vector<uint64_t>{1, 3, 5, 7}));
    EXPECT_EQ(z.in("a", 0, 0), (std::vector<uint64_t>{}));
    EXPECT_EQ(z.in("b", 1), (std::vector<uint64_t>{2, 4, 6, 8}));
}

TEST(Store, ForEachInWorksAcrossTheRingWrap) {
    zone z;
    for (int i = 0; i < 7; i++) {
        z.pub("a", "x", 0, 4);
    }
    sse::channel *a = z.st.find("a");
    EXPECT_NE(a->head, 0u);  // the ring has wrapped
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{4, 5, 6, 7}));
    EXPECT_EQ(z.in("a", 5), (std::vector<uint64_t>{6, 7}));
    EXPECT_EQ(z.in("a", 0, 3), (std::vector<uint64_t>{5, 6, 7}));
}

TEST(Store, ForEachSinceListsTheZoneInSeqOrder) {
    zone z;
    EXPECT_EQ(z.since(0), "");
    z.pub("a", "1");
    z.pub("b", "2");
    z.pub("c", "3");
    z.pub("a", "4");
    z.pub("b", "5");
    EXPECT_EQ(z.since(0), "a:1 b:2 c:3 a:4 b:5");
    EXPECT_EQ(z.since(3), "a:4 b:5");
    EXPECT_EQ(z.since(4), "b:5");
    EXPECT_EQ(z.since(5), "");
    EXPECT_EQ(z.since(99), "");
    z.pub("a", "6", 0, 2);  // a keeps 4 and 6: 1 goes
    EXPECT_EQ(z.since(0), "b:2 c:3 a:4 b:5 a:6");
    z.check();
}

TEST(Store, ExpireDropsEventsOnceTheirTtlHasPassed) {
    zone z;
    z.pub("a", "1", 0, 10, 100);   // expires at 100
    z.pub("a", "2", 50, 10, 100);  // expires at 150
    sse::channel *a = z.st.find("a");
    z.st.expire(a, 99);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{1, 2}));
    EXPECT_FALSE(z.st.gap(a, 0));
    z.st.expire(a, 100);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{2}));
    EXPECT_EQ(a->dropped_seq, 1u);
    EXPECT_TRUE(z.st.gap(a, 0));
    z.st.expire(a, 150);
    EXPECT_EQ(a->count, 0u);
    EXPECT_EQ(a->dropped_seq, 2u);
    EXPECT_EQ(z.since(0), "");
    EXPECT_EQ(z.root->stats.evicted, 0u);
    z.check();
}

TEST(Store, PublishExpiresTheChannelFirst) {
    zone z;
    z.pub("a", "1", 0, 10, 10);
    z.pub("a", "2", 20, 10, 10);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{2}));
    EXPECT_EQ(z.st.find("a")->dropped_seq, 1u);
}

TEST(Store, SweepExpiresEveryChannel) {
    zone z;
    z.pub("a", "1", 0, 10, 100);
    z.pub("b", "2", 0, 10, 200);
    z.pub("a", "3", 0, 10, 300);
    z.st.subscribe(z.chan("a"), 0);
    z.st.subscribe(z.chan("b"), 0);
    z.st.sweep(150);
    EXPECT_EQ(z.root->last_sweep, 150);
    EXPECT_EQ(z.since(0), "b:2 a:3");
    z.st.sweep(250);
    EXPECT_EQ(z.since(0), "a:3");
    EXPECT_EQ(z.root->dropped_seq, 2u);
    z.check();
}

TEST(Store, ShorterBufferLengthKeepsTheNewest) {
    zone z;
    for (int i = 0; i < 5; i++) {
        z.pub("a", "x", 0, 5);  // 1..5
    }
    z.pub("a", "x", 0, 2);  // 6: ring of 2 keeps 5, 6
    sse::channel *a = z.st.find("a");
    EXPECT_EQ(a->cap, 2u);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{5, 6}));
    EXPECT_EQ(a->dropped_seq, 4u);
    EXPECT_EQ(z.since(0), "a:5 a:6");
    z.check();
}

TEST(Store, LongerBufferLengthKeepsEverything) {
    zone z;
    for (int i = 0; i < 3; i++) {
        z.pub("a", "x", 0, 2);  // 1..3, ring wraps: 2, 3
    }
    z.pub("a", "x", 0, 5);  // 4
    z.pub("a", "x", 0, 5);  // 5
    sse::channel *a = z.st.find("a");
    EXPECT_EQ(a->cap, 5u);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{2, 3, 4, 5}));
    EXPECT_EQ(a->dropped_seq, 1u);
    z.pub("a", "x", 0, 5);  // 6
    z.pub("a", "x", 0, 5);  // 7: drops 2
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{3, 4, 5, 6, 7}));
    z.check();
}

TEST(Store, RemovedChannelIsGoneAndFreed) {
    zone z;
    z.pub("a", "1");
    z.pub("b", "2");
    z.pub("a", "3");
    size_t before = z.mem.outstanding();
    sse::channel *a = z.st.find("a");
    z.st.remove(a, 5);
    EXPECT_EQ(z.st.find("a"), nullptr);
    EXPECT_EQ(z.root->nchannels, 1u);
    EXPECT_EQ(z.root->control_gen, 1u);
    EXPECT_EQ(z.root->deleted, nullptr);
    EXPECT_EQ(z.since(0), "b:2");
    // two messages, the ring and the channel
    EXPECT_EQ(z.mem.outstanding(), before - 4);
    z.check();
}

TEST(Store, RemovedChannelWithSubscribersIsFreedByTheLastUnsubscribe) {
    zone z;
    z.pub("a", "1");
    sse::channel *a = z.st.find("a");
    z.st.subscribe(a, 1);
    z.st.subscribe(a, 2);
    size_t before = z.mem.outstanding();
    z.st.remove(a, 5);
    EXPECT_EQ(z.st.find("a"), nullptr);
    EXPECT_EQ(a->deleted, 1u);
    EXPECT_EQ(z.root->deleted, a);
    // Its events stay for the workers still to deliver them.
    EXPECT_EQ(z.mem.outstanding(), before);
    EXPECT_EQ(z.since(0), "a:1");
    auto r = z.st.publish(a, "", "late", 6, 10, long_ttl);
    EXPECT_EQ(r.status, sse::publish_status::no_channel);
    EXPECT_EQ(z.root->seq, 1u);
    z.st.remove(a, 7);  // a second DELETE changes nothing
    EXPECT_EQ(z.root->control_gen, 1u);
    z.st.unsubscribe(a, 1, 8);
    EXPECT_EQ(z.root->deleted, a);
    EXPECT_EQ(z.mem.outstanding(), before);
    z.st.unsubscribe(a, 2, 9);
    EXPECT_EQ(z.root->deleted, nullptr);
    EXPECT_EQ(z.since(0), "");
    EXPECT_EQ(z.mem.outstanding(), before - 3);  // message, ring, channel
}

TEST(Store, RecreatedChannelReportsGapForOldResumePoints) {
    zone z;
    z.pub("a", "1");
    z.pub("a", "2");
    z.pub("a", "3");
    z.st.remove(z.st.find("a"), 0);
    sse::channel *a = z.chan("a");
    EXPECT_EQ(a->count, 0u);
    EXPECT_TRUE(z.st.gap(a, 0));
    EXPECT_TRUE(z.st.gap(a, 2));
    EXPECT_FALSE(z.st.gap(a, 3));
    EXPECT_EQ(z.pub("a", "4"), 4u);
    EXPECT_FALSE(z.st.gap(a, 3));
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{4}));
}

TEST(Store, ChannelFreedBySweepReportsGapWhenRecreated) {
    zone z;
    z.pub("a", "1", 0, 10, 100);
    z.pub("a", "2", 0, 10, 100);
    z.st.sweep(100);
    ASSERT_EQ(z.st.find("a"), nullptr);
    sse::channel *a = z.chan("a", 100);
    EXPECT_TRUE(z.st.gap(a, 1));
    EXPECT_FALSE(z.st.gap(a, 2));
}

TEST(Store, SweepFreesIdleChannelsAfterTheirTtlOnly) {
    zone z;
    z.pub("idle", "1", 0, 10, 100);
    z.pub("held", "2", 0, 10, 100);
    sse::channel *held = z.st.find("held");
    z.st.subscribe(held, 3);
    z.st.sweep(99);
    EXPECT_NE(z.st.find("idle"), nullptr);
    EXPECT_EQ(z.since(0), "idle:1 held:2");
    z.st.sweep(100);  // both expire; only the unsubscribed one goes
    EXPECT_EQ(z.st.find("idle"), nullptr);
    EXPECT_EQ(z.st.find("held"), held);
    EXPECT_EQ(held->count, 0u);
    z.st.sweep(10000);
    EXPECT_EQ(z.st.find("held"), held);
    z.st.unsubscribe(held, 3, 20000);
    z.st.sweep(20099);
    EXPECT_EQ(z.st.find("held"), held);
    z.st.sweep(20100);
    EXPECT_EQ(z.st.find("held"), nullptr);
    EXPECT_EQ(z.mem.outstanding(), 2u);  // root and buckets
}

TEST(Store, SweepKeepsChannelsThatStillBufferEvents) {
    zone z;
    z.pub("a", "1", 0, 10, 1000);
    z.st.sweep(999);
    EXPECT_NE(z.st.find("a"), nullptr);
    EXPECT_EQ(z.in("a", 0), (std::vector<uint64_t>{1}));
}

TEST(Store, SweepFreesANeverPublishedUnsubscribedChannel) {
    // Its ttl is 0 until a publish sets one.
    zone z;
    z.chan("a", 10);
    z.st.sweep(10);
    EXPECT_EQ(z.st.find("a"), nullptr);
}

TEST(Store, ClearSlotDropsOnlyThatSlotsCounts) {
    zone z;
    sse::channel *a = z.chan("a");
    sse::channel *b = z.chan("b");
    z.st.subscribe(a, 3);
    z.st.subscribe(a, 3);
    z.st.subscribe(a, 5);
    z.st.subscribe(b, 3);
    EXPECT_EQ(sse::store::subscribers(a), 3u);
    z.st.clear_slot(3, 0);
    EXPECT_EQ(sse::store::subscribers(a), 1u);
    EXPECT_EQ(a->subs[3], 0u);
    EXPECT_EQ(a->subs[5], 1u);
    EXPECT_EQ(sse::store::subscribers(b), 0u);
    EXPECT_EQ(z.st.find("b"), b);  // left for sweep
}

TEST(Store, ClearSlotFreesDeletedChannelsOnlyThatSlotHeld) {
    zone z;
    sse::channel *a = z.chan("a");
    sse::channel *b = z.chan("b");
    z.st.subscribe(a, 3);
    z.st.subscribe(b, 3);
    z.st.subscribe(b, 4);
    z.st.remove(a, 0);
    z.st.remove(b, 0);
    size_t before = z.mem.outstanding();
    z.st.clear_slot(3, 0);
    EXPECT_EQ(z.mem.outstanding(), before - 1);
    EXPECT_EQ(z.root->deleted, b);
    EXPECT_EQ(b->hnext, nullptr);
    z.st.unsubscribe(b, 4, 0);
    EXPECT_EQ(z.root->deleted, nullptr);
    EXPECT_EQ(z.mem.outstanding(), 2u);
}

TEST(Store, UnsubscribeNeverGoesBelowZero) {
    zone z;
    sse::channel *a = z.chan("a");
    z.st.unsubscribe(a, 0, 0);
    EXPECT_EQ(a->subs[0], 0u);
    z.st.subscribe(a, 0);
    z.st.unsubscribe(a, 0, 0);
    z.st.unsubscribe(a, 0, 0);
    EXPECT_EQ(sse::store::subscribers(a), 0u);
}

TEST(Store, FullZoneEvictsTheZoneWideOldestFirst) {
    zone z(64 * 1024, 64 * 1024);
    ASSERT_NE(z.root, nullptr);
    const char *names[] = {"a", "b", "c"};
    std::vector<uint64_t> chan_of_seq = {0};  // index into names
    std::string data(700, 'd');
    for (int i = 0; i < 300; i++) {
        int ci = (i * 7 + i / 5) % 3;
        uint64_t seq = z.pub(names[ci], data, 0, 1000);
        ASSERT_EQ(seq, static_cast<uint64_t>(i + 1));
        chan_of_seq.push_back(ci);
        ASSERT_LE(z.mem.bytes(), 64u * 1024u);
        ASSERT_EQ(z.root->nmessages + z.root->stats.evicted, seq);
    }
    EXPECT_GT(z.root->stats.evicted, 200u);
    // What is left is exactly the newest events, in order.
    uint64_t first = z.root->head->seq;
    EXPECT_EQ(first, z.root->stats.evicted + 1);
    EXPECT_EQ(z.root->dropped_seq, first - 1);
    EXPECT_EQ(z.root->tail->seq, 300u);
    for (int ci = 0; ci < 3; ci++) {
        uint64_t dropped = 0;
        std::vector<uint64_t> kept;
        for (uint64_t s = 1; s <= 300; s++) {
            if (chan_of_seq[s] != static_cast<uint64_t>(ci)) {
                continue;
            }
            if (s < first) {
                dropped = s;
            } else {
                kept.push_back(s);
            }
        }
        EXPECT_EQ(z.st.find(names[ci])->dropped_seq, dropped) << ci;
        EXPECT_EQ(z.in(names[ci], 0), kept) << ci;
    }
    z.check();
}

TEST(Store, FullZoneEvictsOtherChannelsForTheOneBeingPublished) {
    zone z(16 * 1024, 16 * 1024);
    std::string data(1000, 'x');
    for (int i = 0; i < 10; i++) {
        z.pub("old", data);
    }
    for (int i = 0; i < 10; i++) {
        z.pub("new", data);
    }
    EXPECT_EQ(z.in("new", 0).size(), 10u);
    EXPECT_LT(z.in("old", 0).size(), 10u);
    EXPECT_TRUE(z.st.gap(z.st.find("old"), 0));
    EXPECT_FALSE(z.st.gap(z.st.find("new"), 0));
    z.check();
}

TEST(Store, MessageOverHalfTheZoneIsRefusedWithoutEvicting) {
    zone z(SIZE_MAX, 65536);
    z.pub("a", "keep");
    // id "7-2": encoded size is data + 16; message header on top.
    size_t fit = 65536 / 2 - sizeof(sse::message) - 16;
    sse::channel *a = z.st.find("a");
    auto r = z.st.publish(a, "", std::string(fit + 1, 'x'), 0, 10, long_ttl);
    EXPECT_EQ(r.status, sse::publish_status::no_memory);
    EXPECT_EQ(r.seq, 0u);
    EXPECT_EQ(z.root->seq, 1u);
    EXPECT_EQ(z.root->stats.evicted, 0u);
    EXPECT_EQ(z.since(0), "a:1");
    r = z.st.publish(a, "", std::string(fit, 'x'), 0, 10, long_ttl);
    EXPECT_EQ(r.status, sse::publish_status::ok);
    EXPECT_EQ(r.seq, 2u);
    EXPECT_EQ(a->at(1)->size + sizeof(sse::message), 65536u / 2);
}

TEST(Store, PublishReturnsNoMemoryOnlyWhenTheMessageCannotFitAtAll) {
    // The allocator is smaller than the zone claims, so the half-zone
    // check passes and the store must evict all it can, then give up.
    zone z(16384, 1 << 20);
    z.pub("a", "1");
    z.pub("b", "2");
    z.pub("a", std::string(6000, 'x'));
    EXPECT_EQ(z.root->stats.evicted, 0u);
    sse::channel *a = z.st.find("a");
    auto r = z.st.publish(a, "", std::string(14000, 'x'), 0, 100, long_ttl);
    EXPECT_EQ(r.status, sse::publish_status::no_memory);
    EXPECT_EQ(z.root->seq, 3u);
    // Everything that could go went: all events, and the idle channel b.
    EXPECT_EQ(z.root->nmessages, 0u);
    EXPECT_EQ(z.root->stats.evicted, 3u);
    EXPECT_EQ(z.st.find("b"), nullptr);
    EXPECT_EQ(z.st.find("a"), a);
    EXPECT_TRUE(z.st.gap(a, 0));
    // And the zone still works.
    EXPECT_EQ(z.pub("a", "after"), 4u);
    z.check();
}

TEST(Store, FullZoneFreesIdleChannelsToCreateOne) {
    zone z(SIZE_MAX);
    size_t one = sizeof(sse::channel) + 1;
    z.mem.set_limit(z.mem.bytes() + 2 * one);
    sse::channel *a = z.chan("a");
    z.st.subscribe(a, 0);
    z.chan("b");
    sse::channel *c = z.chan("c");  // frees b, not a
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(z.st.find("b"), nullptr);
    EXPECT_EQ(z.st.find("a"), a);
    z.st.subscribe(c, 0);
    EXPECT_EQ(z.st.find_or_create("d", 0), nullptr);
    EXPECT_EQ(z.root->nchannels, 2u);
    z.check();
}

TEST(Store, RemovingEverythingLeaksNothing) {
    counting_allocator mem(SIZE_MAX);
    sse::zone_root *root = sse::store::create(mem.get(), 3, 1 << 20);
    ASSERT_NE(root, nullptr);
    sse::store st(root, mem.get());
    std::vector<std::string> ids;
    for (int i = 0; i < 20; i++) {
        ids.push_back("ch" + std::to_string(i));
    }
    for (int i = 0; i < 2000; i++) {
        sse::channel *c = st.find_or_create(ids[i % 20], i);
        ASSERT_NE(c, nullptr);
        uint32_t len = 1 + (i / 100) % 7;  // resizes now and then
        ASSERT_EQ(st.publish(c, i % 3 ? "" : "e", std::string(i % 50, 'q'), i,
                             len, 500)
                      .status,
                  sse::publish_status::ok);
        if (i % 11 == 0) {
            st.subscribe(c, i % 4);
        }
        if (i % 97 == 0) {
            st.sweep(i);
        }
    }
    // Half are deleted while held, half while not.
    for (int i = 0; i < 20; i++) {
        sse::channel *c = st.find(ids[i]);
        if (c == nullptr) {
            continue;
        }
        if (i % 2) {
            st.subscribe(c, 9);
        }
        st.remove(c, 3000);
    }
    EXPECT_EQ(root->nchannels, 0u);
    // Held channels keep their events until the last subscriber leaves.
    for (uint32_t slot = 0; slot < sse::max_slots; slot++) {
        st.clear_slot(slot, 3000);
    }
    EXPECT_EQ(root->nmessages, 0u);
    EXPECT_EQ(root->message_bytes, 0u);
    EXPECT_EQ(root->deleted, nullptr);
    EXPECT_EQ(mem.outstanding(), 2u);
    sse::allocator a = mem.get();
    a.free(a.ctx, root->buckets);
    a.free(a.ctx, root);
    EXPECT_EQ(mem.outstanding(), 0u);
    EXPECT_EQ(mem.bytes(), 0u);
}

TEST(Store, ZoneFromAnotherLayoutIsNotCompatible) {
    zone z;
    EXPECT_TRUE(sse::store::compatible(z.root));
    z.root->layout ^= 1;  // as if made by a build with other structures
    EXPECT_FALSE(sse::store::compatible(z.root));
    z.root->layout ^= 1;
    z.root->magic = 0;
    EXPECT_FALSE(sse::store::compatible(z.root));
    z.root->magic = sse::store::magic;
}

TEST(Store, CountSubscribersAddsEachSlotAcrossChannels) {
    zone z;
    sse::channel *a = z.chan("a");
    sse::channel *b = z.chan("b");
    z.st.subscribe(a, 0);
    z.st.subscribe(a, 3);
    z.st.subscribe(b, 3);
    uint64_t per_slot[sse::max_slots] = {};
    per_slot[5] = 7;  // adds, never resets
    z.st.count_subscribers(per_slot);
    EXPECT_EQ(per_slot[0], 1u);
    EXPECT_EQ(per_slot[3], 2u);
    EXPECT_EQ(per_slot[5], 7u);
    EXPECT_EQ(per_slot[1], 0u);
}
