// Publishers: keep-alive POST connections, per-channel queues, pacing
// (--rate) and the publish response times.
#pragma once

#include "common.hpp"

namespace {

// ------------------------------------------------------------------ publishers

struct Pub {
    int fd = -1;
    int queue = 0;      // index into queues
    bool busy = false;  // a request in flight
    bool connected = false;
    std::string out;
    size_t out_off = 0;
    std::string in;
    int64_t t_sent = 0;
    int64_t item = 0;
};

std::vector<Pub> pubs;
// A queue item >= 0 is an event index; < 0 is a warm-up of channel (-1 - v).
std::vector<std::vector<int64_t>> queues;
std::vector<size_t> qpos;
std::vector<std::string> pub_paths;  // per channel
std::vector<int> ev_channel;         // event -> channel
std::vector<uint32_t> ev_cseq;       // event -> sequence within its channel
std::vector<uint32_t> per_channel;   // events per channel

struct PubTotals {
    uint64_t sent = 0, ok = 0, errors = 0, warm_sent = 0, reconnects = 0;
    uint64_t events_done = 0;  // answered event publishes (ok or not)
    int64_t warm_pending = 0;  // warm-up publishes not answered yet
    int64_t t_first = 0, t_last = 0, t_last_send = 0;
    std::map<int, int> status;
    std::vector<int64_t> rtt;
    std::vector<int64_t> rtt_at;    // when each of rtt was sent, from t0
    std::vector<int64_t> send_lag;  // paced: actual - intended send time
    int64_t t0 = 0;                 // pacing origin
    bool paced_started = false;
} P;

std::string g_padding;

void pub_connect(size_t k) {
    Pub &p = pubs[k];
    int err = 0;
    p.fd = open_socket(g_addr_pub, err);
    if (p.fd < 0) {
        logf("sseload: publisher socket: %s\n", strerror(err));
        exit(1);
    }
    p.connected = false;
    p.in.clear();
    epoll_set(EPOLL_CTL_ADD, p.fd, EPOLLIN | EPOLLOUT, TAG_PUB | k);
}

void pub_reconnect(size_t k) {
    Pub &p = pubs[k];
    epoll_ctl(epfd, EPOLL_CTL_DEL, p.fd, nullptr);
    close(p.fd);
    P.reconnects++;
    pub_connect(k);
    if (p.busy) p.out_off = 0;  // resend the request in flight
}

bool publishing = false;  // events may be taken from the queues

bool item_due(int64_t item) {
    if (item < 0) return true;
    if (!publishing) return false;
    if (opt.rate <= 0) return true;
    int64_t due = P.t0 + int64_t(double(item) * 1e9 / opt.rate);
    return g_now >= due;
}

void pub_build(Pub &p, int64_t item) {
    int ch;
    std::string body;
    if (item < 0) {
        ch = int(-1 - item);
        body = "w " + std::to_string(ch);
    } else {
        ch = ev_channel[size_t(item)];
        char head[96];
        int64_t t = now_ns();
        int n = snprintf(head, sizeof head, "%u %d %" PRId64 " %" PRId64 " ",
                         ev_cseq[size_t(item)], ch, item, t);
        body.assign(head, size_t(n));
        if (body.size() < size_t(opt.size))
            body.append(g_padding, 0, size_t(opt.size) - body.size());
        p.t_sent = t;
    }
    p.out = "POST " + pub_paths[size_t(ch)] + " HTTP/1.1\r\nHost: " + opt.host +
            "\r\nContent-Type: text/plain\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n";
    p.out += body;
    p.out_off = 0;
    p.item = item;
    p.busy = true;
}

void pub_try_send(size_t k) {
    Pub &p = pubs[k];
    if (p.busy || !p.connected) return;
    auto &q = queues[size_t(p.queue)];
    size_t &pos = qpos[size_t(p.queue)];
    if (pos >= q.size()) return;
    int64_t item = q[pos];
    g_now = now_ns();
    if (!item_due(item)) return;
    pos++;
    pub_build(p, item);
    if (item >= 0) {
        P.sent++;
        if (!P.t_first) P.t_first = p.t_sent;
        P.t_last_send = p.t_sent;
        if (opt.rate > 0)
            P.send_lag.push_back(p.t_sent - P.t0 -
                                 int64_t(double(item) * 1e9 / opt.rate));
    } else {
        P.warm_sent++;
        p.t_sent = g_now;
    }
    if (!write_all_nb(p.fd, p.out, p.out_off)) {
        pub_reconnect(k);
        return;
    }
    epoll_set(EPOLL_CTL_MOD, p.fd,
              EPOLLIN | (p.out_off < p.out.size() ? uint32_t(EPOLLOUT) : 0u),
              TAG_PUB | k);
}

void pub_io(size_t k, uint32_t events) {
    Pub &p = pubs[k];
    if (!p.connected) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            int e = 0;
            socklen_t l = sizeof e;
            getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &e, &l);
            logf("sseload: publisher connect: %s\n", strerror(e));
            exit(1);
        }
        if (events & EPOLLOUT) {
            p.connected = true;
            epoll_set(EPOLL_CTL_MOD, p.fd,
                      EPOLLIN | (p.busy ? uint32_t(EPOLLOUT) : 0u),
                      TAG_PUB | k);
            if (!p.busy) pub_try_send(k);
        }
    }
    if ((events & EPOLLOUT) && p.busy && p.out_off < p.out.size()) {
        if (!write_all_nb(p.fd, p.out, p.out_off)) {
            pub_reconnect(k);
            return;
        }
        if (p.out_off == p.out.size()) {
            epoll_set(EPOLL_CTL_MOD, p.fd, EPOLLIN, TAG_PUB | k);
        }
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    for (;;) {
        ssize_t n = recv(p.fd, g_buf, sizeof g_buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            pub_reconnect(k);
            return;
        }
        if (n == 0) {
            pub_reconnect(k);
            return;
        }
        p.in.append(g_buf, size_t(n));
        if (size_t(n) < sizeof g_buf) break;
    }
    // Complete responses in p.in (one request in flight at a time).
    for (;;) {
        size_t e = p.in.find("\r\n\r\n");
        if (e == std::string::npos) return;
        HttpHead h;
        if (!parse_head(p.in.data(), e + 4, h)) {
            logf("sseload: bad publisher response: %.80s\n", p.in.c_str());
            exit(1);
        }
        size_t total;
        if (h.chunked) {
            size_t z = p.in.find("\r\n0\r\n\r\n", e);
            if (z == std::string::npos) {
                if (p.in.compare(e + 4, 5, "0\r\n\r\n") == 0)
                    total = e + 9;
                else
                    return;
            } else {
                total = z + 7;
            }
        } else {
            size_t cl = h.content_length > 0 ? size_t(h.content_length) : 0;
            if (p.in.size() < e + 4 + cl) return;
            total = e + 4 + cl;
        }
        g_now = now_ns();
        if (p.busy) {
            p.busy = false;
            if (p.item >= 0) {
                P.events_done++;
                P.status[h.status]++;
                if (h.status >= 200 && h.status < 300)
                    P.ok++;
                else
                    P.errors++;
                P.rtt.push_back(g_now - p.t_sent);
                P.rtt_at.push_back(p.t_sent - P.t0);
                P.t_last = g_now;
            } else {
                P.warm_pending--;
                if (h.status < 200 || h.status >= 300)
                    T.errors["warm-up publish status " +
                             std::to_string(h.status)]++;
            }
        }
        p.in.erase(0, total);
        if (h.close) {
            pub_reconnect(k);
            return;
        }
        pub_try_send(k);
    }
}

size_t queue_items_left() {
    size_t left = 0;
    for (size_t q = 0; q < queues.size(); q++)
        left += queues[q].size() - qpos[q];
    return left;
}

bool publishers_idle() {
    for (auto &p : pubs)
        if (p.busy) return false;
    return queue_items_left() == 0;
}

}  // namespace
