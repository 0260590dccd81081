// The zone's allocator (src/arena.hpp) under any sequence of allocations,
// frees (good and bad) and rebuilds from the live blocks after its page
// records were scribbled over, as a process killed inside alloc or free
// leaves them. After every step:
//   - no block overlaps another or leaves the arena (ASan also sees every
//     byte of each block written);
//   - arena::check() finds the lists, bitmaps and counts consistent;
//   - freeing everything gives back every byte.
//
// Input: a byte code of operations (FuzzedDataProvider), any bytes valid.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>

#include "arena.hpp"
#include "fuzz_check.hpp"

namespace {

constexpr size_t region = 1 << 20;

bool overlaps(const std::map<char *, size_t> &live, char *p, size_t n) {
    auto next = live.lower_bound(p);
    if (next != live.end() && next->first < p + n) {
        return true;
    }
    return next != live.begin() &&
           std::prev(next)->first + std::prev(next)->second > p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char *mem = static_cast<char *>(std::aligned_alloc(4096, region));
    FuzzedDataProvider in(data, size);
    size_t span = in.ConsumeIntegralInRange<size_t>(4096, region);
    sse::arena *a = sse::arena::create(mem, span);
    if (a == nullptr) {
        return 0;
    }
    size_t total = a->bytes_free();
    char *first_page = static_cast<char *>(a->alloc(4096));
    FUZZ_CHECK(first_page != nullptr);
    a->free(first_page);
    std::map<char *, size_t> live;
    uint64_t bad = 0;
    while (in.remaining_bytes() > 0) {
        switch (in.ConsumeIntegralInRange<int>(0, 5)) {
            case 0:
            case 1: {
                size_t n = in.ConsumeBool()
                               ? in.ConsumeIntegralInRange<size_t>(1, 2048)
                               : in.ConsumeIntegralInRange<size_t>(1, 60000);
                auto *p = static_cast<char *>(a->alloc(n));
                if (p != nullptr) {
                    FUZZ_CHECK(p >= first_page && p + n <= mem + span);
                    FUZZ_CHECK(!overlaps(live, p, n));
                    std::memset(p, 0x5a, n);
                    live[p] = n;
                }
                break;
            }
            case 2:
                if (!live.empty()) {
                    auto it = live.begin();
                    std::advance(it, in.ConsumeIntegralInRange<size_t>(
                                         0, live.size() - 1));
                    a->free(it->first);
                    live.erase(it);
                }
                break;
            case 3:
                if (!live.empty()) {
                    // Inside a block: refused.
                    auto it = live.begin();
                    std::advance(it, in.ConsumeIntegralInRange<size_t>(
                                         0, live.size() - 1));
                    if (it->second >= 2) {
                        a->free(it->first + in.ConsumeIntegralInRange<size_t>(
                                                1, it->second - 1));
                        bad++;
                    }
                }
                break;
            case 4:
            case 5: {
                // A process killed inside alloc or free: its records are
                // garbage; the store lists what it holds.
                char *from = reinterpret_cast<char *>(a) + sizeof(sse::arena);
                size_t k = in.ConsumeIntegralInRange<size_t>(0, 64);
                for (size_t i = 0; i < k; i++) {
                    from[in.ConsumeIntegralInRange<size_t>(
                        0, static_cast<size_t>(first_page - from) - 1)] =
                        in.ConsumeIntegral<char>();
                }
                a->rebuild([&](auto &&mark) {
                    for (auto &[p, n] : live) {
                        mark(p, n);
                    }
                });
                FUZZ_CHECK(a->bad_blocks() == 0);
                break;
            }
        }
        FUZZ_CHECK(*a->check() == '\0');
        FUZZ_CHECK(a->bad_frees() == bad);
    }
    for (auto &[p, n] : live) {
        a->free(p);
    }
    FUZZ_CHECK(a->bad_frees() == bad);
    FUZZ_CHECK(a->bytes_free() == total);
    FUZZ_CHECK(*a->check() == '\0');
    return 0;
}
