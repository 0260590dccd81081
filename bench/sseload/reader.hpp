// Subscribers: the HTTP body decoders (chunked, length, close), the
// incremental event-stream parser and the exactly-once, in-order checks.
#pragma once

#include "common.hpp"

namespace {

// ------------------------------------------------------------------
// subscribers

enum SubState : uint8_t {
    S_IDLE,
    S_CONNECTING,
    S_HEAD,
    S_STREAM,
    S_CLOSED,
    S_FAILED
};
enum Framing : uint8_t { F_CLOSE, F_LENGTH, F_CHUNKED };
enum ChunkState : uint8_t {
    C_SIZE,
    C_EXT,
    C_SIZE_LF,
    C_DATA,
    C_DATA_CR,
    C_DATA_LF,
    C_TRAILER,
    C_TRAILER_LF,
    C_DONE
};

struct Sub {
    int fd = -1;
    int ch = 0;
    SubState state = S_IDLE;
    Framing framing = F_CLOSE;
    ChunkState cstate = C_SIZE;
    uint8_t attempts = 0;
    bool skip_lf = false;
    bool has_data = false;
    bool warm = false;
    bool done = false;
    bool record_ids = false;
    uint64_t chunk_left = 0;
    int64_t body_left = 0;
    std::string req;
    size_t req_off = 0;
    std::string head;   // response head while it arrives
    std::string line;   // a partial line carried across reads
    std::string data;   // data of the event being parsed
    std::string id;     // id field of the block being parsed
    std::string event;  // event field of the block being parsed
    std::string last_id;
    // accounting over the expected range [lo, hi) of channel sequence numbers
    uint32_t lo = 0, hi = 0;
    std::vector<uint64_t> seen;
    uint32_t got = 0, dups = 0, ooo = 0, unexpected = 0, wrong_ch = 0;
    int64_t max_cseq = -1;
    int64_t t_open = 0, t_ready = 0, t_done = 0;
    int status = 0;
};

std::vector<Sub> subs;
std::vector<int64_t> latencies;  // ns, one per first delivery
// Paced publishing (--rate): each event's intended send time is
// g_sched_t0 + gseq / rate. Latency from that time includes any time the
// server kept the publisher waiting (no coordinated omission).
std::vector<int64_t> latencies_sched;
int64_t g_sched_t0 = 0;
std::vector<std::string> recorded_ids;  // resume: ids by channel seq

struct Totals {
    uint64_t received = 0;  // events parsed (not warm-up), dups included
    uint64_t warm_events = 0;
    uint64_t gap_events = 0;
    uint64_t unparsed = 0;
    uint64_t bytes = 0;
    uint64_t reads = 0;
    int64_t first_delivery = 0, last_delivery = 0;
    int ready = 0, failed = 0, closed = 0, done = 0, warm = 0;
    int finished = 0;       // ready subscribers now done or closed
    int closed_unwarm = 0;  // closed before their warm-up event
    int connecting = 0;     // connecting or writing the request
    int requested = 0;      // request written: awaiting head or streaming
    int connect_retries = 0;
    std::map<int, int> bad_status;
    std::map<std::string, int> errors;
} T;

void sub_fail(Sub &s, const char *why) {
    if (s.fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s.fd, nullptr);
        abort_close(s.fd);
        s.fd = -1;
    }
    bool was_connecting = s.state == S_CONNECTING || s.state == S_HEAD;
    if (s.state == S_CONNECTING) T.connecting--;
    if (s.state == S_HEAD) T.requested--;
    if (s.state == S_STREAM) {
        s.state = S_CLOSED;
        T.closed++;
        if (!s.done) T.finished++;
        if (!s.warm) T.closed_unwarm++;
        T.errors[std::string("stream: ") + why]++;
        return;
    }
    if (was_connecting && s.attempts < 3 && s.status == 0) {
        // refused or reset while connecting: try again later
        T.connect_retries++;
        s.state = S_IDLE;
        s.head.clear();
        return;
    }
    s.state = S_FAILED;
    T.failed++;
    T.errors[std::string("connect: ") + why]++;
}

void parse_u64(const char *&p, const char *end, uint64_t &v, bool &ok) {
    v = 0;
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + uint64_t(*p++ - '0');
    if (p == s) ok = false;
    if (p < end && *p == ' ') p++;
}

std::vector<std::string> *g_capture = nullptr;  // --self-test: every event

void on_event(Sub &s) {
    if (g_capture)
        g_capture->push_back(s.event + "|" + s.last_id + "|" + s.data);
    if (s.event == "sse-gap") {
        T.gap_events++;
        return;
    }
    const char *p = s.data.data(), *end = p + s.data.size();
    if (end - p >= 2 && p[0] == 'w' && p[1] == ' ') {
        T.warm_events++;
        p += 2;
        uint64_t ch;
        bool ok = true;
        parse_u64(p, end, ch, ok);
        if (ok && int(ch) == s.ch && !s.warm) {
            s.warm = true;
            T.warm++;
        }
        return;
    }
    uint64_t cseq, ch, gseq, t;
    bool ok = true;
    parse_u64(p, end, cseq, ok);
    parse_u64(p, end, ch, ok);
    parse_u64(p, end, gseq, ok);
    parse_u64(p, end, t, ok);
    if (!ok) {
        T.unparsed++;
        return;
    }
    T.received++;
    if (!T.first_delivery) T.first_delivery = g_now;
    T.last_delivery = g_now;
    if (int(ch) != s.ch) {
        s.wrong_ch++;
        return;
    }
    if (cseq < s.lo || cseq >= s.hi) {
        s.unexpected++;
        return;
    }
    uint32_t bit = uint32_t(cseq - s.lo);
    uint64_t &w = s.seen[bit >> 6];
    uint64_t m = 1ull << (bit & 63);
    if (w & m) {
        s.dups++;
        return;
    }
    w |= m;
    if (int64_t(cseq) < s.max_cseq) s.ooo++;
    s.max_cseq = std::max<int64_t>(s.max_cseq, int64_t(cseq));
    if (s.record_ids && cseq < recorded_ids.size())
        recorded_ids[cseq] = s.last_id;
    if (opt.mode != "resume") latencies.push_back(g_now - int64_t(t));
    if (opt.mode != "resume" && opt.rate > 0)
        latencies_sched.push_back(g_now - g_sched_t0 -
                                  int64_t(double(gseq) * 1e9 / opt.rate));
    if (++s.got == s.hi - s.lo) {
        s.done = true;
        s.t_done = g_now;
        T.done++;
        T.finished++;
    }
}

void sse_line(Sub &s, const char *p, size_t n) {
    if (n == 0) {  // end of block: dispatch
        if (!s.id.empty() || s.has_data) {
            // The spec sets the last event id when an id field was seen.
        }
        if (s.has_data) on_event(s);
        s.data.clear();
        s.has_data = false;
        s.event.clear();
        s.id.clear();
        return;
    }
    if (p[0] == ':') return;  // comment
    const char *colon = static_cast<const char *>(memchr(p, ':', n));
    size_t nlen = colon ? size_t(colon - p) : n;
    const char *v = colon ? colon + 1 : p + n;
    const char *end = p + n;
    if (v < end && *v == ' ') v++;
    size_t vlen = size_t(end - v);
    if (nlen == 4 && memcmp(p, "data", 4) == 0) {
        if (s.has_data) s.data += '\n';
        s.data.append(v, vlen);
        s.has_data = true;
    } else if (nlen == 2 && memcmp(p, "id", 2) == 0) {
        if (!memchr(v, '\0', vlen)) {
            s.id.assign(v, vlen);
            s.last_id = s.id;
        }
    } else if (nlen == 5 && memcmp(p, "event", 5) == 0) {
        s.event.assign(v, vlen);
    }
}

void sse_feed(Sub &s, const char *p, size_t n) {
    size_t i = 0;
    if (s.skip_lf && n) {
        s.skip_lf = false;
        if (p[0] == '\n') i = 1;
    }
    while (i < n) {
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r') j++;
        if (j == n) {
            s.line.append(p + i, n - i);
            return;
        }
        if (!s.line.empty()) {
            s.line.append(p + i, j - i);
            sse_line(s, s.line.data(), s.line.size());
            s.line.clear();
        } else {
            sse_line(s, p + i, j - i);
        }
        if (p[j] == '\r') {
            if (j + 1 < n) {
                if (p[j + 1] == '\n') j++;
            } else {
                s.skip_lf = true;
            }
        }
        i = j + 1;
    }
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Feeds response body bytes; returns false on a framing error.
bool body_feed(Sub &s, const char *p, size_t n) {
    if (s.framing == F_CLOSE) {
        sse_feed(s, p, n);
        return true;
    }
    if (s.framing == F_LENGTH) {
        size_t k = std::min<size_t>(n, size_t(s.body_left));
        sse_feed(s, p, k);
        s.body_left -= int64_t(k);
        return true;
    }
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        switch (s.cstate) {
            case C_SIZE: {
                int h = hexval(c);
                if (h >= 0) {
                    s.chunk_left = s.chunk_left * 16 + uint64_t(h);
                    i++;
                } else if (c == ';' || c == ' ' || c == '\t') {
                    s.cstate = C_EXT;
                    i++;
                } else if (c == '\r') {
                    s.cstate = C_SIZE_LF;
                    i++;
                } else if (c == '\n') {
                    s.cstate = s.chunk_left ? C_DATA : C_TRAILER;
                    i++;
                } else {
                    return false;
                }
                break;
            }
            case C_EXT:
                if (c == '\r')
                    s.cstate = C_SIZE_LF;
                else if (c == '\n')
                    s.cstate = s.chunk_left ? C_DATA : C_TRAILER;
                i++;
                break;
            case C_SIZE_LF:
                if (c != '\n') return false;
                s.cstate = s.chunk_left ? C_DATA : C_TRAILER;
                i++;
                break;
            case C_DATA: {
                size_t k = std::min<size_t>(n - i, size_t(s.chunk_left));
                sse_feed(s, p + i, k);
                i += k;
                s.chunk_left -= k;
                if (s.chunk_left == 0) s.cstate = C_DATA_CR;
                break;
            }
            case C_DATA_CR:
                if (c == '\r')
                    s.cstate = C_DATA_LF;
                else if (c == '\n')
                    s.cstate = C_SIZE;
                else
                    return false;
                i++;
                break;
            case C_DATA_LF:
                if (c != '\n') return false;
                s.cstate = C_SIZE;
                i++;
                break;
            case C_TRAILER:  // an empty line ends the body; trailers ignored
                if (c == '\r') {
                    s.cstate = C_TRAILER_LF;
                } else if (c == '\n') {
                    s.cstate = C_DONE;
                } else {
                    while (i < n && p[i] != '\n') i++;  // skip a trailer line
                    if (i == n) return true;
                }
                i++;
                break;
            case C_TRAILER_LF:
                if (c != '\n') return false;
                s.cstate = C_DONE;
                i++;
                break;
            case C_DONE:
                i = n;
                break;
        }
    }
    return true;
}

bool body_complete(const Sub &s) {
    return (s.framing == F_LENGTH && s.body_left == 0) ||
           (s.framing == F_CHUNKED && s.cstate == C_DONE);
}

void sub_start(size_t idx, const std::string &last_event_id) {
    Sub &s = subs[idx];
    std::string path = fill_path(opt.sub_path, channel_name(s.ch));
    s.req = "GET " + path + " HTTP/1.1\r\nHost: " + opt.host +
            "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n";
    if (!last_event_id.empty())
        s.req += "Last-Event-ID: " + last_event_id + "\r\n";
    for (auto &h : opt.sub_headers) s.req += h + "\r\n";
    s.req += "\r\n";
    s.attempts++;
    s.req_off = 0;
    s.t_open = now_ns();
    int err = 0;
    uint32_t src = 0;
    if (opt.src_count > 0)
        src = (127u << 24) | uint32_t(opt.src_base + int(idx) % opt.src_count);
    s.fd = open_socket(g_addr_sub, err, src);
    if (s.fd < 0) {
        s.state = S_FAILED;
        T.failed++;
        T.errors[std::string("socket: ") + strerror(err)]++;
        return;
    }
    s.state = S_CONNECTING;
    T.connecting++;
    epoll_set(EPOLL_CTL_ADD, s.fd, EPOLLOUT | EPOLLIN, TAG_SUB | idx);
}

char g_buf[1 << 18];

void sub_io(size_t idx, uint32_t events) {
    Sub &s = subs[idx];
    if (s.state == S_CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            int e = 0;
            socklen_t l = sizeof e;
            getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &e, &l);
            sub_fail(s, e ? strerror(e) : "hangup");
            return;
        }
        if (events & EPOLLOUT) {
            if (!write_all_nb(s.fd, s.req, s.req_off)) {
                sub_fail(s, strerror(errno));
                return;
            }
            if (s.req_off == s.req.size()) {
                s.state = S_HEAD;
                T.connecting--;
                T.requested++;
                epoll_set(EPOLL_CTL_MOD, s.fd, EPOLLIN, TAG_SUB | idx);
            }
        }
        if (!(events & EPOLLIN)) return;
    }
    for (;;) {
        ssize_t n = recv(s.fd, g_buf, sizeof g_buf, 0);
        g_now = now_ns();
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            sub_fail(s, strerror(errno));
            return;
        }
        if (n == 0) {
            sub_fail(s, s.state == S_STREAM ? "closed by server"
                                            : "eof before head");
            return;
        }
        T.reads++;
        T.bytes += uint64_t(n);
        const char *p = g_buf;
        size_t len = size_t(n);
        if (s.state == S_HEAD) {
            size_t old = s.head.size();
            s.head.append(p, len);
            size_t e = s.head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
            if (e == std::string::npos) {
                if (s.head.size() > 65536) sub_fail(s, "head too long");
                continue;
            }
            HttpHead h;
            if (!parse_head(s.head.data(), e + 4, h)) {
                sub_fail(s, "bad response head");
                return;
            }
            s.status = h.status;
            if (h.status != 200) {
                T.requested--;
                T.bad_status[h.status]++;
                s.state = S_FAILED;
                T.failed++;
                epoll_ctl(epfd, EPOLL_CTL_DEL, s.fd, nullptr);
                abort_close(s.fd);
                s.fd = -1;
                return;
            }
            s.framing = h.chunked               ? F_CHUNKED
                        : h.content_length >= 0 ? F_LENGTH
                                                : F_CLOSE;
            s.body_left = h.content_length;
            s.state = S_STREAM;
            s.t_ready = g_now;
            T.ready++;
            std::string rest = s.head.substr(e + 4);
            s.head.clear();
            s.head.shrink_to_fit();
            if (!rest.empty() && !body_feed(s, rest.data(), rest.size())) {
                sub_fail(s, "bad chunk framing");
                return;
            }
        } else if (s.state == S_STREAM) {
            if (!body_feed(s, p, len)) {
                sub_fail(s, "bad chunk framing");
                return;
            }
        }
        if (s.state == S_STREAM && body_complete(s)) {
            sub_fail(s, "stream ended by server");
            return;
        }
        if (size_t(n) < sizeof g_buf) return;  // drained
    }
}

}  // namespace
