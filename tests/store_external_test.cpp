// The store's additions for the Redis engine: events committed with seqs
// assigned elsewhere, an epoch adopted from outside, events lost for good,
// and resume points a little ahead of this machine.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "store_layout.hpp"

namespace {

constexpr int64_t long_ttl = 3600 * 1000;

struct ext_zone {
    ext_zone() {
        root = sse::store::create(alloc(), 7, 1 << 20);
        root->external = 1;
        sse::session s = open();
        slot = s->claim_slot(1234, 0);
    }
    ~ext_zone() {
        {
            sse::session s = open();
            s->clear_slot(slot, 0);
            for (int i = 0; i < 16; i++) {
                s->sweep(int64_t{1} << 50);
            }
        }
        std::free(root->buckets);
        std::free(root);
    }

    static sse::allocator alloc() {
        return {nullptr, [](void *, size_t n) { return std::malloc(n); },
                [](void *, void *p) { std::free(p); }, nullptr};
    }
    sse::session open() {
        return sse::session(root, alloc(),
                            sse::mutex{nullptr, [](void *) {}, [](void *) {}});
    }

    // Commits one event at seq; the status commit_at returned.
    sse::publish_status at(std::string_view id, uint64_t seq,
                           std::string_view data = "x") {
        sse::session s = open();
        size_t size = sse::encoded_body_size("", data);
        sse::message *m = s->prepare(slot, size, 0);
        EXPECT_NE(m, nullptr);
        sse::encode_body(m->bytes(), "", data);
        sse::channel *c = s->find_or_create(id, 0);
        return s->commit_at(slot, m, c, 0, 100, long_ttl, seq);
    }

    // Seqs a catch-up from `resume` hands out on `id`, and its result.
    std::vector<uint64_t> resume(std::string_view id, std::string_view from,
                                 sse::catch_up_result *res) {
        sse::session s = open();
        sse::channel *c = s->find_or_create(id, 0);
        std::vector<const sse::message *> out;
        *res = s->catch_up(slot, &c, 1, from, 5, 0, 1 << 20, out);
        std::vector<uint64_t> seqs;
        for (auto *m : out) {
            seqs.push_back(m->seq);
        }
        s->end_read(slot, 0, &c, 1);
        return seqs;
    }

    sse::zone_root *root;
    uint32_t slot;
};

TEST(StoreExternal, CommitAtKeepsTheGivenSeqsAndTheirOrder) {
    ext_zone z;
    EXPECT_EQ(z.at("a", 100), sse::publish_status::ok);
    EXPECT_EQ(z.at("b", 105), sse::publish_status::ok);
    EXPECT_EQ(z.at("a", 230), sse::publish_status::ok);
    EXPECT_EQ(z.root->seq, 230u);
    std::vector<uint64_t> log;
    for (auto *m = z.root->head; m != nullptr; m = m->next) {
        log.push_back(m->seq);
    }
    EXPECT_EQ(log, (std::vector<uint64_t>{100, 105, 230}));
    sse::session s = z.open();
    EXPECT_EQ(s->find("a")->last_seq, 230u);
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, CommitAtSkipsSeqsTheZoneHasPassed) {
    ext_zone z;
    EXPECT_EQ(z.at("a", 10), sse::publish_status::ok);
    EXPECT_EQ(z.at("a", 10), sse::publish_status::duplicate);
    EXPECT_EQ(z.at("b", 9), sse::publish_status::duplicate);
    EXPECT_EQ(z.at("b", 11), sse::publish_status::ok);
    EXPECT_EQ(z.root->nmessages, 2u);
    EXPECT_EQ(z.root->stats.published, 2u);
    sse::session s = z.open();
    // The refused events were freed, not left pending on the slot.
    EXPECT_EQ(z.root->slots[z.slot].pending, nullptr);
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, ResumeExactlyWithGivenSeqs) {
    ext_zone z;
    z.at("a", 100);
    z.at("b", 101);
    z.at("a", 102);
    z.at("a", 103);
    sse::catch_up_result res;
    auto seqs = z.resume("a", "7-100", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    EXPECT_EQ(seqs, (std::vector<uint64_t>{102, 103}));
    EXPECT_EQ(res.last_seq, 103u);
}

TEST(StoreExternal, ResumePointAheadOfThisMachineIsWaitedFor) {
    ext_zone z;
    z.at("a", 100);
    sse::catch_up_result res;
    auto seqs = z.resume("a", "7-140", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    EXPECT_TRUE(seqs.empty());
    // Live events up to it are skipped; the next is 141.
    EXPECT_EQ(res.last_seq, 140u);
}

TEST(StoreExternal, ResumePointAheadIsUnknownForTheSharedMemoryEngine) {
    ext_zone z;
    z.at("a", 100);
    z.root->external = 0;
    sse::catch_up_result res;
    z.resume("a", "7-140", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::unknown);
}

TEST(StoreExternal, AdoptedEpochGivesOldResumePointsAGap) {
    ext_zone z;
    z.at("a", 100);
    z.at("a", 101);
    uint64_t gen = z.root->control_gen;
    {
        sse::session s = z.open();
        EXPECT_FALSE(s->adopt_epoch(7));
        EXPECT_TRUE(s->adopt_epoch(9000));
    }
    EXPECT_EQ(z.root->epoch, 9000u);
    EXPECT_NE(z.root->control_gen, gen);
    sse::catch_up_result res;
    z.resume("a", "7-100", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::epoch);
    // The old epoch's events are not served under the new one.
    auto seqs = z.resume("a", "", &res);
    EXPECT_TRUE(seqs.empty());
    // The new epoch's events (seqs keep growing) resume exactly.
    z.at("a", 9001);
    z.at("a", 9002);
    seqs = z.resume("a", "9000-9001", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    EXPECT_EQ(seqs, (std::vector<uint64_t>{9002}));
    // A channel first seen after the change also reports old points.
    z.at("new", 9003);
    z.resume("new", "9000-100", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::evicted);
    sse::session s = z.open();
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, MarkGoneGivesAGapAndTellsSubscribedProcesses) {
    ext_zone z;
    z.at("a", 100);
    std::vector<sse::channel *> chans;
    {
        sse::session s = z.open();
        std::vector<std::string_view> ids{"a"};
        ASSERT_EQ(s->join(z.slot, ids, 0, 0, chans), sse::join_status::ok);
        // Events 101..104 of "a" are gone from Redis; 105 arrives.
        s->mark_gone(chans[0], 104);
    }
    EXPECT_EQ(z.at("a", 105), sse::publish_status::ok);
    EXPECT_EQ(chans[0]->lost_seq, 104u);
    EXPECT_GE(z.root->lost_seq, 104u);
    sse::catch_up_result res;
    auto seqs = z.resume("a", "7-100", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::evicted);
    seqs = z.resume("a", "7-104", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    EXPECT_EQ(seqs, (std::vector<uint64_t>{105}));
    sse::session s = z.open();
    s->leave(z.slot, chans.data(), chans.size(), 0);
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, MarkGoneOnAChannelWithoutMembersOnlyDropsIt) {
    ext_zone z;
    z.at("a", 100);
    {
        sse::session s = z.open();
        s->mark_gone(s->find("a"), 103);
        EXPECT_EQ(s->find("a")->lost_seq, 0u);
    }
    sse::catch_up_result res;
    z.resume("a", "7-100", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::evicted);
}

TEST(StoreExternal, DropThroughTakesEventsOutOfHistory) {
    ext_zone z;
    z.at("a", 100);
    z.at("a", 101);
    z.at("a", 104);
    {
        sse::session s = z.open();
        // Events up to 103 are missing here: 100 and 101 are not served
        // as if nothing were missing after them; 104 stays.
        s->drop_through(s->find("a"), 103);
    }
    z.at("a", 105);
    sse::catch_up_result res;
    auto seqs = z.resume("a", "", &res);
    EXPECT_EQ(seqs, (std::vector<uint64_t>{104, 105}));
    z.resume("a", "7-101", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::evicted);
    seqs = z.resume("a", "7-103", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    EXPECT_EQ(seqs, (std::vector<uint64_t>{104, 105}));
    sse::session s = z.open();
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, NotePrevDropsHistoryOnlyAcrossAnUnseenEvent) {
    ext_zone z;
    z.at("a", 100);
    z.at("a", 101);
    {
        sse::session s = z.open();
        // 101 is held: nothing missing, nothing dropped.
        EXPECT_FALSE(s->note_prev(s->find("a"), 101));
        EXPECT_FALSE(s->note_prev(s->find("a"), 100));
    }
    sse::catch_up_result res;
    EXPECT_EQ(z.resume("a", "7-100", &res), (std::vector<uint64_t>{101}));
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    {
        // 103 never reached this zone: 100 and 101 are no longer served as
        // if nothing followed them, and resumes before 103 see a gap.
        sse::session s = z.open();
        EXPECT_TRUE(s->note_prev(s->find("a"), 103));
        // Known gone now: said once.
        EXPECT_FALSE(s->note_prev(s->find("a"), 103));
    }
    z.at("a", 106);
    EXPECT_EQ(z.resume("a", "", &res), (std::vector<uint64_t>{106}));
    z.resume("a", "7-101", &res);
    EXPECT_EQ(res.gap, sse::gap_reason::evicted);
    EXPECT_EQ(z.resume("a", "7-103", &res), (std::vector<uint64_t>{106}));
    EXPECT_EQ(res.gap, sse::gap_reason::none);
    sse::session s = z.open();
    EXPECT_EQ(s->check(), "");
}

TEST(StoreExternal, MakeKnownStartsAChannelsHistoryWhereItsOwnStarts) {
    // A new machine's zone: resume points before 50 are a gap for any
    // channel made later, but "k" is known to have had nothing after 40
    // before its first event here (55): a resume from 42 is exact.
    ext_zone z;
    {
        sse::session s = z.open();
        EXPECT_NE(s->make_known("k", 0, 40, long_ttl), nullptr);
        s->mark_gone_unheld(50);
        s->skip_to(50);
    }
    EXPECT_EQ(z.at("k", 55), sse::publish_status::ok);
    EXPECT_EQ(z.at("other", 56), sse::publish_status::ok);
    sse::catch_up_result r;
    EXPECT_EQ(z.resume("k", "7-42", &r), (std::vector<uint64_t>{55}));
    EXPECT_EQ(r.gap, sse::gap_reason::none);
    // Before its known start: a gap; a channel not known: a gap.
    z.resume("k", "7-39", &r);
    EXPECT_EQ(r.gap, sse::gap_reason::evicted);
    z.resume("other", "7-42", &r);
    EXPECT_EQ(r.gap, sse::gap_reason::evicted);
    // An existing channel is left as it is; kept while idle for its ttl.
    sse::session s = z.open();
    sse::channel *c = s->make_known("other", 0, 0, long_ttl);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->dropped_seq, 50u);
    sse::channel *idle = s->make_known("idle", 0, 10, long_ttl);
    for (int i = 0; i < 16; i++) {
        s->sweep(1000);
    }
    EXPECT_EQ(s->find("idle"), idle);
}

}  // namespace
