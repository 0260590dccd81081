// The event encoder (src/event.hpp encode_event): whatever the data and
// whatever valid event name, the bytes written
//   - are exactly encoded_size() long;
//   - read back, line by line under the WHATWG rules, as one event: an `id`
//     field, an `event` field when the name is not empty, `data` fields and
//     one blank line at the very end; no other field, no comment, no second
//     event (nothing in the input can forge one);
//   - give back, through the publisher's own parser (src/parser.hpp), the
//     event name and the data with CRLF and CR turned into LF.
// Two events encoded back to back parse as two. Empty data given as a null
// pointer (as nginx gives an empty body) is encoded like any empty data.
// The body alone (encode_body, what the store keeps) is the same bytes
// after the id line.
//
// Input: the event name (FuzzedDataProvider: up to a backslash and another
// byte), then the data; the id's two numbers are taken from the end.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "event.hpp"
#include "fuzz_check.hpp"
#include "parser.hpp"

namespace {

// Data as EventSource gives it back: every line end becomes LF.
std::string normalized(std::string_view data) {
    std::string out;
    for (size_t i = 0; i < data.size(); i++) {
        if (data[i] == '\r') {
            out += '\n';
            if (i + 1 < data.size() && data[i + 1] == '\n') {
                i++;
            }
        } else {
            out += data[i];
        }
    }
    return out;
}

// The lines of the wire form, checking that each ends with LF (the encoder
// writes LF only) and that no CR is left anywhere.
std::vector<std::string_view> wire_lines(std::string_view wire) {
    std::vector<std::string_view> lines;
    FUZZ_CHECK(wire.find('\r') == std::string_view::npos);
    FUZZ_CHECK(!wire.empty() && wire.back() == '\n');
    size_t start = 0;
    while (start < wire.size()) {
        size_t lf = wire.find('\n', start);
        lines.push_back(wire.substr(start, lf - start));
        start = lf + 1;
    }
    return lines;
}

std::vector<std::pair<std::string, std::string>> parse_all(
    std::string_view wire, size_t max_data) {
    std::vector<std::pair<std::string, std::string>> out;
    sse::stream_parser p(max_data);
    auto st = p.feed(wire, [&](std::string_view ev, std::string_view d) {
        out.emplace_back(ev, d);
    });
    FUZZ_CHECK(st == sse::parse_status::ok);
    FUZZ_CHECK(!p.mid_event());
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size) {
    FuzzedDataProvider in(bytes, size);
    sse::event_id eid{in.ConsumeIntegral<uint64_t>(),
                      in.ConsumeIntegral<uint64_t>()};
    std::string name = in.ConsumeRandomLengthString(300);
    std::string data = in.ConsumeRemainingBytesAsString();

    char idbuf[sse::max_event_id_len];
    std::string_view id(idbuf, sse::format_event_id(idbuf, eid));

    bool name_ok =
        name.size() <= sse::max_event_name_len &&
        name.find_first_of(std::string("\r\n\0", 3)) == std::string::npos;
    FUZZ_CHECK(sse::valid_event_name(name) == name_ok);
    if (!name_ok) {
        return 0;  // refused before it is ever encoded
    }

    std::string wire = sse::encode_event(id, name, data);
    FUZZ_CHECK(wire.size() == sse::encoded_size(id, name, data));
    std::string again(wire.size(), '\0');
    FUZZ_CHECK(sse::encode_event(again.data(), id, name, data) == wire.size());
    FUZZ_CHECK(again == wire);

    // The store keeps the body alone and readers put the id line before
    // it: the same bytes.
    std::string body(sse::encoded_body_size(name, data), '\0');
    FUZZ_CHECK(sse::encode_body(body.data(), name, data) == body.size());
    FUZZ_CHECK("id: " + std::string(id) + "\n" + body == wire);

    // Field by field: id, [event], data..., blank, and nothing else.
    auto lines = wire_lines(wire);
    FUZZ_CHECK(lines.size() >= 3);
    FUZZ_CHECK(lines[0] == "id: " + std::string(id));
    size_t i = 1;
    if (!name.empty()) {
        FUZZ_CHECK(lines[i] == "event: " + name);
        i++;
    }
    std::string joined;
    for (; i + 1 < lines.size(); i++) {
        FUZZ_CHECK(lines[i].substr(0, 6) == "data: ");
        joined.append(lines[i].substr(6));
        joined += '\n';
    }
    FUZZ_CHECK(lines.back().empty());
    joined.pop_back();
    std::string expect = normalized(data);
    FUZZ_CHECK(joined == expect);

    // Through the publisher's parser: the same event, alone.
    size_t max = wire.size();
    auto events = parse_all(wire, max);
    FUZZ_CHECK(events.size() == 1);
    FUZZ_CHECK(events[0].first == name);
    FUZZ_CHECK(events[0].second == expect);

    // nginx hands an empty body over as a null pointer and length 0: that
    // must encode as any empty data does (issue 8, item 10).
    if (data.empty()) {
        FUZZ_CHECK(sse::encode_event(id, name, std::string_view()) == wire);
        std::string again_body(body.size(), '\0');
        FUZZ_CHECK(sse::encode_body(again_body.data(), name,
                                    std::string_view()) == body.size());
        FUZZ_CHECK(again_body == body);
    }

    // Back to back with an empty one: exactly two events.
    std::string two = wire + sse::encode_event(id, "", "");
    events = parse_all(two, max);
    FUZZ_CHECK(events.size() == 2);
    FUZZ_CHECK(events[1].first.empty() && events[1].second.empty());
    return 0;
}
