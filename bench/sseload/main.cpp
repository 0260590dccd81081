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
// Build: make -C bench (g++ -std=c++17 -O2 -Wall -Wextra -o build/sseload
// bench/sseload/main.cpp). The parts, in the order they build on each
// other: options.hpp, conn.hpp, reader.hpp, publisher.hpp, loop.hpp,
// report.hpp; main.cpp runs a mode and writes the report.

#include "options.hpp"
#include "conn.hpp"
#include "reader.hpp"
#include "publisher.hpp"
#include "loop.hpp"
#include "report.hpp"

// Feeds a tricky stream through the HTTP body decoders and the event parser
// in every split, and checks what comes out.
int self_test() {
    // Events as the parser must deliver them: "event|last id|data".
    std::vector<std::string> want = {
        "|1-1|0 0 0 0 xx",   "greet|1-2|1 0 1 0 two\nlines",
        "|1-2|2 0 2 0 ",  // CR-only line endings; the id is still 1-2
        "|1-4|3 0 3 0 crlf", "sse-gap|1-5|{\"requested\":\"x\"}",
        "|1-6|4 0 4 0 last", "|1-7|5 0 5 0 crlf\nlines",
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
                ok = body_feed(s, body.data() + off,
                               std::min(split, body.size() - off));
            g_capture = nullptr;
            bool good = ok && got == want && s.got == 6 && s.dups == 0 &&
                        (!framing || s.cstate == C_DONE);
            if (!good) {
                if (failures++ < 5) {
                    fprintf(
                        stderr,
                        "self-test: %s split %zu: ok=%d events=%zu got=%u\n",
                        framing ? "chunked" : "plain", split, ok, got.size(),
                        s.got);
                    for (auto &g : got) fprintf(stderr, "  [%s]\n", g.c_str());
                }
            }
        }
    }
    // The help names every option the parser takes.
    for (auto &k : kOptions)
        if (!strstr(kUsage, k.first)) {
            fprintf(stderr, "self-test: %s is not in the usage text\n",
                    k.first);
            failures++;
        }
    printf("{\"self_test\":%s,\"failures\":%d}\n", failures ? "false" : "true",
           failures);
    return failures ? 1 : 0;
}

namespace {

// What a run measured, for the report.
struct Run {
    int n_subs = 0;
    int npub = 0;
    bool ordered = true;  // each channel published over one connection
    int64_t t_begin = 0, t_end = 0, t_pub_end = 0;
    double connect_s = 0;
    int warm_rounds = 0;
    bool all_done = false;
    int heads_early = -1;  // response heads that came before any event
    // resume mode
    double catch_up_s = -1;
    std::vector<int64_t> catch_up;
    std::string resume_id;
    bool recorded_all = true;
};

// Raises RLIMIT_NOFILE to what the connections need; false if it cannot.
bool raise_nofile() {
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
        return false;
    }
    return true;
}

// Events round-robin over channels with per-channel sequence numbers, and
// the publisher queues: a channel always goes through the same connection,
// so its events are published (and must arrive) in order. With fewer
// channels than connections, all connections share one queue.
void plan_events(Run &run) {
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

    run.npub = opt.mode == "idle" ? 1 : opt.publishers;
    if (opt.mode == "resume") run.npub = 1;
    size_t nq = size_t(C >= run.npub ? run.npub : 1);
    if (nq == 1 && run.npub > 1) run.ordered = false;
    queues.assign(nq, {});
    qpos.assign(nq, 0);
    for (int i = 0; i < opt.events; i++)
        queues[nq == 1 ? 0 : size_t(ev_channel[size_t(i)] % int(nq))].push_back(
            i);
    pubs.resize(size_t(run.npub));
    for (size_t k = 0; k < pubs.size(); k++) pubs[k].queue = int(k % nq);
    if (!opt.publish) run.npub = 0;
    pubs.resize(size_t(run.npub));
    if ((opt.mode != "idle" || opt.warmup) && opt.publish)
        for (size_t k = 0; k < pubs.size(); k++) pub_connect(k);
}

void expect(Sub &s, uint32_t lo, uint32_t hi) {
    s.lo = lo;
    s.hi = hi;
    s.seen.assign((hi - lo + 63) / 64 + 1, 0);
}

// fanout, idle, publish: subscribers spread over the channels, then either
// held (idle) or sent every event.
void run_fanout(Run &run) {
    int C = opt.channels;
    subs.resize(size_t(run.n_subs));
    latencies.reserve(size_t(run.n_subs) * size_t(opt.events) / size_t(C) + 16);
    for (int i = 0; i < run.n_subs; i++) {
        subs[size_t(i)].ch = i % C;
        expect(subs[size_t(i)], 0, per_channel[size_t(i % C)]);
    }
    int64_t t = now_ns();
    open_subs(0, subs.size(), "");
    run.connect_s = double(now_ns() - t) / 1e9;
    run.heads_early = T.ready;
    if (opt.warmup && run.n_subs > 0) run.warm_rounds = warm_up();
    if (opt.mode == "idle" || opt.wait_stdin || !opt.publish) {
        epoll_set(EPOLL_CTL_ADD, 0, EPOLLIN, TAG_STDIN);
        logf("READY %d\n", live_subs());
    }
    if (opt.mode == "idle") {
        loop_until([] { return stdin_ready; }, opt.timeout);
        return;
    }
    if (!opt.publish) {  // another generator publishes
        loop_until([&] { return T.finished >= T.requested; }, opt.timeout);
        run.all_done = T.done == run.n_subs;
        return;
    }
    if (opt.wait_stdin) loop_until([] { return stdin_ready; }, opt.timeout);
    publishing = true;
    P.t0 = g_sched_t0 = now_ns();
    kick_publishers();
    loop_until([&] { return publishers_idle() && T.finished >= T.requested; },
               opt.timeout);
    run.t_pub_end = P.t_last;
    run.all_done = publishers_idle() && T.done == run.n_subs;
}

// resume: a recorder notes every event's id; then all subscribers connect
// at once with the id --resume-back events before the end.
void run_resume(Run &run) {
    subs.resize(size_t(run.n_subs) + 1);
    recorded_ids.assign(size_t(opt.events), "");
    Sub &rec = subs[0];
    rec.ch = 0;
    rec.record_ids = true;
    expect(rec, 0, uint32_t(opt.events));
    open_subs(0, 1, "");
    if (opt.warmup) run.warm_rounds = warm_up();
    publishing = true;
    P.t0 = g_sched_t0 = now_ns();
    kick_publishers();
    loop_until(
        [&] {
            return publishers_idle() &&
                   (subs[0].done || subs[0].state != S_STREAM);
        },
        opt.timeout);
    run.t_pub_end = P.t_last;
    for (auto &id : recorded_ids)
        if (id.empty()) run.recorded_all = false;
    int from = opt.events - opt.resume_back;  // first channel seq expected
    run.resume_id = recorded_ids[size_t(from - 1)];
    if (run.resume_id.empty())
        logf("sseload: no id recorded for event %d\n", from - 1);
    for (size_t i = 1; i < subs.size(); i++) {
        subs[i].ch = 0;
        expect(subs[i], uint32_t(from), uint32_t(opt.events));
    }
    int64_t t = now_ns();
    opt.batch = std::max(opt.batch, run.n_subs);  // all at once
    open_subs(1, subs.size(), run.resume_id);
    run.connect_s = double(now_ns() - t) / 1e9;
    loop_until([&] { return T.finished >= T.requested; }, opt.timeout);
    int64_t last = 0;
    for (size_t i = 1; i < subs.size(); i++) {
        if (subs[i].done) {
            run.catch_up.push_back(subs[i].t_done - t);
            last = std::max(last, subs[i].t_done);
        }
    }
    run.all_done = int(run.catch_up.size()) == run.n_subs;
    run.catch_up_s = last ? double(last - t) / 1e9 : -1;
}

// One JSON object on stdout: what was sent, what arrived, and how fast.
void report(Run &run) {
    // Exactly-once accounting over the subscribers that were measured.
    size_t first_measured = opt.mode == "resume" ? 1 : 0;
    uint64_t expected = 0, unique = 0, dups = 0, ooo = 0, unexpected = 0,
             wrong = 0;
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
    bool exactly_once = measured_events && not_ready == 0 &&
                        unique == expected && dups == 0 && unexpected == 0 &&
                        wrong == 0 && T.closed == 0 && P.errors == 0 &&
                        (!opt.publish || P.ok == uint64_t(opt.events));

    J = "{";
    jraw("mode", jstr(opt.mode));
    jnum("subscribers", run.n_subs);
    jnum("channels", opt.channels);
    jnum("events", opt.events);
    jnum("size", opt.size);
    jnum("publishers", run.npub);
    jnum("rate", opt.rate);
    jnum("wall_s", double(run.t_end - run.t_begin) / 1e9);
    jopen("connect");
    jnum("seconds", run.connect_s);
    jnum("ready", T.ready - (opt.mode == "resume" ? 1 : 0));
    if (run.heads_early >= 0) jnum("heads_before_first_event", run.heads_early);
    jnum("failed", T.failed);
    jnum("not_ready", not_ready);
    jnum("closed_by_server", T.closed);
    jnum("warmup_rounds", run.warm_rounds);
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
        double dur =
            P.t_last && P.t_first ? double(P.t_last - P.t_first) / 1e9 : 0;
        jopen("publish");
        jnum("sent", double(P.sent));
        jnum("ok", double(P.ok));
        jnum("errors", double(P.errors));
        jnum("reconnects", double(P.reconnects));
        jnum("seconds", dur);
        jnum("per_second", dur > 0 ? double(P.ok) / dur : 0);
        jmap("status", P.status);
        if (opt.rate > 0) jseries("response_by_second", P.rtt, P.rtt_at);
        jlatency("response_ms", P.rtt);
        if (opt.rate > 0) {
            jlatency("send_lag_ms", P.send_lag);
            // events sent per second, first to last send (target: --rate)
            double span = P.t_last_send > P.t_first
                              ? double(P.t_last_send - P.t_first) / 1e9
                              : 0;
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
        jbool("ordered_publish", run.ordered);
        jbool("exactly_once", exactly_once);
        jbool("in_order", ooo == 0);
        jbool("complete", run.all_done);
        if (opt.mode == "fanout") {
            double span = T.last_delivery && P.t_first
                              ? double(T.last_delivery - P.t_first) / 1e9
                              : 0;
            jnum("seconds", span);
            jnum("per_second", span > 0 ? double(unique) / span : 0);
            // CLOCK_MONOTONIC: comparable across generators on one machine
            jraw("first_publish_ns", std::to_string(P.t_first));
            jraw("last_delivery_ns", std::to_string(T.last_delivery));
        }
        jclose();
    }
    if (opt.mode == "fanout") jlatency("latency_ms", latencies);
    if (opt.mode == "fanout" && opt.rate > 0)
        jlatency("latency_from_schedule_ms", latencies_sched);
    if (opt.mode == "resume") {
        jopen("resume");
        jraw("last_event_id", jstr(run.resume_id));
        jnum("behind", opt.resume_back);
        jbool("ids_recorded", run.recorded_all);
        jnum("catch_up_s", run.catch_up_s);
        jlatency("catch_up_ms", run.catch_up);
        jnum("publish_s", run.t_pub_end && P.t_first
                              ? double(run.t_pub_end - P.t_first) / 1e9
                              : 0);
        jclose();
    }
    {
        rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        auto sec = [](const timeval &tv) {
            return double(tv.tv_sec) + double(tv.tv_usec) / 1e6;
        };
        jopen("generator_cpu_s");  // this process: is the load generator the
                                   // bottleneck?
        jnum("user", sec(ru.ru_utime));
        jnum("sys", sec(ru.ru_stime));
        jclose();
    }
    jnum("bytes_read", double(T.bytes));
    jnum("reads", double(T.reads));
    J += "}\n";
    fputs(J.c_str(), stdout);
    fflush(stdout);
}

}  // namespace

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--self-test") == 0) return self_test();
    opt = parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (!raise_nofile()) return 1;

    for (auto *a : {&g_addr_sub, &g_addr_pub}) {
        a->sin_family = AF_INET;
        if (inet_pton(AF_INET, opt.host.c_str(), &a->sin_addr) != 1)
            usage("--host must be an IPv4 address");
    }
    g_addr_sub.sin_port = htons(uint16_t(opt.sub_port));
    g_addr_pub.sin_port = htons(uint16_t(opt.pub_port));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    g_padding.assign(size_t(std::max(opt.size, 1)), 'x');

    Run run;
    plan_events(run);
    run.n_subs = opt.mode == "publish" ? 0 : opt.subscribers;
    run.t_begin = now_ns();
    if (opt.mode == "resume")
        run_resume(run);
    else
        run_fanout(run);
    run.t_end = now_ns();
    report(run);

    for (auto &s : subs)
        if (s.fd >= 0) abort_close(s.fd);
    for (auto &p : pubs)
        if (p.fd >= 0) close(p.fd);
    return 0;
}
