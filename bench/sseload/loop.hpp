// The epoll loop, opening subscribers in batches, the warm-up.
#pragma once

#include "common.hpp"

namespace {

// ------------------------------------------------------------------ the loop

size_t next_to_open = 0, open_end = 0;
std::string open_last_id;
bool stdin_ready = false;

void open_more() {
    // Retries first, then new connections, keeping at most --batch in flight.
    while (T.connecting < opt.batch) {
        size_t pick = SIZE_MAX;
        for (size_t i = 0; i < next_to_open && T.connect_retries > 0; i++) {
            if (subs[i].state == S_IDLE && subs[i].attempts > 0) {
                pick = i;
                break;
            }
        }
        if (pick == SIZE_MAX) {
            if (next_to_open >= open_end) return;
            pick = next_to_open++;
        } else {
            T.connect_retries--;
        }
        sub_start(pick, open_last_id);
    }
}

void kick_publishers() {
    for (size_t k = 0; k < pubs.size(); k++) pub_try_send(k);
}

int64_t next_due_ns() {
    if (!publishing || opt.rate <= 0) return INT64_MAX;
    int64_t best = INT64_MAX;
    for (auto &p : pubs) {
        if (p.busy) continue;
        auto &q = queues[size_t(p.queue)];
        size_t pos = qpos[size_t(p.queue)];
        if (pos >= q.size() || q[pos] < 0) continue;
        best = std::min(best, P.t0 + int64_t(double(q[pos]) * 1e9 / opt.rate));
    }
    return best;
}

// Runs the loop until done() or the deadline; returns done().
bool loop_until(const std::function<bool()> &done, double seconds) {
    int64_t deadline = now_ns() + int64_t(seconds * 1e9);
    epoll_event evs[512];
    int64_t last_progress = now_ns();
    while (!done()) {
        int64_t now = now_ns();
        if (now >= deadline) return false;
        open_more();
        int64_t due = next_due_ns();
        int64_t wait_ns = std::min(deadline - now, int64_t(100000000));
        if (due != INT64_MAX)
            wait_ns = std::min(wait_ns, std::max<int64_t>(0, due - now));
        int timeout_ms = int((wait_ns + 999999) / 1000000);
        int n = epoll_wait(epfd, evs, 512, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64 & TAG_MASK;
            size_t idx = size_t(evs[i].data.u64 & ~TAG_MASK);
            if (tag == TAG_SUB)
                sub_io(idx, evs[i].events);
            else if (tag == TAG_PUB)
                pub_io(idx, evs[i].events);
            else if (tag == TAG_STDIN) {
                stdin_ready = true;
                epoll_ctl(epfd, EPOLL_CTL_DEL, 0, nullptr);
            }
        }
        if (publishing && opt.rate > 0) kick_publishers();
        if (opt.verbose && now_ns() - last_progress > 1000000000) {
            last_progress = now_ns();
            logf("sseload: ready %d failed %d connecting %d received %" PRIu64
                 " done %d sent %" PRIu64 "\n",
                 T.ready, T.failed, T.connecting, T.received, T.done, P.sent);
        }
    }
    return true;
}

// Opens subscribers [from, to) and waits until each is ready or failed.
bool open_subs(size_t from, size_t to, const std::string &last_id) {
    next_to_open = from;
    open_end = to;
    open_last_id = last_id;
    bool ok = loop_until(
        [&] {
            return next_to_open >= open_end && T.connecting == 0 &&
                   T.connect_retries == 0;
        },
        opt.timeout);
    // A server may hold the response head back until the first event; the
    // warm-up (or the events) will bring it.
    loop_until([] { return T.ready >= T.requested; }, 1.0);
    return ok;
}

int live_subs() { return T.requested - T.closed; }

// Publishes a warm-up event to every channel with a live subscriber that has
// not seen one yet, until all have (a few rounds at most).
int warm_up() {
    int rounds = 0;
    for (; rounds < 10; rounds++) {
        std::vector<char> need(size_t(opt.channels), 0);
        bool any = false;
        for (auto &s : subs)
            if ((s.state == S_STREAM || s.state == S_HEAD) && !s.warm)
                need[size_t(s.ch)] = 1, any = true;
        if (!any) break;
        for (int c = 0; c < opt.channels; c++)
            if (need[size_t(c)]) {
                int q = int(queues.size()) == 1 ? 0 : c % int(queues.size());
                // a warm-up goes before any event left in that queue
                auto &qq = queues[size_t(q)];
                qq.insert(qq.begin() + long(qpos[size_t(q)]), int64_t(-1 - c));
                P.warm_pending++;
            }
        kick_publishers();
        double wait = rounds == 0 ? 5.0 : 1.0;
        loop_until(
            [&] {
                return P.warm_pending == 0 &&
                       T.warm + T.closed_unwarm >= T.requested;
            },
            wait);
    }
    return rounds;
}

}  // namespace
