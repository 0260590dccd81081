// The zone's allocator: blocks never overlap, free pages merge back, bad
// frees are refused, and a rebuild from the list of live blocks restores a
// working arena whatever state its lists were left in.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "arena.hpp"

namespace {

constexpr size_t region = 8 << 20;

struct Region {
    Region() : mem(static_cast<char *>(std::aligned_alloc(4096, region))) {}
    ~Region() { std::free(mem); }
    char *mem;
};

// Live blocks by address, with their sizes; checks they never overlap.
struct Model {
    std::map<const char *, size_t> live;

    bool add(const void *p, size_t size) {
        auto *c = static_cast<const char *>(p);
        auto next = live.lower_bound(c);
        if (next != live.end() && next->first < c + size) {
            return false;
        }
        if (next != live.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second > c) {
                return false;
            }
        }
        live[c] = size;
        return true;
    }
};

size_t random_size(std::mt19937 &rng) {
    switch (rng() % 4) {
        case 0:
            return 1 + rng() % 64;
        case 1:
            return 1 + rng() % 2048;
        case 2:
            return 2049 + rng() % 20000;
        default:
            return 40 + rng() % 200;
    }
}

TEST(Arena, BlocksNeverOverlapAndAllComesBack) {
    Region r;
    sse::arena *a = sse::arena::create(r.mem, region);
    ASSERT_NE(a, nullptr);
    size_t total = a->bytes_free();
    EXPECT_EQ(total, a->bytes_total());
    std::mt19937 rng(7);
    Model m;
    for (int i = 0; i < 200000; i++) {
        if (m.live.empty() || rng() % 5 < 3) {
            size_t size = random_size(rng);
            void *p = a->alloc(size);
            if (p == nullptr) {
                continue;  // full: free some below
            }
            ASSERT_GE(static_cast<char *>(p), r.mem);
            ASSERT_LE(static_cast<char *>(p) + size, r.mem + region);
            ASSERT_TRUE(m.add(p, size)) << "overlap at step " << i;
            std::memset(p, 0xab, size);  // ASan: the whole block is ours
        } else {
            auto it = m.live.begin();
            std::advance(it, rng() % m.live.size());
            a->free(const_cast<char *>(it->first));
            m.live.erase(it);
        }
        if (i % 5000 == 0) {
            ASSERT_STREQ(a->check(), "") << "step " << i;
        }
    }
    for (auto &[p, size] : m.live) {
        a->free(const_cast<char *>(p));
    }
    EXPECT_STREQ(a->check(), "");
    EXPECT_EQ(a->bytes_free(), total);
    EXPECT_EQ(a->bad_frees(), 0u);
    // Every page merged back into one run: the largest block fits again.
    void *all = a->alloc(total);
    EXPECT_NE(all, nullptr);
}

TEST(Arena, FillsUpAndSaysSo) {
    Region r;
    sse::arena *a = sse::arena::create(r.mem, 64 * 4096);
    ASSERT_NE(a, nullptr);
    size_t n = 0;
    while (a->alloc(100) != nullptr) {
        n++;
    }
    EXPECT_GT(n, 60 * 4096 / 112 - 64);
    EXPECT_EQ(a->alloc(5000), nullptr);
    EXPECT_STREQ(a->check(), "");
    EXPECT_EQ(sse::arena::create(r.mem, 100), nullptr);
}

TEST(Arena, RefusesBadFreesWithoutHarm) {
    Region r;
    sse::arena *a = sse::arena::create(r.mem, region);
    char *p = static_cast<char *>(a->alloc(100));
    char *big = static_cast<char *>(a->alloc(10000));
    int outside = 0;
    a->free(&outside);  // not in the arena
    a->free(p + 16);    // inside a block
    a->free(big + 4096);
    a->free(p);
    a->free(p);  // twice
    a->free(big);
    a->free(big);
    EXPECT_EQ(a->bad_frees(), 5u);
    EXPECT_STREQ(a->check(), "");
    EXPECT_EQ(a->bytes_free(), a->bytes_total());
}

// What a process killed inside alloc or free leaves: lists half linked.
// Scribbles over the arena's page records (between it and its first page).
void scribble(sse::arena *a, char *first_page, std::mt19937 &rng) {
    char *from = reinterpret_cast<char *>(a) + sizeof(sse::arena);
    for (int k = 0; k < 2000; k++) {
        from[rng() % static_cast<size_t>(first_page - from)] =
            static_cast<char>(rng());
    }
}

// The bytes a block of `size` takes.
size_t rounded(size_t size) {
    if (size > sse::arena::max_small) {
        return (size + 4095) / 4096 * 4096;
    }
    return sse::arena::class_size(sse::arena::class_of(size));
}

TEST(Arena, RebuildFromLiveBlocksRestoresAWorkingArena) {
    Region r;
    std::mt19937 rng(11);
    for (int round = 0; round < 20; round++) {
        sse::arena *a = sse::arena::create(r.mem, region);
        size_t total = a->bytes_free();
        char *first_page = static_cast<char *>(a->alloc(4096));
        a->free(first_page);
        Model m;
        std::vector<std::pair<void *, size_t>> dropped;
        for (int i = 0; i < 1200; i++) {
            size_t size = random_size(rng);
            void *p = a->alloc(size);
            ASSERT_NE(p, nullptr);
            if (rng() % 4 == 0) {
                dropped.emplace_back(p, size);  // leaked by the "dead"
            } else {
                ASSERT_TRUE(m.add(p, size));
            }
        }
        // The state is now garbage, but the blocks are known.
        // Bytes taken: blocks rounded up to their class, and the tail of
        // each small page that no block of its class fits in.
        size_t used = 0;
        std::map<size_t, uint32_t> small_pages;
        for (auto &[p, size] : m.live) {
            used += rounded(size);
            if (size <= sse::arena::max_small) {
                small_pages[static_cast<size_t>(p - first_page) / 4096] =
                    sse::arena::class_size(sse::arena::class_of(size));
            }
        }
        for (auto &[page, cs] : small_pages) {
            used += 4096 - std::min<size_t>(128, 4096 / cs) * cs;
        }
        scribble(a, first_page, rng);
        a->rebuild([&](auto &&mark) {
            for (auto &[p, size] : m.live) {
                mark(p, size);
            }
        });
        ASSERT_STREQ(a->check(), "") << "round " << round;
        EXPECT_EQ(a->bad_blocks(), 0u);
        // What the dead had allocated is free again.
        EXPECT_EQ(a->bytes_free(), total - used);
        // New blocks never land on a live one, and the live ones free.
        for (int i = 0; i < 3000; i++) {
            size_t size = random_size(rng);
            void *p = a->alloc(size);
            if (p != nullptr) {
                ASSERT_TRUE(m.add(p, size)) << "round " << round;
            }
        }
        for (auto &[p, size] : m.live) {
            a->free(const_cast<char *>(p));
        }
        EXPECT_EQ(a->bad_frees(), 0u);
        EXPECT_EQ(a->bytes_free(), total);
        ASSERT_STREQ(a->check(), "");
    }
}

TEST(Arena, RebuildRefusesBlocksThatCannotBeLive) {
    Region r;
    sse::arena *a = sse::arena::create(r.mem, region);
    char *p = static_cast<char *>(a->alloc(100));
    char *big = static_cast<char *>(a->alloc(10000));
    int outside = 0;
    a->rebuild([&](auto &&mark) {
        mark(p, 100);
        mark(p, 100);       // twice
        mark(p + 8, 100);   // not on a block boundary
        mark(p, 3000);      // a run inside a small page
        mark(&outside, 4);  // not in the arena
        mark(big, 10000);
        mark(big + 4096, 8);  // inside the run
    });
    EXPECT_EQ(a->bad_blocks(), 5u);
    EXPECT_STREQ(a->check(), "");
    a->free(p);
    a->free(big);
    EXPECT_EQ(a->bad_frees(), 0u);
    EXPECT_EQ(a->bytes_free(), a->bytes_total());
}

}  // namespace
