#include "arena.hpp"

#include <cstring>

namespace sse {

namespace {

constexpr uint64_t arena_magic = 0x5353454152454e41ull;  // "SSEARENA"

// Multiples of 16; each at most 128 to a page, so two bitmap words do.
constexpr uint32_t class_sizes[arena::nclasses] = {
    32,  48,  64,  80,  96,  112, 128, 160,  192,  224, 256,
    320, 384, 448, 512, 640, 768, 896, 1024, 1360, 2048};

static_assert(class_sizes[arena::nclasses - 1] == arena::max_small);

}  // namespace

uint32_t arena::class_of(size_t size) {
    uint32_t c = 0;
    while (class_sizes[c] < size) {
        c++;
    }
    return c;
}

uint32_t arena::class_size(uint32_t cls) { return class_sizes[cls]; }

uint32_t arena::per_page(uint32_t cls) {
    uint32_t n = static_cast<uint32_t>(page_size / class_sizes[cls]);
    return n < 128 ? n : 128;
}

uint32_t arena::bin_of(uint32_t len) {
    uint32_t b = 0;
    while (len > 1 && b + 1 < nbins) {
        len >>= 1;
        b++;
    }
    return b;
}

arena *arena::create(void *mem, size_t size) {
    auto start = reinterpret_cast<uintptr_t>(mem);
    uintptr_t end = start + size;
    uintptr_t a = (start + 63) & ~uintptr_t{63};
    uintptr_t descs = (a + sizeof(arena) + 63) & ~uintptr_t{63};
    if (descs >= end) {
        return nullptr;
    }
    size_t n = (end - descs) / (page_size + sizeof(page));
    uintptr_t base = 0;
    for (; n > 0; n--) {
        base = (descs + n * sizeof(page) + page_size - 1) &
               ~uintptr_t{page_size - 1};
        if (base + n * page_size <= end) {
            break;
        }
    }
    if (n == 0 || n > UINT32_MAX / 2) {
        return nullptr;
    }
    auto *ar = reinterpret_cast<arena *>(a);
    std::memset(static_cast<void *>(ar), 0, sizeof(arena));
    ar->magic_ = arena_magic;
    ar->pages_ = reinterpret_cast<page *>(descs);
    ar->base_ = reinterpret_cast<char *>(base);
    ar->npages_ = static_cast<uint32_t>(n);
    ar->rebuild([](auto &&) {});
    return ar;
}

bool arena::valid() const { return magic_ == arena_magic; }

// ---------------------------------------------------------------- lists

void arena::push(uint32_t *head, uint32_t i) {
    pages_[i].prev = none;
    pages_[i].next = *head;
    if (*head != none) {
        pages_[*head].prev = i;
    }
    *head = i;
}

void arena::unlink(uint32_t *head, uint32_t i) {
    page &p = pages_[i];
    (p.prev != none ? pages_[p.prev].next : *head) = p.next;
    if (p.next != none) {
        pages_[p.next].prev = p.prev;
    }
}

// ---------------------------------------------------------------- runs

void arena::add_free_run(uint32_t i, uint32_t n) {
    pages_[i].kind = k_free;
    pages_[i].len = n;
    pages_[i + n - 1].kind = k_free;
    pages_[i + n - 1].head = i;
    push(&bins_[bin_of(n)], i);
}

uint32_t arena::alloc_run(uint32_t n) {
    uint32_t b = bin_of(n);
    uint32_t i = none;
    // First fit in n's own bin; any run of a bigger bin is long enough.
    for (uint32_t k = bins_[b]; k != none; k = pages_[k].next) {
        if (pages_[k].len >= n) {
            i = k;
            break;
        }
    }
    for (uint32_t bb = b + 1; i == none && bb < nbins; bb++) {
        i = bins_[bb];
    }
    if (i == none) {
        return none;
    }
    uint32_t len = pages_[i].len;
    unlink(&bins_[bin_of(len)], i);
    if (len > n) {
        add_free_run(i + n, len - n);
    }
    pages_[i].kind = k_run;
    pages_[i].len = n;
    for (uint32_t k = 1; k < n; k++) {
        pages_[i + k].kind = k_run_body;
    }
    free_pages_ -= n;
    return i;
}

void arena::free_run(uint32_t i, uint32_t n) {
    free_pages_ += n;
    uint32_t start = i, len = n;
    // The page before a run is the last of what precedes it: when free, it
    // knows its run's head; the page after is the head of what follows.
    if (i > 0 && pages_[i - 1].kind == k_free) {
        uint32_t h = pages_[i - 1].head;
        unlink(&bins_[bin_of(pages_[h].len)], h);
        start = h;
        len += pages_[h].len;
    }
    uint32_t r = i + n;
    if (r < npages_ && pages_[r].kind == k_free) {
        unlink(&bins_[bin_of(pages_[r].len)], r);
        len += pages_[r].len;
    }
    pages_[i].kind = k_free;
    add_free_run(start, len);
}

// ---------------------------------------------------------------- blocks

void *arena::alloc(size_t size) {
    if (size > max_small) {
        size_t n = (size + page_size - 1) / page_size;
        if (n > npages_) {
            return nullptr;
        }
        uint32_t i = alloc_run(static_cast<uint32_t>(n));
        return i == none ? nullptr : page_addr(i);
    }
    uint32_t cls = class_of(size);
    uint32_t cs = class_sizes[cls], pp = per_page(cls);
    uint32_t i = partial_[cls];
    if (i == none) {
        i = alloc_run(1);
        if (i == none) {
            return nullptr;
        }
        page &p = pages_[i];
        p.kind = k_small;
        p.cls = static_cast<uint8_t>(cls);
        p.used = 0;
        p.bits[0] = p.bits[1] = 0;
        push(&partial_[cls], i);
        small_free_bytes_ += uint64_t{pp} * cs;
    }
    page &p = pages_[i];
    uint32_t bit = 0;
    for (uint32_t w = 0; w < 2; w++) {
        uint64_t freeb = ~p.bits[w];
        if (freeb != 0) {
            bit = w * 64 + static_cast<uint32_t>(__builtin_ctzll(freeb));
            break;
        }
    }
    p.bits[bit / 64] |= uint64_t{1} << (bit % 64);
    p.used++;
    small_free_bytes_ -= cs;
    if (p.used == pp) {
        unlink(&partial_[cls], i);
    }
    return page_addr(i) + size_t{bit} * cs;
}

void arena::free(void *ptr) {
    auto *c = static_cast<char *>(ptr);
    if (c < base_ || c >= page_addr(npages_)) {
        bad_frees_++;
        return;
    }
    size_t off = static_cast<size_t>(c - base_);
    auto i = static_cast<uint32_t>(off / page_size);
    size_t in = off % page_size;
    page &p = pages_[i];
    if (p.kind == k_run && in == 0) {
        free_run(i, p.len);
        return;
    }
    if (p.kind != k_small) {
        bad_frees_++;
        return;
    }
    uint32_t cs = class_sizes[p.cls], pp = per_page(p.cls);
    uint32_t bit = static_cast<uint32_t>(in / cs);
    uint64_t mask = uint64_t{1} << (bit % 64);
    if (in % cs != 0 || bit >= pp || !(p.bits[bit / 64] & mask)) {
        bad_frees_++;
        return;
    }
    p.bits[bit / 64] &= ~mask;
    if (p.used == pp) {
        push(&partial_[p.cls], i);
    }
    p.used--;
    small_free_bytes_ += cs;
    if (p.used == 0) {
        unlink(&partial_[p.cls], i);
        small_free_bytes_ -= uint64_t{pp} * cs;
        free_run(i, 1);
    }
}

size_t arena::bytes_free() const {
    return size_t{free_pages_} * page_size + small_free_bytes_;
}

// ---------------------------------------------------------------- rebuild

void arena::reset() {
    std::memset(static_cast<void *>(pages_), 0, size_t{npages_} * sizeof(page));
    for (auto &h : partial_) {
        h = none;
    }
    for (auto &h : bins_) {
        h = none;
    }
    free_pages_ = 0;
    small_free_bytes_ = 0;
}

void arena::mark(const void *ptr, size_t size) {
    auto *c = static_cast<const char *>(ptr);
    if (c < base_ || c >= page_addr(npages_)) {
        bad_blocks_++;
        return;
    }
    size_t off = static_cast<size_t>(c - base_);
    auto i = static_cast<uint32_t>(off / page_size);
    size_t in = off % page_size;
    if (size > max_small) {
        size_t n = (size + page_size - 1) / page_size;
        bool ok = in == 0 && n <= npages_ - i;
        for (uint32_t k = 0; ok && k < n; k++) {
            ok = pages_[i + k].kind == k_free;
        }
        if (!ok) {
            bad_blocks_++;
            return;
        }
        pages_[i].kind = k_run;
        pages_[i].len = static_cast<uint32_t>(n);
        for (uint32_t k = 1; k < n; k++) {
            pages_[i + k].kind = k_run_body;
        }
        return;
    }
    uint32_t cls = class_of(size);
    uint32_t cs = class_sizes[cls];
    uint32_t bit = static_cast<uint32_t>(in / cs);
    page &p = pages_[i];
    uint64_t mask = uint64_t{1} << (bit % 64);
    if (in % cs != 0 || bit >= per_page(cls) ||
        !(p.kind == k_free || (p.kind == k_small && p.cls == cls)) ||
        (p.kind == k_small && (p.bits[bit / 64] & mask))) {
        bad_blocks_++;
        return;
    }
    p.kind = k_small;
    p.cls = static_cast<uint8_t>(cls);
    p.bits[bit / 64] |= mask;
    p.used++;
}

void arena::relink() {
    for (uint32_t i = 0; i < npages_;) {
        page &p = pages_[i];
        if (p.kind == k_free) {
            uint32_t j = i;
            while (j < npages_ && pages_[j].kind == k_free) {
                j++;
            }
            add_free_run(i, j - i);
            free_pages_ += j - i;
            i = j;
        } else if (p.kind == k_run) {
            i += p.len;
        } else {
            if (p.kind == k_small && p.used < per_page(p.cls)) {
                push(&partial_[p.cls], i);
                small_free_bytes_ +=
                    uint64_t{per_page(p.cls) - p.used} * class_sizes[p.cls];
            }
            i++;
        }
    }
}

const char *arena::check() const {
    if (magic_ != arena_magic) {
        return "arena: bad magic";
    }
    uint64_t free_pages = 0, small_free = 0;
    for (uint32_t i = 0; i < npages_;) {
        const page &p = pages_[i];
        if (p.kind == k_free) {
            if (p.len == 0 || p.len > npages_ - i ||
                pages_[i + p.len - 1].head != i) {
                return "arena: broken free run";
            }
            uint32_t n = 0, k = bins_[bin_of(p.len)];
            for (; k != none && k != i; k = pages_[k].next) {
                if (++n > npages_) {
                    return "arena: bin list cycles";
                }
            }
            if (k != i) {
                return "arena: free run missing from its bin";
            }
            free_pages += p.len;
            i += p.len;
            if (i < npages_ && pages_[i].kind == k_free) {
                return "arena: adjacent free runs not merged";
            }
        } else if (p.kind == k_run) {
            if (p.len == 0 || p.len > npages_ - i) {
                return "arena: broken run";
            }
            i += p.len;
        } else if (p.kind == k_small) {
            uint32_t used =
                static_cast<uint32_t>(__builtin_popcountll(p.bits[0]) +
                                      __builtin_popcountll(p.bits[1]));
            if (p.cls >= nclasses || used != p.used || used == 0 ||
                used > per_page(p.cls)) {
                return "arena: small page counts wrong";
            }
            small_free += uint64_t{per_page(p.cls) - used} * class_sizes[p.cls];
            i++;
        } else {
            return "arena: stray run page";
        }
    }
    if (free_pages != free_pages_ || small_free != small_free_bytes_) {
        return "arena: free counts wrong";
    }
    for (uint32_t c = 0; c < nclasses; c++) {
        uint32_t n = 0;
        for (uint32_t k = partial_[c]; k != none; k = pages_[k].next) {
            if (++n > npages_ || pages_[k].kind != k_small ||
                pages_[k].cls != c || pages_[k].used >= per_page(c)) {
                return "arena: partial list wrong";
            }
        }
    }
    return "";
}

}  // namespace sse
