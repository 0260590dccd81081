// The store in a MAP_SHARED region used by two processes, as nginx workers
// use the zone: one process publishes, the other reads, and both publish at
// once under a process-shared mutex.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "store.hpp"

namespace {

constexpr size_t region_size = 4 << 20;
constexpr uint64_t epoch = 42;
constexpr int64_t long_ttl = 3600 * 1000;

// A power-of-two free-list arena whose whole state lives at the start of
// the shared region, so that every process sees the same heap.
struct arena {
    static constexpr size_t header = 16;  // keeps payloads 16-aligned
    static constexpr int min_class = 5;   // 32-byte blocks
    static constexpr int nclasses = 24;

    pthread_mutex_t lock;
    std::atomic<int> ready;  // start line for the concurrent test
    size_t size;
    size_t used;
    size_t live;  // blocks handed out and not freed
    void *free_list[nclasses];
    sse::zone_root *root;

    char *heap() { return reinterpret_cast<char *>(this) + heap_offset(); }
    static size_t heap_offset() { return (sizeof(arena) + 63) & ~size_t{63}; }

    static void *alloc(void *ctx, size_t n) {
        auto *a = static_cast<arena *>(ctx);
        int k = min_class;
        while (k < nclasses && (size_t{1} << k) < n + header) {
            k++;
        }
        if (k == nclasses) {
            return nullptr;
        }
        char *block;
        if (a->free_list[k] != nullptr) {
            block = static_cast<char *>(a->free_list[k]) - header;
            a->free_list[k] = *static_cast<void **>(a->free_list[k]);
        } else {
            size_t bytes = size_t{1} << k;
            if (a->used + bytes > a->size - heap_offset()) {
                return nullptr;
            }
            block = a->heap() + a->used;
            a->used += bytes;
        }
        std::memcpy(block, &k, sizeof(k));
        a->live++;
        return block + header;
    }

    static void release(void *ctx, void *p) {
        auto *a = static_cast<arena *>(ctx);
        int k;
        std::memcpy(&k, static_cast<char *>(p) - header, sizeof(k));
        *static_cast<void **>(p) = a->free_list[k];
        a->free_list[k] = p;
        a->live--;
    }

    sse::allocator get() { return {this, &alloc, &release}; }
    sse::store st() { return sse::store(root, get()); }
};

// Maps the region, lays out the arena and the zone in it.
class SharedZone : public ::testing::Test {
protected:
    void SetUp() override {
        void *p = mmap(nullptr, region_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ASSERT_NE(p, MAP_FAILED);
        a_ = new (p) arena();
        a_->size = region_size;
        pthread_mutexattr_t attr;
        pthread_mutexattr_init(&attr);
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        ASSERT_EQ(pthread_mutex_init(&a_->lock, &attr), 0);
        pthread_mutexattr_destroy(&attr);
        a_->root = sse::store::create(a_->get(), epoch, region_size);
        ASSERT_NE(a_->root, nullptr);
    }

    void TearDown() override {
        if (a_ != nullptr) {
            pthread_mutex_destroy(&a_->lock);
            munmap(a_, region_size);
        }
    }

    // Runs f in a child process; returns its exit code (or 128 + signal).
    template <typename F>
    int in_child(F &&f) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(60);  // a hung child fails the test instead of hanging it
            _exit(f());
        }
        return wait_for(pid);
    }

    static int wait_for(pid_t pid) {
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid) {
            return -1;
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

    arena *a_ = nullptr;
};

// Kills the test run with SIGALRM if it outlives `seconds`.
struct alarm_guard {
    explicit alarm_guard(unsigned seconds) { alarm(seconds); }
    ~alarm_guard() { alarm(0); }
};

constexpr int nchannels = 5;

std::string channel_name(const std::string &who, int i) {
    return who + "/" + std::to_string(i % nchannels);
}

// Varied payloads: multi-line, CRLF, bytes, empty.
std::string payload(const std::string &who, int i) {
    std::string s = who + " event " + std::to_string(i);
    if (i % 3 == 0) {
        s += "\nsecond line";
    }
    if (i % 7 == 0) {
        s += "\r\n\xff\xc3(";
    }
    if (i % 11 == 0) {
        s.clear();
    }
    return s;
}

std::string wire(uint64_t seq, const std::string &data) {
    char id[sse::max_event_id_len];
    size_t n = sse::format_event_id(id, {epoch, seq});
    return sse::encode_event(std::string_view(id, n), "", data);
}

// Publishes n events as `who`, one lock hold each; 0 when all went well.
int publish_all(arena *a, const std::string &who, int n, bool yield) {
    sse::store st = a->st();
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&a->lock);
        sse::channel *c = st.find_or_create(channel_name(who, i), i);
        sse::publish_result r =
            c ? st.publish(c, "", payload(who, i), i, 10000, long_ttl)
              : sse::publish_result{sse::publish_status::no_memory, 0};
        pthread_mutex_unlock(&a->lock);
        if (r.status != sse::publish_status::ok) {
            return 10;
        }
        if (yield && i % 8 == 0) {
            sched_yield();
        }
    }
    return 0;
}

// Checks, through the store, that `who` published events 0..n-1 as
// publish_all() does, with seqs first, first+1, ... when `dense`.
// Returns 0 when they all read back, else the number of the failed check.
int verify_all(arena *a, const std::string &who, int n, bool dense) {
    sse::store st = a->st();
    pthread_mutex_lock(&a->lock);
    // Zone-wide: this publisher's events in its own order, bytes intact.
    std::vector<uint64_t> seqs;
    uint64_t last = 0;
    int bad = 0;
    st.for_each_since(0, [&](const sse::message *m) {
        bad = bad ? bad : (m->seq <= last ? 1 : 0);
        last = m->seq;
        std::string_view id = m->chan->id();
        if (id.substr(0, who.size() + 1) != who + "/") {
            return;
        }
        int i = static_cast<int>(seqs.size());
        seqs.push_back(m->seq);
        bad = bad ? bad : (id != channel_name(who, i) ? 2 : 0);
        bad = bad ? bad : (m->wire() != wire(m->seq, payload(who, i)) ? 3 : 0);
    });
    bad = bad ? bad : (seqs.size() != static_cast<size_t>(n) ? 4 : 0);
    for (size_t i = 1; dense && !bad && i < seqs.size(); i++) {
        bad = seqs[i] != seqs[0] + i ? 5 : 0;
    }
    // Per channel: every n-th event, oldest first.
    for (int ch = 0; ch < nchannels && !bad; ch++) {
        sse::channel *c = st.find(channel_name(who, ch));
        if (c == nullptr) {
            bad = 6;
            break;
        }
        int i = ch;
        st.for_each_in(c, 0, 100000, [&](const sse::message *m) {
            bool ok = i < n && m->seq == seqs[i] &&
                      m->wire() == wire(m->seq, payload(who, i));
            bad = bad ? bad : (ok ? 0 : 7);
            i += nchannels;
        });
        bad = bad ? bad : (i < n ? 8 : 0);  // stopped short
        bad = bad ? bad : (st.gap(c, 0) ? 9 : 0);
    }
    pthread_mutex_unlock(&a->lock);
    return bad;
}

}  // namespace

TEST_F(SharedZone, ParentReadsWhatAChildPublished) {
    const int n = 600;
    ASSERT_EQ(in_child([&] { return publish_all(a_, "child", n, false); }), 0);
    EXPECT_EQ(a_->root->seq, static_cast<uint64_t>(n));
    EXPECT_EQ(a_->root->nmessages, static_cast<uint64_t>(n));
    EXPECT_EQ(a_->root->nchannels, static_cast<uint32_t>(nchannels));
    EXPECT_EQ(a_->root->stats.evicted, 0u);
    EXPECT_EQ(verify_all(a_, "child", n, true), 0);
    // And directly, the first and the last.
    EXPECT_EQ(a_->root->head->wire(),
              "id: 42-1\ndata: \n\n");  // payload 0 is empty
    EXPECT_EQ(a_->root->tail->wire(), wire(n, payload("child", n - 1)));
    EXPECT_EQ(a_->root->tail->chan->id(), "child/4");
}

TEST_F(SharedZone, ChildReadsWhatTheParentPublished) {
    const int n = 600;
    ASSERT_EQ(publish_all(a_, "parent", n, false), 0);
    EXPECT_EQ(in_child([&] { return verify_all(a_, "parent", n, true); }), 0);
    // The check itself can fail: a child looking for more events than
    // there are reports it.
    EXPECT_EQ(in_child([&] { return verify_all(a_, "parent", n + 1, true); }),
              4);
}

TEST_F(SharedZone, ChildPublishesOnTopOfParentEvents) {
    ASSERT_EQ(publish_all(a_, "parent", 100, false), 0);
    ASSERT_EQ(in_child([&] { return publish_all(a_, "child", 100, false); }),
              0);
    EXPECT_EQ(verify_all(a_, "parent", 100, true), 0);
    EXPECT_EQ(verify_all(a_, "child", 100, true), 0);
    sse::store st = a_->st();
    std::vector<uint64_t> seqs;
    st.for_each_since(100,
                      [&](const sse::message *m) { seqs.push_back(m->seq); });
    ASSERT_EQ(seqs.size(), 100u);
    EXPECT_EQ(seqs.front(), 101u);
    EXPECT_EQ(seqs.back(), 200u);
}

TEST_F(SharedZone, ConcurrentPublishersGetUniqueIncreasingSeqs) {
    const int n = 3000;
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        while (a_->ready.load() == 0) {
        }
        _exit(publish_all(a_, "child", n, true));
    }
    ASSERT_GT(pid, 0);
    // A broken lock corrupts the lists and can loop forever: fail loudly.
    alarm_guard watchdog(120);
    a_->ready.store(1);
    int parent_rc = publish_all(a_, "parent", n, true);
    ASSERT_EQ(wait_for(pid), 0);
    ASSERT_EQ(parent_rc, 0);

    EXPECT_EQ(a_->root->seq, 2u * n);
    EXPECT_EQ(a_->root->nmessages, 2u * n);
    EXPECT_EQ(a_->root->stats.published, 2u * n);
    std::vector<int> seen(2 * n + 1, 0);
    uint64_t last = 0;
    int switches = 0;
    const sse::channel *prev = nullptr;
    a_->st().for_each_since(0, [&](const sse::message *m) {
        EXPECT_GT(m->seq, last);
        last = m->seq;
        ASSERT_LE(m->seq, 2u * n);
        seen[m->seq]++;
        bool child = m->chan->id().substr(0, 6) == "child/";
        if (prev && (prev->id().substr(0, 6) == "child/") != child) {
            switches++;
        }
        prev = m->chan;
    });
    for (int s = 1; s <= 2 * n; s++) {
        ASSERT_EQ(seen[s], 1) << "seq " << s;
    }
    // Each publisher's events are in its own order with intact bytes;
    // their seqs interleave, so they need not be dense.
    EXPECT_EQ(verify_all(a_, "child", n, false), 0);
    EXPECT_EQ(verify_all(a_, "parent", n, false), 0);
    RecordProperty("interleavings", switches);
}

TEST_F(SharedZone, SlotCountsOfADeadChildAreCleared) {
    sse::store st = a_->st();
    sse::channel *c = st.find_or_create("room", 0);
    ASSERT_NE(c, nullptr);
    st.subscribe(c, 0);
    ASSERT_EQ(in_child([&] {
                  pthread_mutex_lock(&a_->lock);
                  st.subscribe(c, 1);
                  st.subscribe(c, 1);
                  pthread_mutex_unlock(&a_->lock);
                  return 0;  // "dies" holding two subscriptions
              }),
              0);
    EXPECT_EQ(sse::store::subscribers(c), 3u);
    st.clear_slot(1, 0);
    EXPECT_EQ(sse::store::subscribers(c), 1u);
    EXPECT_EQ(c->subs[0], 1u);
}

TEST_F(SharedZone, ArenaEndsWithNothingLiveAfterRemovingEverything) {
    ASSERT_EQ(in_child([&] { return publish_all(a_, "child", 200, false); }),
              0);
    sse::store st = a_->st();
    for (int ch = 0; ch < nchannels; ch++) {
        sse::channel *c = st.find(channel_name("child", ch));
        ASSERT_NE(c, nullptr);
        st.remove(c, 0);
    }
    EXPECT_EQ(a_->root->nmessages, 0u);
    EXPECT_EQ(a_->live, 2u);  // root and buckets
}
