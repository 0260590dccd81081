// sseload: a Server-Sent Events load generator. One thread, one epoll loop,
// no third-party code.
//
// It opens N subscriber connections (HTTP/1.1 GET, `Accept:
// text/event-stream`), decodes their bodies (chunked, content-length or
// close-delimited), parses the event stream incrementally (lines split across
// reads and chunks, CR/LF/CRLF, several `data:` lines, `id:`), publishes
// events by HTTP POST over keep-alive connections, and checks that every
// subscriber receives every event of its channel exactly once and in order.
// Each published body starts with "CSEQ CH GSEQ SEND_NS " (SEND_NS from
// CLOCK_MONOTONIC, taken when the request is written) and is padded with 'x'
// to the requested size, so publish-to-receive latency is measured per
// delivery. The result is one JSON object on stdout; progress goes to stderr.
//
// Modes:
//   fanout   open subscribers, warm up, publish --events spread round-robin
//            over --channels (as fast as answered, or --rate per second),
//            wait for every delivery (or --timeout)
//   publish  no subscribers: --events publishes over --publishers connections
//   idle     open subscribers, warm up, print "READY" on stderr, hold them
//            until stdin has data or closes (or --timeout), then report
//   resume   one recorder subscriber sees --events published to one channel
//            and notes their ids; then --subscribers connect at once with
//            Last-Event-ID = the id --resume-back events before the end, and
//            the time until all have caught up is measured
//
// Build: g++ -std=c++17 -O2 -Wall -Wextra -o build/sseload bench/sseload.cpp

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

// ------------------------------------------------------------------ options

struct Options {
    std::string mode = "fanout";
    std::string host = "127.0.0.1";
    int sub_port = 0;
    int pub_port = 0;
    std::string sub_path = "/events/{ch}";
    std::string pub_path = "/publish/{ch}";
    std::string prefix = "bench";
    int subscribers = 10;
    int channels = 1;
    int events = 10;
    int size = 64;
    int publishers = 1;
    double rate = 0;          // events per second; 0: as fast as answered
    int batch = 200;          // subscriber connections in flight at once
    double timeout = 60;      // seconds, for each waiting phase
    bool warmup = true;
    int resume_back = 500;    // resume: events behind the end
    std::vector<std::string> sub_headers;
    bool verbose = false;
};

[[noreturn]] void usage(const char *msg) {
    if (msg) fprintf(stderr, "sseload: %s\n", msg);
    fprintf(stderr,
            "usage: sseload --mode fanout|publish|idle|resume --sub-port P "
            "--pub-port P\n"
            "  [--host 127.0.0.1] [--sub-path /events/{ch}] "
            "[--pub-path /publish/{ch}]\n"
            "  [--prefix bench] [--subscribers N] [--channels C] "
            "[--events M] [--size BYTES]\n"
            "  [--publishers P] [--rate EV_PER_S] [--batch N] "
            "[--timeout S] [--no-warmup]\n"
            "  [--resume-back K] [--sub-header 'Name: value'] [--verbose]\n");
    exit(2);
}

Options parse_args(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value for " + a).c_str());
            return argv[++i];
        };
        if (a == "--mode") o.mode = val();
        else if (a == "--host") o.host = val();
        else if (a == "--sub-port") o.sub_port = atoi(val().c_str());
        else if (a == "--pub-port") o.pub_port = atoi(val().c_str());
        else if (a == "--sub-path") o.sub_path = val();
        else if (a == "--pub-path") o.pub_path = val();
        else if (a == "--prefix") o.prefix = val();
        else if (a == "--subscribers") o.subscribers = atoi(val().c_str());
        else if (a == "--channels") o.channels = atoi(val().c_str());
        else if (a == "--events") o.events = atoi(val().c_str());
        else if (a == "--size") o.size = atoi(val().c_str());
        else if (a == "--publishers") o.publishers = atoi(val().c_str());
        else if (a == "--rate") o.rate = atof(val().c_str());
        else if (a == "--batch") o.batch = atoi(val().c_str());
        else if (a == "--timeout") o.timeout = atof(val().c_str());
        else if (a == "--no-warmup") o.warmup = false;
        else if (a == "--resume-back") o.resume_back = atoi(val().c_str());
        else if (a == "--sub-header") o.sub_headers.push_back(val());
        else if (a == "--verbose") o.verbose = true;
        else if (a == "-h" || a == "--help") usage(nullptr);
        else usage(("unknown argument " + a).c_str());
    }
    if (o.mode != "fanout" && o.mode != "publish" && o.mode != "idle" &&
        o.mode != "resume")
        usage("bad --mode");
    if (o.mode != "publish" && o.sub_port <= 0) usage("--sub-port needed");
    if (o.mode != "idle" && o.pub_port <= 0) usage("--pub-port needed");
    if (o.channels < 1 || o.publishers < 1 || o.events < 0 ||
        o.subscribers < 0 || o.batch < 1 || o.size < 0)
        usage("bad numbers");
    if (o.mode == "resume") {
        o.channels = 1;
        if (o.resume_back < 1 || o.resume_back >= o.events)
            usage("--resume-back must be in [1, events)");
    }
    return o;
}

Options opt;

// ------------------------------------------------------------------ clock

int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

int64_t g_now = 0;  // refreshed after every read

void logf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

std::string channel_name(int c) { return opt.prefix + std::to_string(c); }

std::string fill_path(const std::string &tmpl, const std::string &ch) {
    std::string out;
    size_t i = 0;
    while (i < tmpl.size()) {
        if (tmpl.compare(i, 4, "{ch}") == 0) {
            out += ch;
            i += 4;
        } else {
            out += tmpl[i++];
        }
    }
    return out;
}

sockaddr_in g_addr_sub{}, g_addr_pub{};

int epfd = -1;

enum : uint64_t { TAG_SUB = 1ull << 40, TAG_PUB = 2ull << 40, TAG_STDIN = 3ull << 40 };
const uint64_t TAG_MASK = 0xffull << 40;

int open_socket(const sockaddr_in &addr, int &err) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, reinterpret_cast<const sockaddr *>(&addr), sizeof addr) <
            0 &&
        errno != EINPROGRESS) {
        err = errno;
        close(fd);
        return -1;
    }
    err = 0;
    return fd;
}

void abort_close(int fd) {
    // RST instead of FIN: no TIME_WAIT pile-up across runs.
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

bool write_all_nb(int fd, const std::string &s, size_t &off) {
    while (off < s.size()) {
        ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += size_t(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        return false;
    }
    return true;
}

bool ieq_prefix(const char *p, size_t n, const char *name) {
    size_t k = strlen(name);
    if (n < k) return false;
    for (size_t i = 0; i < k; i++) {
        char a = p[i], b = name[i];
        if (a >= 'A' && a <= 'Z') a = char(a - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

struct HttpHead {
    int status = 0;
    bool chunked = false;
    int64_t content_length = -1;
    bool close = false;
};

// Parses a response head [p, p+n) ending with CRLFCRLF.
bool parse_head(const char *p, size_t n, HttpHead &h) {
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0) return false;
    h.status = atoi(p + 9);
    bool http10 = p[7] == '0';
    h.close = http10;
    const char *end = p + n;
    const char *line = static_cast<const char *>(memchr(p, '\n', n));
    while (line && line + 1 < end) {
        line++;
        const char *eol =
            static_cast<const char *>(memchr(line, '\n', size_t(end - line)));
        if (!eol) break;
        size_t len = size_t(eol - line);
        if (ieq_prefix(line, len, "transfer-encoding:")) {
            std::string v(line + 18, len - 18);
            for (auto &ch : v) ch = char(tolower(ch));
            if (v.find("chunked") != std::string::npos) h.chunked = true;
        } else if (ieq_prefix(line, len, "content-length:")) {
            h.content_length = strtoll(line + 15, nullptr, 10);
        } else if (ieq_prefix(line, len, "connection:")) {
            std::string v(line + 11, len - 11);
            for (auto &ch : v) ch = char(tolower(ch));
            if (v.find("close") != std::string::npos) h.close = true;
            if (v.find("keep-alive") != std::string::npos) h.close = false;
        }
        line = eol;
    }
    return true;
}

// ------------------------------------------------------------------ subscribers

enum SubState : uint8_t { S_IDLE, S_CONNECTING, S_HEAD, S_STREAM, S_CLOSED, S_FAILED };
enum Framing : uint8_t { F_CLOSE, F_LENGTH, F_CHUNKED };
enum ChunkState : uint8_t { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_TRAILER, C_TRAILER_LF, C_DONE };

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
    std::string head;    // response head while it arrives
    std::string line;    // a partial line carried across reads
    std::string data;    // data of the event being parsed
    std::string id;      // id field of the block being parsed
    std::string event;   // event field of the block being parsed
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
    uint64_t received = 0;     // events parsed (not warm-up), dups included
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
    if (g_capture) g_capture->push_back(s.event + "|" + s.last_id + "|" + s.data);
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
            if (c == '\r') s.cstate = C_SIZE_LF;
            else if (c == '\n') s.cstate = s.chunk_left ? C_DATA : C_TRAILER;
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
            if (c == '\r') s.cstate = C_DATA_LF;
            else if (c == '\n') s.cstate = C_SIZE;
            else return false;
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
    if (!last_event_id.empty()) s.req += "Last-Event-ID: " + last_event_id + "\r\n";
    for (auto &h : opt.sub_headers) s.req += h + "\r\n";
    s.req += "\r\n";
    s.attempts++;
    s.req_off = 0;
    s.t_open = now_ns();
    int err = 0;
    s.fd = open_socket(g_addr_sub, err);
    if (s.fd < 0) {
        s.state = S_FAILED;
        T.failed++;
        T.errors[std::string("socket: ") + strerror(err)]++;
        return;
    }
    s.state = S_CONNECTING;
    T.connecting++;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN;
    ev.data.u64 = TAG_SUB | idx;
    epoll_ctl(epfd, EPOLL_CTL_ADD, s.fd, &ev);
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
                epoll_event ev{};
                ev.events = EPOLLIN;
                ev.data.u64 = TAG_SUB | idx;
                epoll_ctl(epfd, EPOLL_CTL_MOD, s.fd, &ev);
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
            sub_fail(s, s.state == S_STREAM ? "closed by server" : "eof before head");
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
            s.framing = h.chunked ? F_CHUNKED
                        : h.content_length >= 0 ? F_LENGTH : F_CLOSE;
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

// ------------------------------------------------------------------ publishers

struct Pub {
    int fd = -1;
    int queue = 0;     // index into queues
    bool busy = false; // a request in flight
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
    uint64_t events_done = 0;   // answered event publishes (ok or not)
    int64_t warm_pending = 0;   // warm-up publishes not answered yet
    int64_t t_first = 0, t_last = 0, t_last_send = 0;
    std::map<int, int> status;
    std::vector<int64_t> rtt;
    std::vector<int64_t> send_lag;  // paced: actual - intended send time
    int64_t t0 = 0;  // pacing origin
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
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.u64 = TAG_PUB | k;
    epoll_ctl(epfd, EPOLL_CTL_ADD, p.fd, &ev);
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
    epoll_event ev{};
    ev.events = EPOLLIN | (p.out_off < p.out.size() ? uint32_t(EPOLLOUT) : 0u);
    ev.data.u64 = TAG_PUB | k;
    epoll_ctl(epfd, EPOLL_CTL_MOD, p.fd, &ev);
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
            epoll_event ev{};
            ev.events = EPOLLIN | (p.busy ? uint32_t(EPOLLOUT) : 0u);
            ev.data.u64 = TAG_PUB | k;
            epoll_ctl(epfd, EPOLL_CTL_MOD, p.fd, &ev);
            if (!p.busy) pub_try_send(k);
        }
    }
    if ((events & EPOLLOUT) && p.busy && p.out_off < p.out.size()) {
        if (!write_all_nb(p.fd, p.out, p.out_off)) {
            pub_reconnect(k);
            return;
        }
        if (p.out_off == p.out.size()) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u64 = TAG_PUB | k;
            epoll_ctl(epfd, EPOLL_CTL_MOD, p.fd, &ev);
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
                if (p.in.compare(e + 4, 5, "0\r\n\r\n") == 0) total = e + 9;
                else return;
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
                if (h.status >= 200 && h.status < 300) P.ok++;
                else P.errors++;
                P.rtt.push_back(g_now - p.t_sent);
                P.t_last = g_now;
            } else {
                P.warm_pending--;
                if (h.status < 200 || h.status >= 300)
                    T.errors["warm-up publish status " + std::to_string(h.status)]++;
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
    for (size_t q = 0; q < queues.size(); q++) left += queues[q].size() - qpos[q];
    return left;
}

bool publishers_idle() {
    for (auto &p : pubs)
        if (p.busy) return false;
    return queue_items_left() == 0;
}

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
        if (due != INT64_MAX) wait_ns = std::min(wait_ns, std::max<int64_t>(0, due - now));
        int timeout_ms = int((wait_ns + 999999) / 1000000);
        int n = epoll_wait(epfd, evs, 512, timeout_ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64 & TAG_MASK;
            size_t idx = size_t(evs[i].data.u64 & ~TAG_MASK);
            if (tag == TAG_SUB) sub_io(idx, evs[i].events);
            else if (tag == TAG_PUB) pub_io(idx, evs[i].events);
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
                return P.warm_pending == 0 && T.warm + T.closed_unwarm >= T.requested;
            },
            wait);
    }
    return rounds;
}

// ------------------------------------------------------------------ output

std::string J;  // the JSON being built

void jraw(const char *k, const std::string &v) {
    if (J.size() > 1 && J.back() != '{') J += ',';
    J += '"';
    J += k;
    J += "\":";
    J += v;
}
void jnum(const char *k, double v) {
    char b[64];
    if (v == double(int64_t(v)) && std::abs(v) < 1e15)
        snprintf(b, sizeof b, "%" PRId64, int64_t(v));
    else
        snprintf(b, sizeof b, "%.6g", v);
    jraw(k, b);
}
std::string jstr(const std::string &s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
            char b[8];
            snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
        } else o += c;
    }
    return o + "\"";
}
void jbool(const char *k, bool v) { jraw(k, v ? "true" : "false"); }
void jopen(const char *k) {
    if (J.size() > 1 && J.back() != '{') J += ',';
    J += '"';
    J += k;
    J += "\":{";
}
void jclose() { J += '}'; }

double pct(std::vector<int64_t> &v, double q) {
    if (v.empty()) return 0;
    size_t i = size_t(q * double(v.size() - 1) + 0.5);
    return double(v[std::min(i, v.size() - 1)]);
}

void jlatency(const char *k, std::vector<int64_t> &v) {
    std::sort(v.begin(), v.end());
    jopen(k);
    jnum("count", double(v.size()));
    if (!v.empty()) {
        double sum = 0;
        for (auto x : v) sum += double(x);
        jnum("min", double(v.front()) / 1e6);
        jnum("p50", pct(v, 0.50) / 1e6);
        jnum("p90", pct(v, 0.90) / 1e6);
        jnum("p99", pct(v, 0.99) / 1e6);
        jnum("p999", pct(v, 0.999) / 1e6);
        jnum("max", double(v.back()) / 1e6);
        jnum("mean", sum / double(v.size()) / 1e6);
    }
    jclose();
}

void jmap(const char *k, const std::map<int, int> &m) {
    jopen(k);
    for (auto &[a, b] : m) jnum(std::to_string(a).c_str(), b);
    jclose();
}

}  // namespace

// Feeds a tricky stream through the HTTP body decoders and the event parser
// in every split, and checks what comes out.
int self_test() {
    // Events as the parser must deliver them: "event|last id|data".
    std::vector<std::string> want = {
        "|1-1|0 0 0 0 xx",
        "greet|1-2|1 0 1 0 two\nlines",
        "|1-2|2 0 2 0 ",  // CR-only line endings; the id is still 1-2
        "|1-4|3 0 3 0 crlf",
        "sse-gap|1-5|{\"requested\":\"x\"}",
        "|1-6|4 0 4 0 last",
        "|1-7|5 0 5 0 crlf\nlines",
    };
    // A comment, a retry-only block, an id without data (sets the last id,
    // no event), "\r\r\r" (ends a line, dispatches, one more blank line),
    // CRLF, a final block that never ends.
    std::string sse =
        ": hi\n\n"
        "id: 1-1\ndata: 0 0 0 0 xx\n\n"
        "retry: 3000\n\n"
        "id:1-2\nevent: greet\ndata: 1 0 1 0 two\ndata:lines\n\n"
        "data: 2 0 2 0 \r\r\r"
        "id: 1-3\r\n: a comment\r\n\r\n"
        "id: 1-4\r\ndata: 3 0 3 0 crlf\r\n\r\n"
        "id: 1-5\nevent: sse-gap\ndata: {\"requested\":\"x\"}\n\n"
        "id: 1-6\ndata: 4 0 4 0 last\n\n"
        "id: 1-7\r\ndata: 5 0 5 0 crlf\r\ndata: lines\r\n\r\n"
        "data: never dispatched (no blank line)\n";
    // Chunked framing: uneven chunks, an extension, upper-case hex.
    std::string chunked;
    size_t sizes[] = {3, 17, 1, 40, 2, 64, 5};
    size_t i = 0, k = 0;
    while (i < sse.size()) {
        size_t n = std::min(sizes[k++ % 7], sse.size() - i);
        char h[32];
        snprintf(h, sizeof h, k % 3 ? "%zx\r\n" : "%zX;ext=1\r\n", n);
        chunked += h + sse.substr(i, n) + "\r\n";
        i += n;
    }
    chunked += "0\r\n\r\n";
    int failures = 0;
    for (int framing = 0; framing < 2; framing++) {
        const std::string &body = framing ? chunked : sse;
        for (size_t split = 1; split <= body.size(); split++) {
            Sub s;
            s.framing = framing ? F_CHUNKED : F_CLOSE;
            s.lo = 0;
            s.hi = 6;
            s.seen.assign(2, 0);
            std::vector<std::string> got;
            g_capture = &got;
            bool ok = true;
            for (size_t off = 0; off < body.size() && ok; off += split)
                ok = body_feed(s, body.data() + off, std::min(split, body.size() - off));
            g_capture = nullptr;
            bool good = ok && got == want && s.got == 6 && s.dups == 0 &&
                        (!framing || s.cstate == C_DONE);
            if (!good) {
                if (failures++ < 5) {
                    fprintf(stderr, "self-test: %s split %zu: ok=%d events=%zu got=%u\n",
                            framing ? "chunked" : "plain", split, ok, got.size(), s.got);
                    for (auto &g : got) fprintf(stderr, "  [%s]\n", g.c_str());
                }
            }
        }
    }
    printf("{\"self_test\":%s,\"failures\":%d}\n", failures ? "false" : "true", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--self-test") == 0) return self_test();
    opt = parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);

    rlimit rl;
    size_t need = size_t(opt.subscribers) + size_t(opt.publishers) + 32;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {  // root may raise the hard limit too
        rlimit more{need, need};
        setrlimit(RLIMIT_NOFILE, &more);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        logf("sseload: RLIMIT_NOFILE %llu < %zu needed\n",
             (unsigned long long)rl.rlim_cur, need);
        return 1;
    }

    for (auto *a : {&g_addr_sub, &g_addr_pub}) {
        a->sin_family = AF_INET;
        if (inet_pton(AF_INET, opt.host.c_str(), &a->sin_addr) != 1)
            usage("--host must be an IPv4 address");
    }
    g_addr_sub.sin_port = htons(uint16_t(opt.sub_port));
    g_addr_pub.sin_port = htons(uint16_t(opt.pub_port));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    g_padding.assign(size_t(std::max(opt.size, 1)), 'x');

    // Events: round-robin over channels; per-channel sequence numbers.
    int C = opt.channels;
    per_channel.assign(size_t(C), 0);
    ev_channel.resize(size_t(opt.events));
    ev_cseq.resize(size_t(opt.events));
    for (int i = 0; i < opt.events; i++) {
        int c = i % C;
        ev_channel[size_t(i)] = c;
        ev_cseq[size_t(i)] = per_channel[size_t(c)]++;
    }
    for (int c = 0; c < C; c++)
        pub_paths.push_back(fill_path(opt.pub_path, channel_name(c)));

    // Publisher queues: a channel always goes through the same connection, so
    // its events are published (and must arrive) in order. With fewer
    // channels than connections, all connections share one queue.
    bool ordered = true;
    int npub = opt.mode == "idle" ? 1 : opt.publishers;
    if (opt.mode == "resume") npub = 1;
    size_t nq = size_t(C >= npub ? npub : 1);
    if (nq == 1 && npub > 1) ordered = false;
    queues.assign(nq, {});
    qpos.assign(nq, 0);
    for (int i = 0; i < opt.events; i++)
        queues[nq == 1 ? 0 : size_t(ev_channel[size_t(i)] % int(nq))].push_back(i);
    pubs.resize(size_t(npub));
    for (size_t k = 0; k < pubs.size(); k++) pubs[k].queue = int(k % nq);
    if (opt.mode != "idle" || opt.warmup)
        for (size_t k = 0; k < pubs.size(); k++) pub_connect(k);

    int n_subs = opt.mode == "publish" ? 0 : opt.subscribers;
    int64_t t_begin = now_ns();
    double connect_s = 0;
    int warm_rounds = 0;
    bool all_done = false;
    double catch_up_s = -1;
    std::vector<int64_t> catch_up;
    std::string resume_id;
    bool recorded_all = true;
    int64_t t_pub_end = 0;
    int heads_early = -1;  // response heads that came before any event

    auto expect = [](Sub &s, uint32_t lo, uint32_t hi) {
        s.lo = lo;
        s.hi = hi;
        s.seen.assign((hi - lo + 63) / 64 + 1, 0);
    };

    if (opt.mode == "fanout" || opt.mode == "idle" || opt.mode == "publish") {
        subs.resize(size_t(n_subs));
        latencies.reserve(size_t(n_subs) * size_t(opt.events) / size_t(C) + 16);
        for (int i = 0; i < n_subs; i++) {
            subs[size_t(i)].ch = i % C;
            expect(subs[size_t(i)], 0, per_channel[size_t(i % C)]);
        }
        int64_t t = now_ns();
        open_subs(0, subs.size(), "");
        connect_s = double(now_ns() - t) / 1e9;
        heads_early = T.ready;
        if (opt.warmup && n_subs > 0) warm_rounds = warm_up();
        if (opt.mode == "idle") {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u64 = TAG_STDIN;
            epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
            logf("READY %d\n", live_subs());
            loop_until([] { return stdin_ready; }, opt.timeout);
        } else {
            publishing = true;
            P.t0 = g_sched_t0 = now_ns();
            kick_publishers();
            loop_until(
                [&] { return publishers_idle() && T.finished >= T.requested; },
                opt.timeout);
            t_pub_end = P.t_last;
            all_done = publishers_idle() && T.done == n_subs;
        }
    } else {  // resume
        subs.resize(size_t(n_subs) + 1);
        recorded_ids.assign(size_t(opt.events), "");
        Sub &rec = subs[0];
        rec.ch = 0;
        rec.record_ids = true;
        expect(rec, 0, uint32_t(opt.events));
        open_subs(0, 1, "");
        if (opt.warmup) warm_rounds = warm_up();
        publishing = true;
        P.t0 = g_sched_t0 = now_ns();
        kick_publishers();
        loop_until([&] { return publishers_idle() && (subs[0].done || subs[0].state != S_STREAM); },
                   opt.timeout);
        t_pub_end = P.t_last;
        for (auto &id : recorded_ids)
            if (id.empty()) recorded_all = false;
        int from = opt.events - opt.resume_back;  // first channel seq expected
        resume_id = recorded_ids[size_t(from - 1)];
        if (resume_id.empty()) {
            logf("sseload: no id recorded for event %d\n", from - 1);
        }
        for (size_t i = 1; i < subs.size(); i++) {
            subs[i].ch = 0;
            expect(subs[i], uint32_t(from), uint32_t(opt.events));
        }
        int64_t t = now_ns();
        opt.batch = std::max(opt.batch, n_subs);  // all at once
        open_subs(1, subs.size(), resume_id);
        connect_s = double(now_ns() - t) / 1e9;
        loop_until([&] { return T.finished >= T.requested; }, opt.timeout);
        int64_t last = 0;
        for (size_t i = 1; i < subs.size(); i++) {
            if (subs[i].done) {
                catch_up.push_back(subs[i].t_done - t);
                last = std::max(last, subs[i].t_done);
            }
        }
        all_done = int(catch_up.size()) == n_subs;
        catch_up_s = last ? double(last - t) / 1e9 : -1;
    }
    int64_t t_end = now_ns();

    // Exactly-once accounting over the subscribers that were measured.
    size_t first_measured = opt.mode == "resume" ? 1 : 0;
    uint64_t expected = 0, unique = 0, dups = 0, ooo = 0, unexpected = 0, wrong = 0;
    int subs_missing = 0, not_ready = 0;
    for (size_t i = first_measured; i < subs.size(); i++) {
        Sub &s = subs[i];
        if (s.t_ready == 0) not_ready++;
        expected += s.hi - s.lo;
        unique += s.got;
        dups += s.dups;
        ooo += s.ooo;
        unexpected += s.unexpected;
        wrong += s.wrong_ch;
        if (s.got != s.hi - s.lo) subs_missing++;
    }
    bool measured_events = opt.mode == "fanout" || opt.mode == "resume";
    bool exactly_once = measured_events && not_ready == 0 && unique == expected &&
                        dups == 0 && unexpected == 0 && wrong == 0 &&
                        T.closed == 0 && P.errors == 0 && P.ok == uint64_t(opt.events);

    J = "{";
    jraw("mode", jstr(opt.mode));
    jnum("subscribers", n_subs);
    jnum("channels", C);
    jnum("events", opt.events);
    jnum("size", opt.size);
    jnum("publishers", npub);
    jnum("rate", opt.rate);
    jnum("wall_s", double(t_end - t_begin) / 1e9);
    jopen("connect");
    jnum("seconds", connect_s);
    jnum("ready", T.ready - (opt.mode == "resume" ? 1 : 0));
    if (heads_early >= 0) jnum("heads_before_first_event", heads_early);
    jnum("failed", T.failed);
    jnum("not_ready", not_ready);
    jnum("closed_by_server", T.closed);
    jnum("warmup_rounds", warm_rounds);
    jnum("warm", T.warm);
    jmap("bad_status", T.bad_status);
    jopen("errors");
    for (auto &[k, v] : T.errors) {
        std::string key = jstr(k);
        jnum(key.substr(1, key.size() - 2).c_str(), v);
    }
    jclose();
    jclose();
    {
        double dur = P.t_last && P.t_first ? double(P.t_last - P.t_first) / 1e9 : 0;
        jopen("publish");
        jnum("sent", double(P.sent));
        jnum("ok", double(P.ok));
        jnum("errors", double(P.errors));
        jnum("reconnects", double(P.reconnects));
        jnum("seconds", dur);
        jnum("per_second", dur > 0 ? double(P.ok) / dur : 0);
        jmap("status", P.status);
        jlatency("response_ms", P.rtt);
        if (opt.rate > 0) {
            jlatency("send_lag_ms", P.send_lag);
            // events sent per second, first to last send (target: --rate)
            double span = P.t_last_send > P.t_first ? double(P.t_last_send - P.t_first) / 1e9 : 0;
            jnum("achieved_rate", span > 0 ? double(P.sent - 1) / span : 0);
        }
        jclose();
    }
    if (measured_events) {
        jopen("deliveries");
        jnum("expected", double(expected));
        jnum("unique", double(unique));
        jnum("received", double(T.received));
        jnum("duplicates", double(dups));
        jnum("out_of_order", double(ooo));
        jnum("unexpected", double(unexpected));
        jnum("wrong_channel", double(wrong));
        jnum("unparsed", double(T.unparsed));
        jnum("gap_events", double(T.gap_events));
        jnum("subscribers_missing_events", subs_missing);
        jbool("ordered_publish", ordered);
        jbool("exactly_once", exactly_once);
        jbool("in_order", ooo == 0);
        jbool("complete", all_done);
        if (opt.mode == "fanout") {
            double span = T.last_delivery && P.t_first
                              ? double(T.last_delivery - P.t_first) / 1e9 : 0;
            jnum("seconds", span);
            jnum("per_second", span > 0 ? double(unique) / span : 0);
        }
        jclose();
    }
    if (opt.mode == "fanout") jlatency("latency_ms", latencies);
    if (opt.mode == "fanout" && opt.rate > 0)
        jlatency("latency_from_schedule_ms", latencies_sched);
    if (opt.mode == "resume") {
        jopen("resume");
        jraw("last_event_id", jstr(resume_id));
        jnum("behind", opt.resume_back);
        jbool("ids_recorded", recorded_all);
        jnum("catch_up_s", catch_up_s);
        jlatency("catch_up_ms", catch_up);
        jnum("publish_s", t_pub_end && P.t_first ? double(t_pub_end - P.t_first) / 1e9 : 0);
        jclose();
    }
    {
        rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        auto sec = [](const timeval &tv) { return double(tv.tv_sec) + double(tv.tv_usec) / 1e6; };
        jopen("generator_cpu_s");  // this process: is the load generator the bottleneck?
        jnum("user", sec(ru.ru_utime));
        jnum("sys", sec(ru.ru_stime));
        jclose();
    }
    jnum("bytes_read", double(T.bytes));
    jnum("reads", double(T.reads));
    J += "}\n";
    fputs(J.c_str(), stdout);
    fflush(stdout);

    for (auto &s : subs)
        if (s.fd >= 0) abort_close(s.fd);
    for (auto &p : pubs)
        if (p.fd >= 0) close(p.fd);
    return 0;
}
