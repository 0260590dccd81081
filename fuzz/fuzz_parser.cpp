// The publisher's stream parser (src/parser.hpp): the whole body at once,
// the same body cut at random points, and one byte at a time must give the
// same events, the same outcome and the same end state; all must agree with
// the reference below, a plain reading of the WHATWG event-stream rules
// written line by line over the whole input, sharing no code with the
// parser.
//
// Input: the body, then (taken from the end by FuzzedDataProvider) the
// size limit and the seed of the cuts.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "parser.hpp"

namespace {

struct outcome {
    std::vector<std::pair<std::string, std::string>> events;
    sse::parse_status status = sse::parse_status::ok;
    bool mid_event = false;  // compared only when status is ok

    bool operator==(const outcome &o) const {
        return events == o.events && status == o.status &&
               (status != sse::parse_status::ok || mid_event == o.mid_event);
    }
};

outcome feed_chunks(const std::string &body, size_t max_data,
                    const std::vector<size_t> &cuts) {
    outcome out;
    sse::stream_parser p(max_data);
    auto on_event = [&](std::string_view ev, std::string_view data) {
        out.events.emplace_back(ev, data);
    };
    size_t from = 0;
    for (size_t i = 0; i <= cuts.size(); i++) {
        size_t to = i < cuts.size() ? cuts[i] : body.size();
        auto st =
            p.feed(std::string_view(body).substr(from, to - from), on_event);
        from = to;
        if (st != sse::parse_status::ok) {
            out.status = st;
            // A failed parser stays failed and emits nothing more.
            FUZZ_CHECK(p.feed("\n\ndata: x\n\n", on_event) == st);
            break;
        }
    }
    FUZZ_CHECK(p.events() == out.events.size());
    out.mid_event = p.mid_event();
    return out;
}

// The reference: split the whole body into lines first, then interpret.
outcome reference(std::string body, size_t max_data) {
    outcome out;
    const std::string bom = "\xEF\xBB\xBF";
    if (body.compare(0, 3, bom) == 0) {
        body.erase(0, 3);
    }
    std::vector<std::string> lines;
    std::string cur;
    for (size_t i = 0; i < body.size(); i++) {
        char c = body[i];
        if (c == '\r' || c == '\n') {
            lines.push_back(cur);
            cur.clear();
            if (c == '\r' && i + 1 < body.size() && body[i + 1] == '\n') {
                i++;
            }
        } else {
            cur += c;
        }
    }
    bool terminated = cur.empty();
    const size_t max_line = max_data + 256;
    std::string name, data;
    bool have_data = false, in_event = false;
    for (const auto &l : lines) {
        if (l.size() > max_line) {
            out.status = sse::parse_status::too_large;
            return out;
        }
        if (l.empty()) {
            if (have_data) {
                out.events.emplace_back(name, data.substr(0, data.size() - 1));
            }
            name.clear();
            data.clear();
            have_data = in_event = false;
            continue;
        }
        if (l[0] == ':') {
            continue;
        }
        in_event = true;
        std::string field = l, value;
        auto colon = l.find(':');
        if (colon != std::string::npos) {
            field = l.substr(0, colon);
            value = l.substr(colon + 1);
            if (!value.empty() && value[0] == ' ') {
                value.erase(0, 1);
            }
        }
        if (field == "data") {
            if (data.size() + value.size() > max_data) {
                out.status = sse::parse_status::too_large;
                return out;
            }
            data += value + "\n";
            have_data = true;
        } else if (field == "event") {
            if (value.size() > 255 || value.find('\0') != std::string::npos) {
                out.status = sse::parse_status::bad_event_name;
                return out;
            }
            name = value;
        }
    }
    if (!terminated && cur.size() > max_line) {
        out.status = sse::parse_status::too_large;
        return out;
    }
    // (A body that is only part of a BOM is an unterminated line here.)
    out.mid_event = in_event || !terminated;
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    FuzzedDataProvider in(bytes, size);
    size_t max_data = in.ConsumeIntegralInRange<size_t>(0, 1024);
    uint32_t seed = in.ConsumeIntegral<uint32_t>();
    std::string body = in.ConsumeRemainingBytesAsString();

    outcome whole = feed_chunks(body, max_data, {});
    outcome ref = reference(body, max_data);
    FUZZ_CHECK(whole == ref);

    std::minstd_rand rng(seed);
    std::vector<size_t> cuts;
    for (size_t at = 0; at < body.size();) {
        at += rng() % 8 == 0 ? 0 : rng() % 16;  // empty chunks too
        if (at > body.size()) {
            at = body.size();
        }
        cuts.push_back(at);
        if (cuts.size() > 4096) {
            break;
        }
    }
    FUZZ_CHECK(feed_chunks(body, max_data, cuts) == whole);

    if (body.size() <= 512) {
        std::vector<size_t> each;
        for (size_t i = 1; i < body.size(); i++) {
            each.push_back(i);
        }
        FUZZ_CHECK(feed_chunks(body, max_data, each) == whole);
    }
    return 0;
}
