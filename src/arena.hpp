// A memory allocator for the shared-memory zone that a SIGKILL cannot
// break for good.
//
// nginx's slab allocator keeps its free lists in the zone; a process killed
// in the middle of ngx_slab_alloc/free leaves them half linked, and a later
// allocation crashes every worker that tries. No order of writes makes a
// general allocator safe to interrupt, so this one is made to be rebuilt
// instead: its whole state (which pages are free, which blocks of a page are
// used) is derived data. After an interrupted session the store lists every
// block it still references, and `rebuild` lays the allocator out anew from
// that list alone. Whatever the dead process left half done, and any block
// it had allocated but not yet linked, comes back as free memory.
//
// Layout: 4 KiB pages. Blocks up to `max_small` bytes come from pages cut
// into blocks of one size class, with a bitmap of used blocks per page;
// larger ones are runs of whole pages. Free pages are kept as runs that
// merge with their neighbours, in lists by size.
//
// Lives at the start of its region; the region must be mapped at the same
// address in every process using it (as nginx maps shared memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace sse {

class arena {
public:
    static constexpr size_t page_size = 4096;
    static constexpr size_t max_small = 2048;
    static constexpr uint32_t nclasses = 21;
    static constexpr uint32_t nbins = 32;

    struct block {
        const void *p;
        size_t size;
    };

    // Lays out an arena over [mem, mem + size); nullptr when that cannot
    // hold the arena's header and one page.
    static arena *create(void *mem, size_t size);

    // nullptr when it cannot be had.
    void *alloc(size_t size);
    // Ignores (and counts) a pointer that is not a live block of this
    // arena, rather than corrupting it.
    void free(void *p);

    // Forgets everything and makes exactly the listed blocks the used ones
    // (each as returned by alloc for that size). Blocks that overlap,
    // lie outside the arena or do not fit its layout are counted in
    // `bad_blocks` and not kept. Needs no memory of its own.
    template <typename F>
    void rebuild(F &&each_block) {
        reset();
        each_block([this](const void *p, size_t size) { mark(p, size); });
        relink();
    }

    // This is an arena laid out by create() (of this build).
    bool valid() const;

    // "" when the free lists, bitmaps and counts agree, else what is wrong.
    const char *check() const;

    size_t bytes_total() const { return size_t{npages_} * page_size; }
    size_t bytes_free() const;
    uint64_t bad_frees() const { return bad_frees_; }
    uint64_t bad_blocks() const { return bad_blocks_; }
    // The size class of a small size, and its block size.
    static uint32_t class_of(size_t size);
    static uint32_t class_size(uint32_t cls);

    // Free for its user: the store keeps its root here.
    void *user() const { return user_; }
    void set_user(void *u) { user_ = u; }

private:
    enum : uint8_t { k_free = 0, k_small, k_run, k_run_body };
    static constexpr uint32_t none = UINT32_MAX;

    struct page {
        uint32_t next;  // in a class's partial list or a bin's run list
        uint32_t prev;
        uint32_t len;   // run head (free or used): pages in the run
        uint32_t head;  // last page of a free run: its first page
        uint16_t used;  // small: blocks in use
        uint8_t kind;
        uint8_t cls;
        uint32_t reserved;
        uint64_t bits[2];  // small: used blocks (at most 128 per page)
    };

    arena() = default;
    char *page_addr(uint32_t i) const { return base_ + size_t{i} * page_size; }
    static uint32_t bin_of(uint32_t len);
    static uint32_t per_page(uint32_t cls);

    uint32_t alloc_run(uint32_t n);
    void free_run(uint32_t i, uint32_t n);
    void add_free_run(uint32_t i, uint32_t n);
    void unlink(uint32_t *head, uint32_t i);
    void push(uint32_t *head, uint32_t i);

    void reset();
    void mark(const void *p, size_t size);
    void relink();

    uint64_t magic_;
    void *user_;
    char *base_;  // the first page
    uint32_t npages_;
    uint32_t free_pages_;
    uint64_t small_free_bytes_;
    uint64_t bad_frees_;
    uint64_t bad_blocks_;
    uint32_t partial_[nclasses];
    uint32_t bins_[nbins];
    page *pages_;
};

static_assert(std::is_standard_layout_v<arena> &&
              std::is_trivially_destructible_v<arena>);

}  // namespace sse
