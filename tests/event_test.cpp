// Wire encoding of events (encode_event, encoded_size) and event names.
#include "event.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;

namespace {

// One event dispatched by the reference parser.
struct parsed_event {
    std::string id;
    std::string type;
    std::string data;
};

struct parse_result {
    std::vector<parsed_event> events;
    std::vector<std::string> other_fields;  // anything but id/event/data
    bool clean_end = false;  // no partial line or pending event left over
};

// A small SSE parser after the WHATWG "event stream interpretation": lines
// end at CRLF, lone CR or lone LF; "field: value" strips one leading space;
// data lines join with LF; a blank line dispatches when data was seen.
parse_result parse_sse(std::string_view s) {
    parse_result r;
    std::string last_id;
    std::string type;
    std::string data;
    bool have_data = false;
    bool pending = false;  // a field was seen since the last dispatch
    size_t i = 0;
    size_t start = 0;
    while (i < s.size()) {
        char c = s[i];
        if (c != '\r' && c != '\n') {
            i++;
            continue;
        }
        std::string_view line = s.substr(start, i - start);
        i += (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ? 2 : 1;
        start = i;
        if (line.empty()) {
            if (have_data) {
                if (!data.empty() && data.back() == '\n') {
                    data.pop_back();
                }
                r.events.push_back({last_id, type, data});
            }
            type.clear();
            data.clear();
            have_data = false;
            pending = false;
            continue;
        }
        pending = true;
        if (line[0] == ':') {
            continue;
        }
        size_t colon = line.find(':');
        std::string_view field = line.substr(0, colon);
        std::string_view value;
        if (colon != std::string_view::npos) {
            value = line.substr(colon + 1);
            if (!value.empty() && value[0] == ' ') {
                value.remove_prefix(1);
            }
        }
        if (field == "data") {
            data.append(value);
            data.push_back('\n');
            have_data = true;
        } else if (field == "event") {
            type = std::string(value);
        } else if (field == "id") {
            if (value.find('\0') == std::string_view::npos) {
                last_id = std::string(value);
            }
        } else {
            r.other_fields.emplace_back(field);
        }
    }
    r.clean_end = start == s.size() && !pending;
    return r;
}

std::string normalise_newlines(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '\r') {
            out.push_back('\n');
            if (i + 1 < s.size() && s[i + 1] == '\n') {
                i++;
            }
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

// Encodes into a buffer with a guard zone, checking encoded_size() and that
// nothing is written past it.
std::string encode_checked(std::string_view id, std::string_view event,
                           std::string_view data) {
    size_t n = sse::encoded_size(id, event, data);
    std::vector<char> buf(n + 32, '\x5a');
    size_t written = sse::encode_event(buf.data(), id, event, data);
    EXPECT_EQ(written, n);
    for (size_t i = n; i < buf.size(); i++) {
        EXPECT_EQ(buf[i], '\x5a') << "write past encoded_size at " << i;
    }
    std::string s(buf.data(), written);
    EXPECT_EQ(sse::encode_event(id, event, data), s);
    return s;
}

}  // namespace

TEST(EncodeEvent, SingleLineGivesIdDataAndBlankLine) {
    EXPECT_EQ(encode_checked("1-1", "", "hello"), "id: 1-1\ndata: hello\n\n");
}

TEST(EncodeEvent, NamedEventWritesEventLineAfterId) {
    EXPECT_EQ(encode_checked("3-7", "update", "x"),
              "id: 3-7\nevent: update\ndata: x\n\n");
}

TEST(EncodeEvent, EmptyNameWritesNoEventLine) {
    std::string s = encode_checked("3-7", "", "x");
    EXPECT_EQ(s.find("event:"), std::string::npos);
}

TEST(EncodeEvent, EmptyDataGivesOneEmptyDataLine) {
    EXPECT_EQ(encode_checked("1-2", "", ""), "id: 1-2\ndata: \n\n");
}

TEST(EncodeEvent, LfSplitsDataLines) {
    EXPECT_EQ(encode_checked("1-1", "", "a\nb"),
              "id: 1-1\ndata: a\ndata: b\n\n");
}

TEST(EncodeEvent, CrlfIsOneLineBreak) {
    EXPECT_EQ(encode_checked("1-1", "", "a\r\nb"),
              "id: 1-1\ndata: a\ndata: b\n\n");
}

TEST(EncodeEvent, LoneCrIsALineBreak) {
    EXPECT_EQ(encode_checked("1-1", "", "a\rb"),
              "id: 1-1\ndata: a\ndata: b\n\n");
}

TEST(EncodeEvent, MixedBreaksGiveOneLinePerBreak) {
    // a CR | CRLF | b LF | CR c
    EXPECT_EQ(encode_checked("1-1", "", "a\r\r\nb\n\rc"),
              "id: 1-1\ndata: a\ndata: \ndata: b\ndata: \ndata: c\n\n");
    // LF then CR are two breaks, not one
    EXPECT_EQ(encode_checked("1-1", "", "\n\r"),
              "id: 1-1\ndata: \ndata: \ndata: \n\n");
    EXPECT_EQ(encode_checked("1-1", "", "\r\n\r\n"),
              "id: 1-1\ndata: \ndata: \ndata: \n\n");
}

TEST(EncodeEvent, TrailingNewlineGivesTrailingEmptyDataLine) {
    EXPECT_EQ(encode_checked("1-1", "", "a\n"), "id: 1-1\ndata: a\ndata: \n\n");
    EXPECT_EQ(encode_checked("1-1", "", "a\r"), "id: 1-1\ndata: a\ndata: \n\n");
    EXPECT_EQ(encode_checked("1-1", "", "a\r\n"),
              "id: 1-1\ndata: a\ndata: \n\n");
}

TEST(EncodeEvent, Utf8PassesThroughUntouched) {
    std::string data = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e";
    EXPECT_EQ(encode_checked("1-1", "caf\xc3\xa9", data),
              "id: 1-1\nevent: caf\xc3\xa9\ndata: " + data + "\n\n");
}

TEST(EncodeEvent, InvalidUtf8BytesPassThroughUntouched) {
    std::string data = "\xff\xfe\xc3(\x80\xed\xa0\x80\xc0\xaf";
    EXPECT_EQ(encode_checked("1-1", "", data),
              "id: 1-1\ndata: " + data + "\n\n");
}

TEST(EncodeEvent, NulBytesPassThrough) {
    std::string data = "a\0b\0"s;
    std::string s = encode_checked("1-1", "", data);
    EXPECT_EQ(s, "id: 1-1\ndata: a\0b\0\n\n"s);
    EXPECT_EQ(s.size(), 20u);
}

TEST(EncodeEvent, FieldLookalikesInDataStayData) {
    std::string data = "x\n\nid: 9-9\r\nevent: evil\rretry: 1\n:c";
    std::string s = encode_checked("1-1", "", data);
    EXPECT_EQ(s,
              "id: 1-1\ndata: x\ndata: \ndata: id: 9-9\n"
              "data: event: evil\ndata: retry: 1\ndata: :c\n\n");
    parse_result r = parse_sse(s);
    ASSERT_EQ(r.events.size(), 1u);
    EXPECT_EQ(r.events[0].id, "1-1");
    EXPECT_EQ(r.events[0].type, "");
    EXPECT_EQ(r.events[0].data, "x\n\nid: 9-9\nevent: evil\nretry: 1\n:c");
    EXPECT_TRUE(r.other_fields.empty());
}

TEST(EncodeEvent, EncodedSizeMatchesBytesWrittenForManyInputs) {
    const std::vector<std::string> ids = {"", "0-0", "1-1",
                                          "18446744073709551615-"
                                          "18446744073709551615"};
    const std::vector<std::string> names = {"", "e", "a b:c",
                                            std::string(255, 'n')};
    const std::vector<std::string> datas = {"",
                                            "x",
                                            "\n",
                                            "\r",
                                            "\r\n",
                                            "\n\n",
                                            "\r\r",
                                            "\r\n\r\n",
                                            "\n\r",
                                            "a\r\r\nb\n\rc",
                                            "a\n",
                                            "\n\xd0\xb0",
                                            "\0"s,
                                            "a\0\rb"s,
                                            std::string(70000, 'z'),
                                            std::string(5000, '\n'),
                                            std::string(5000, '\r')};
    for (const auto &id : ids) {
        for (const auto &name : names) {
            for (const auto &data : datas) {
                size_t n = sse::encoded_size(id, name, data);
                std::string s = encode_checked(id, name, data);
                ASSERT_EQ(s.size(), n);
            }
        }
    }
    // Exact sizes: 4 + id + 1, 7 + name + 1, 6 + line + 1 per line, 1.
    EXPECT_EQ(sse::encoded_size("1-1", "", ""), 8u + 7u + 1u);
    EXPECT_EQ(sse::encoded_size("1-1", "ev", "a\nbc"), 8u + 10u + 8u + 9u + 1u);
    EXPECT_EQ(sse::encoded_size("", "", std::string(5000, '\n')),
              5u + 5001u * 7u + 1u);
}

TEST(EncodeEvent, RandomDataParsesBackAsExactlyOneEqualEvent) {
    std::mt19937_64 rng(20240601);
    // Bytes that matter to the parser, often; any byte, sometimes.
    const std::string special = "\r\n\r\n:  \0dataidevent\xff\xc3"s;
    const std::vector<std::string> names = {"", "msg", " lead", "a:b",
                                            "x\xc3\xa9"};
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = rng() % 48;
        std::string data;
        for (size_t i = 0; i < len; i++) {
            if (rng() % 3 == 0) {
                data.push_back(static_cast<char>(rng() % 256));
            } else {
                data.push_back(special[rng() % special.size()]);
            }
        }
        char idbuf[sse::max_event_id_len];
        size_t idlen = sse::format_event_id(idbuf, {rng() % 5, rng()});
        std::string id(idbuf, idlen);
        const std::string &name = names[rng() % names.size()];

        std::string s = encode_checked(id, name, data);
        parse_result r = parse_sse(s);
        ASSERT_EQ(r.events.size(), 1u)
            << "data: " << ::testing::PrintToString(data);
        EXPECT_EQ(r.events[0].id, id);
        EXPECT_EQ(r.events[0].type, name);
        ASSERT_EQ(r.events[0].data, normalise_newlines(data))
            << "data: " << ::testing::PrintToString(data);
        EXPECT_TRUE(r.other_fields.empty());
        EXPECT_TRUE(r.clean_end);
    }
}

TEST(ReferenceParser, SeesForgedFieldsAndSecondEvents) {
    // The property test is only as strong as its parser: make sure it
    // would notice what the encoder must prevent.
    parse_result r = parse_sse("id: 1\ndata: a\n\ndata: b\nretry: 5\n\n");
    ASSERT_EQ(r.events.size(), 2u);
    EXPECT_EQ(r.events[1].id, "1");
    EXPECT_EQ(r.events[1].data, "b");
    ASSERT_EQ(r.other_fields.size(), 1u);
    EXPECT_EQ(r.other_fields[0], "retry");
    EXPECT_TRUE(r.clean_end);
    EXPECT_FALSE(parse_sse("data: a\n").clean_end);
    EXPECT_EQ(parse_sse("data: a\r\rdata:b\r\n\r\n").events.size(), 2u);
}

TEST(ValidEventName, AcceptsOrdinaryNamesAndEmpty) {
    EXPECT_TRUE(sse::valid_event_name("update"));
    EXPECT_TRUE(sse::valid_event_name("a b:c;d"));
    EXPECT_TRUE(sse::valid_event_name("caf\xc3\xa9"));
    EXPECT_TRUE(sse::valid_event_name("\xff\xfe"));
    // Empty means "no event line": the default "message" type.
    EXPECT_TRUE(sse::valid_event_name(""));
}

TEST(ValidEventName, RejectsCrLfAndNulAnywhere) {
    for (char bad : {'\r', '\n', '\0'}) {
        std::string c(1, bad);
        EXPECT_FALSE(sse::valid_event_name(c));
        EXPECT_FALSE(sse::valid_event_name(c + "abc"));
        EXPECT_FALSE(sse::valid_event_name("ab" + c + "c"));
        EXPECT_FALSE(sse::valid_event_name("abc" + c));
    }
}

TEST(ValidEventName, Accepts255BytesRejects256) {
    EXPECT_TRUE(sse::valid_event_name(std::string(255, 'e')));
    EXPECT_FALSE(sse::valid_event_name(std::string(256, 'e')));
    EXPECT_FALSE(sse::valid_event_name(std::string(10000, 'e')));
}

// A publish with an empty body (or no event name) hands over views with a
// null pointer; memchr/memcpy must never see it (UBSan: nonnull-attribute).
TEST(EncodeEvent, NullViewsForEmptyDataAndEventAreFine) {
    const std::string_view none;
    ASSERT_EQ(none.data(), nullptr);
    const std::string expect = "id: 1-2\ndata: \n\n";
    EXPECT_EQ(sse::encoded_size("1-2", none, none), expect.size());
    EXPECT_EQ(sse::encode_event("1-2", none, none), expect);
    std::string out(expect.size(), '\0');
    EXPECT_EQ(sse::encode_event(out.data(), "1-2", none, none), expect.size());
    EXPECT_EQ(out, expect);
    EXPECT_EQ(sse::encode_event("1-2", "e", none),
              "id: 1-2\nevent: e\ndata: \n\n");
    EXPECT_EQ(sse::encode_event(none, none, "x"), "id: \ndata: x\n\n");
}
