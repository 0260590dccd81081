// The incremental text/event-stream parser (sse::stream_parser): fields,
// line ends, the BOM, chunk boundaries, limits and mid_event().
#include "parser.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::string_literals;

// Dispatched events as (event name, data), copied out of the callback.
using parser_events = std::vector<std::pair<std::string, std::string>>;

static constexpr size_t big_limit = 1 << 16;

// Feeds one chunk, appending what it dispatches to out.
static sse::parse_status feed_into(sse::stream_parser &p, std::string_view in,
                                   parser_events &out) {
    return p.feed(in, [&out](std::string_view event, std::string_view data) {
        out.emplace_back(std::string(event), std::string(data));
    });
}

// Parses s in one feed with a generous limit, expecting no fault.
static parser_events parse_whole(std::string_view s) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, s, out), sse::parse_status::ok);
    EXPECT_EQ(p.events(), out.size());
    return out;
}

// Feeds s cut at the given ascending offsets; every feed must return ok.
static parser_events parse_cut(std::string_view s,
                               const std::vector<size_t> &cuts,
                               bool *mid_event = nullptr) {
    sse::stream_parser p(big_limit);
    parser_events out;
    size_t from = 0;
    for (size_t at : cuts) {
        EXPECT_EQ(feed_into(p, s.substr(from, at - from), out),
                  sse::parse_status::ok);
        from = at;
    }
    EXPECT_EQ(feed_into(p, s.substr(from), out), sse::parse_status::ok);
    EXPECT_EQ(p.events(), out.size());
    if (mid_event != nullptr) {
        *mid_event = p.mid_event();
    }
    return out;
}

// Shows a cut list in a failure message.
static std::string show_cuts(const std::vector<size_t> &cuts) {
    std::string s;
    for (size_t at : cuts) {
        s += std::to_string(at) + " ";
    }
    return s;
}

// Every way of cutting s into chunks gives the expected events.
static void expect_same_for_all_splits(std::string_view s,
                                       const parser_events &expected,
                                       bool expected_mid_event) {
    ASSERT_EQ(parse_whole(s), expected);
    // One cut at every position, including both ends (an empty feed).
    for (size_t at = 0; at <= s.size(); at++) {
        bool mid = !expected_mid_event;
        EXPECT_EQ(parse_cut(s, {at}, &mid), expected) << "cut at " << at;
        EXPECT_EQ(mid, expected_mid_event) << "cut at " << at;
    }
    // Two cuts at every pair of positions.
    for (size_t a = 0; a <= s.size(); a++) {
        for (size_t b = a; b <= s.size(); b++) {
            EXPECT_EQ(parse_cut(s, {a, b}), expected)
                << "cuts at " << a << " " << b;
        }
    }
    // One byte at a time.
    std::vector<size_t> every;
    for (size_t at = 1; at < s.size(); at++) {
        every.push_back(at);
    }
    EXPECT_EQ(parse_cut(s, every), expected) << "byte by byte";
    // Random chunk sizes from 0 (an empty feed) to 7, fixed seed.
    std::mt19937 rng(20261128);
    std::uniform_int_distribution<size_t> len(0, 7);
    for (int round = 0; round < 2000; round++) {
        std::vector<size_t> cuts;
        for (size_t at = len(rng); at < s.size(); at += len(rng)) {
            cuts.push_back(at);
        }
        bool mid = !expected_mid_event;
        EXPECT_EQ(parse_cut(s, cuts, &mid), expected)
            << "cuts at " << show_cuts(cuts);
        EXPECT_EQ(mid, expected_mid_event) << "cuts at " << show_cuts(cuts);
    }
}

TEST(StreamParser, SingleEventIsDispatchedWithEmptyName) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: hello\n\n", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "hello"}}));
    EXPECT_EQ(p.events(), 1u);
    EXPECT_FALSE(p.mid_event());
}

TEST(StreamParser, NothingIsDispatchedBeforeTheBlankLine) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: hello\n", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "hello"}}));
}

TEST(StreamParser, EventFieldNamesTheEvent) {
    EXPECT_EQ(parse_whole("event: update\ndata: x\n\n"),
              (parser_events{{"update", "x"}}));
    EXPECT_EQ(parse_whole("event:update\ndata: x\n\n"),
              (parser_events{{"update", "x"}}));
    // Order of the fields does not matter; the last event line wins.
    EXPECT_EQ(parse_whole("data: x\nevent: a\nevent: b\n\n"),
              (parser_events{{"b", "x"}}));
}

TEST(StreamParser, EventNameAppliesOnlyToItsOwnEvent) {
    EXPECT_EQ(parse_whole("event: first\ndata: 1\n\ndata: 2\n\n"),
              (parser_events{{"first", "1"}, {"", "2"}}));
}

TEST(StreamParser, EventNameUpTo255BytesIsAccepted) {
    std::string name(255, 'n');
    EXPECT_EQ(parse_whole("event: " + name + "\ndata: x\n\n"),
              (parser_events{{name, "x"}}));
}

TEST(StreamParser, MultipleDataLinesAreJoinedWithLf) {
    EXPECT_EQ(parse_whole("data: a\ndata: b\ndata: c\n\n"),
              (parser_events{{"", "a\nb\nc"}}));
    // An empty data line in the middle leaves an empty line.
    EXPECT_EQ(parse_whole("data: a\ndata:\ndata: c\n\n"),
              (parser_events{{"", "a\n\nc"}}));
    // A trailing empty data line leaves a trailing LF.
    EXPECT_EQ(parse_whole("data: a\ndata\n\n"), (parser_events{{"", "a\n"}}));
}

TEST(StreamParser, DataWithoutColonIsAnEmptyValue) {
    EXPECT_EQ(parse_whole("data\n\n"), (parser_events{{"", ""}}));
    EXPECT_EQ(parse_whole("data\ndata\n\n"), (parser_events{{"", "\n"}}));
}

TEST(StreamParser, DataColonWithNothingAfterIsAnEmptyValue) {
    EXPECT_EQ(parse_whole("data:\n\n"), (parser_events{{"", ""}}));
    EXPECT_EQ(parse_whole("data: \n\n"), (parser_events{{"", ""}}));
}

TEST(StreamParser, OnlyOneLeadingSpaceOfTheValueIsStripped) {
    EXPECT_EQ(parse_whole("data:x\n\n"), (parser_events{{"", "x"}}));
    EXPECT_EQ(parse_whole("data: x\n\n"), (parser_events{{"", "x"}}));
    EXPECT_EQ(parse_whole("data:  x\n\n"), (parser_events{{"", " x"}}));
    EXPECT_EQ(parse_whole("data:   x \n\n"), (parser_events{{"", "  x "}}));
    EXPECT_EQ(parse_whole("data:  \n\n"), (parser_events{{"", " "}}));
    // A tab is not a space.
    EXPECT_EQ(parse_whole("data:\tx\n\n"), (parser_events{{"", "\tx"}}));
    // Only the first colon separates: the rest is value.
    EXPECT_EQ(parse_whole("data: a: b\n\n"), (parser_events{{"", "a: b"}}));
    EXPECT_EQ(parse_whole("event:  e\ndata: x\n\n"),
              (parser_events{{" e", "x"}}));
}

TEST(StreamParser, CommentLinesAreIgnored) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, ": keep-alive\n:\n:data: no\n: data: no\n", out),
              sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
    // Comments between fields do not break the event up.
    EXPECT_EQ(feed_into(p, "data: a\n: c\ndata: b\n:\n\n", out),
              sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a\nb"}}));
}

TEST(StreamParser, IdAndRetryAreIgnored) {
    EXPECT_EQ(parse_whole("id: 5\nretry: 100\ndata: a\nid\nretry\n\n"),
              (parser_events{{"", "a"}}));
    // Without data they dispatch nothing.
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "id: 5\n\nretry: 100\n\nid\n\n", out),
              sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
}

TEST(StreamParser, UnknownFieldsAreIgnored) {
    EXPECT_EQ(parse_whole("foo: bar\nData: no\n data: no\ndatas: no\n"
                          "Event: no\nevent : no\ndata: yes\nfoo\n\n"),
              (parser_events{{"", "yes"}}));
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "foo: bar\n\n", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
}

TEST(StreamParser, BlankLineWithoutDataDispatchesNothing) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "\n\n\nevent: a\n\nid: 1\n\n", out),
              sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
    EXPECT_FALSE(p.mid_event());
}

TEST(StreamParser, BlankLineWithoutDataResetsTheEventName) {
    EXPECT_EQ(parse_whole("event: stale\n\ndata: x\n\n"),
              (parser_events{{"", "x"}}));
    EXPECT_EQ(parse_whole("event: stale\nid: 1\n\nevent: b\n\ndata: x\n\n"),
              (parser_events{{"", "x"}}));
}

TEST(StreamParser, CrlfLineEnds) {
    EXPECT_EQ(parse_whole("event: e\r\ndata: a\r\ndata: b\r\n\r\n"
                          "data: c\r\n\r\n"),
              (parser_events{{"e", "a\nb"}, {"", "c"}}));
}

TEST(StreamParser, LfLineEnds) {
    EXPECT_EQ(parse_whole("event: e\ndata: a\ndata: b\n\ndata: c\n\n"),
              (parser_events{{"e", "a\nb"}, {"", "c"}}));
}

TEST(StreamParser, LoneCrLineEnds) {
    EXPECT_EQ(parse_whole("event: e\rdata: a\rdata: b\r\rdata: c\r\r"),
              (parser_events{{"e", "a\nb"}, {"", "c"}}));
}

TEST(StreamParser, MixedLineEnds) {
    // CRLF, CR, LF; then LF + CRLF, CR + LF as line end + blank line.
    EXPECT_EQ(
        parse_whole("data: a\r\ndata: b\rdata: c\n\r\n"
                    "data: d\r\n\n"
                    "data: e\n\r"
                    "data: f\r\r\n"),
        (parser_events{{"", "a\nb\nc"}, {"", "d"}, {"", "e"}, {"", "f"}}));
    // CR CR is a line end and a blank line, not one line end.
    EXPECT_EQ(parse_whole("data: a\r\rdata: b\r\n\r\n"),
              (parser_events{{"", "a"}, {"", "b"}}));
}

TEST(StreamParser, CrAtEndOfFeedAndLfAtStartOfNextAreOneLineEnd) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\r", out), sse::parse_status::ok);
    EXPECT_TRUE(p.mid_event());
    // Were this LF a blank line, "a" would be dispatched on its own.
    EXPECT_EQ(feed_into(p, "\ndata: b\r", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());
    EXPECT_TRUE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\r", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a\nb"}}));
    EXPECT_EQ(feed_into(p, "\ndata: c\n\n", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a\nb"}, {"", "c"}}));
    EXPECT_EQ(p.events(), 2u);
}

TEST(StreamParser, CrThenEmptyFeedsThenLfIsStillOneLineEnd) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\r", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "\ndata: b\n\n", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a\nb"}}));
}

TEST(StreamParser, CrAtEndOfFeedThenOtherByteIsALineEnd) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\r", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "\r", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
    // The second CR was a blank line; this LF pairs with it.
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "data: b\r", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "data: c\n\n", out), sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "a"}, {"", "b\nc"}}));
}

TEST(StreamParser, LeadingBomIsSkipped) {
    // Not skipped, it would make the field "\xEF\xBB\xBF" "data".
    EXPECT_EQ(parse_whole("\xEF\xBB\xBF"
                          "data: a\n\n"),
              (parser_events{{"", "a"}}));
    // Alone in the first feed.
    EXPECT_EQ(parse_cut("\xEF\xBB\xBF"
                        "data: a\n\n",
                        {3}),
              (parser_events{{"", "a"}}));
}

TEST(StreamParser, LeadingBomIsSkippedWhenSplitAcrossFeeds) {
    std::string s =
        "\xEF\xBB\xBF"
        "data: a\n\n";
    parser_events want{{"", "a"}};
    EXPECT_EQ(parse_cut(s, {1}), want);
    EXPECT_EQ(parse_cut(s, {2}), want);
    EXPECT_EQ(parse_cut(s, {1, 2}), want);
    EXPECT_EQ(parse_cut(s, {1, 2, 3}), want);
    EXPECT_EQ(parse_cut(s, {0, 1, 1, 2, 2, 3, 3, 4}), want);
}

TEST(StreamParser, BomAloneLeavesNoEventPending) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "\xEF\xBB", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "\xBF", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    // A comment right after it is still a comment.
    EXPECT_EQ(feed_into(p, ":c\n", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_TRUE(out.empty());
}

TEST(StreamParser, BomPrefixThatIsNotABomIsKeptAsLineBytes) {
    // "\xEF\xBB" then ':' is no BOM: the line is a field "\xEF\xBB", not a
    // comment, so an event is under way.
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "\xEF", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "\xBB:c\n", out), sse::parse_status::ok);
    EXPECT_TRUE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_TRUE(out.empty());

    // Bytes of a would-be BOM ahead of "data" make another field: were
    // they dropped, "data: no" would be an event.
    for (size_t at : {1, 2}) {
        EXPECT_EQ(parse_cut("\xEF\xBB"
                            "data: no\n\ndata: yes\n\n",
                            {at}),
                  (parser_events{{"", "yes"}}))
            << "cut at " << at;
    }
}

TEST(StreamParser, BomIsSkippedOnlyAtTheVeryStart) {
    // A second BOM is part of the first line: field "\xEF\xBB\xBF" "data".
    EXPECT_EQ(parse_whole("\xEF\xBB\xBF\xEF\xBB\xBF"
                          "data: no\n\ndata: yes\n\n"),
              (parser_events{{"", "yes"}}));
    EXPECT_EQ(parse_cut("\xEF\xBB\xBF\xEF\xBB\xBF"
                        "data: no\n\ndata: yes\n\n",
                        {3}),
              (parser_events{{"", "yes"}}));
    // A BOM opening a later feed, or a later line, is no BOM either.
    EXPECT_EQ(parse_cut("data: a\n\n\xEF\xBB\xBF"
                        "data: no\n\n",
                        {9}),
              (parser_events{{"", "a"}}));
    EXPECT_EQ(parse_cut("\n\xEF\xBB\xBF"
                        "data: no\n\n",
                        {1}),
              (parser_events{}));
    // In a value it is data like any other bytes.
    EXPECT_EQ(parse_whole("\xEF\xBB\xBF"
                          "data: \xEF\xBB\xBF"
                          "x\n\n"),
              (parser_events{{"",
                              "\xEF\xBB\xBF"
                              "x"}}));
}

TEST(StreamParserSplit, TrickyStreamGivesSameEventsForEverySplit) {
    std::string s =
        "\xEF\xBB\xBF"
        ": comment\r\n"
        "event: greet\r\n"
        "data: hello\r\n"
        "data:  two\r"
        "data\n"
        "\r\n"
        "id: 7\rretry: 100\n"
        "data:x\n"
        "\n"
        "event: dropped\n\n"
        "data: \xFF\xFE\0nul\r"s
        "foo: bar\r"
        "\r"
        "data: \xEF\xBB\xBF"
        "bom\n\n"
        "event: last\ndata: end\r\n\r\n";
    parser_events want{
        {"greet", "hello\n two\n"},
        {"", "x"},
        {"", "\xFF\xFE\0nul"s},
        {"",
         "\xEF\xBB\xBF"
         "bom"},
        {"last", "end"},
    };
    expect_same_for_all_splits(s, want, false);
}

TEST(StreamParserSplit, StreamEndingInsideAnEventIsMidEventForEverySplit) {
    std::string s = "data: a\r\n\r\ndata: b\r\n";
    expect_same_for_all_splits(s, parser_events{{"", "a"}}, true);
}

TEST(StreamParserSplit, NonBomPrefixGivesSameEventsForEverySplit) {
    // "\xEF\xBB" is no BOM: it stays, making the field unknown.
    std::string s =
        "\xEF\xBB"
        "data: no\r\ndata: kept\r\n\r\n"
        "\xEF\xBB\xBF"
        "data: no\r\r"
        "data: yes\r\r";
    expect_same_for_all_splits(s, parser_events{{"", "kept"}, {"", "yes"}},
                               false);
}

TEST(StreamParserSplit, DoubleBomGivesSameEventsForEverySplit) {
    std::string s =
        "\xEF\xBB\xBF\xEF\xBB\xBF"
        "data: no\n\r"
        "data: yes\n\r";
    expect_same_for_all_splits(s, parser_events{{"", "yes"}}, false);
}

TEST(StreamParser, DataUpToTheLimitIsAccepted) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: 12345678\n\n", out), sse::parse_status::ok);
    // Joined size counts the LF between lines: 4 + 1 + 3 = 8.
    EXPECT_EQ(feed_into(p, "data: 1234\ndata: 567\n\n", out),
              sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "12345678"}, {"", "1234\n567"}}));
}

TEST(StreamParser, DataOverTheLimitIsTooLarge) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: 123456789\n", out),
              sse::parse_status::too_large);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
}

TEST(StreamParser, JoinedDataOverTheLimitIsTooLarge) {
    // 4 + 1 + 4 = 9 bytes once joined.
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: 1234\n", out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "data: 5678\n", out), sse::parse_status::too_large);
    EXPECT_TRUE(out.empty());

    // An empty line counts its LF too: 8 + 1 = 9.
    sse::stream_parser q(8);
    EXPECT_EQ(feed_into(q, "data: 12345678\ndata\n", out),
              sse::parse_status::too_large);
    EXPECT_TRUE(out.empty());
}

TEST(StreamParser, DataLimitIsPerEvent) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: 12345678\n\ndata: abcdefgh\n\n", out),
              sse::parse_status::ok);
    EXPECT_EQ(out, (parser_events{{"", "12345678"}, {"", "abcdefgh"}}));
}

TEST(StreamParser, EventsBeforeTooLargeDataAreStillDispatched) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\n\ndata: 123456789\n\ndata: b\n\n", out),
              sse::parse_status::too_large);
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
    EXPECT_EQ(p.events(), 1u);
}

TEST(StreamParser, ParserStaysFailedAfterTooLarge) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: 123456789\n", out),
              sse::parse_status::too_large);
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::too_large);
    EXPECT_EQ(feed_into(p, "data: a\n\n", out), sse::parse_status::too_large);
    EXPECT_EQ(feed_into(p, "", out), sse::parse_status::too_large);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);
}

TEST(StreamParser, OverLongLineWithoutLineEndIsTooLarge) {
    // Up to max_data + 256 bytes of an unfinished line are held.
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, ":" + std::string(263, 'x'), out),
              sse::parse_status::ok);
    EXPECT_TRUE(p.mid_event());
    EXPECT_EQ(feed_into(p, "x", out), sse::parse_status::too_large);
    // Failed for good: even a line end and a whole event do nothing.
    EXPECT_EQ(feed_into(p, "\n\ndata: a\n\n", out),
              sse::parse_status::too_large);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(p.events(), 0u);

    sse::stream_parser q(8);
    EXPECT_EQ(feed_into(q, std::string(265, 'x'), out),
              sse::parse_status::too_large);
}

TEST(StreamParser, OverLongLineGrowingOverManyFeedsIsTooLarge) {
    sse::stream_parser p(8);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\n\ndata: ", out), sse::parse_status::ok);
    // 6 bytes held; 25 feeds of 10 make 256, the 26th makes 266 > 264.
    for (int i = 0; i < 25; i++) {
        ASSERT_EQ(feed_into(p, std::string(10, 'y'), out),
                  sse::parse_status::ok)
            << "feed " << i;
    }
    EXPECT_EQ(feed_into(p, std::string(10, 'y'), out),
              sse::parse_status::too_large);
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
    EXPECT_EQ(p.events(), 1u);
}

TEST(StreamParser, EventNameWithNulIsBadEventName) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a\n\nevent: a\0b\ndata: x\n\n"s, out),
              sse::parse_status::bad_event_name);
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
    // Stays failed.
    EXPECT_EQ(feed_into(p, "data: b\n\n", out),
              sse::parse_status::bad_event_name);
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
    EXPECT_EQ(p.events(), 1u);
}

TEST(StreamParser, EventNameWithNulSplitAcrossFeedsIsBadEventName) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "event: a\0"s, out), sse::parse_status::ok);
    EXPECT_EQ(feed_into(p, "b\r", out), sse::parse_status::bad_event_name);
    EXPECT_TRUE(out.empty());
}

TEST(StreamParser, EventNameOver255BytesIsBadEventName) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "event: " + std::string(256, 'n') + "\n", out),
              sse::parse_status::bad_event_name);
    EXPECT_TRUE(out.empty());
}

TEST(StreamParser, MidEventIsFalseAtStart) {
    sse::stream_parser p(big_limit);
    EXPECT_FALSE(p.mid_event());
    parser_events out;
    EXPECT_EQ(feed_into(p, "", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
}

TEST(StreamParser, MidEventIsFalseAfterACompleteEvent) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "event: e\ndata: a\n\n", out),
              sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_EQ(feed_into(p, "data: b\r\r", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_EQ(out.size(), 2u);
}

TEST(StreamParser, MidEventIsFalseAfterOnlyComments) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, ": one\r\n:\r: two\n", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\n\n", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
}

TEST(StreamParser, MidEventIsTrueWithAPartialLine) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(feed_into(p, "data: a", out), sse::parse_status::ok);
    EXPECT_TRUE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\n\n", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    // Even a partial comment: the line is not over yet.
    EXPECT_EQ(feed_into(p, ": partial", out), sse::parse_status::ok);
    EXPECT_TRUE(p.mid_event());
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_FALSE(p.mid_event());
    EXPECT_EQ(out, (parser_events{{"", "a"}}));
}

TEST(StreamParser, MidEventIsTrueAfterFieldLinesWithoutBlankLine) {
    for (const char *field : {"data: a\n", "data\n", "event: e\n", "id: 1\n",
                              "retry: 5\n", "foo: bar\n", "data: a\r"}) {
        sse::stream_parser p(big_limit);
        parser_events out;
        EXPECT_EQ(feed_into(p, field, out), sse::parse_status::ok);
        EXPECT_TRUE(p.mid_event()) << field;
        EXPECT_EQ(feed_into(p, ":comment\n", out), sse::parse_status::ok);
        EXPECT_TRUE(p.mid_event()) << field;
        EXPECT_EQ(feed_into(p, "\r\n", out), sse::parse_status::ok);
        EXPECT_FALSE(p.mid_event()) << field;
    }
}

TEST(StreamParser, EventsCountsDispatchedEvents) {
    sse::stream_parser p(big_limit);
    parser_events out;
    EXPECT_EQ(p.events(), 0u);
    EXPECT_EQ(feed_into(p, "data: 1\n\n\n\nevent: x\n\n", out),
              sse::parse_status::ok);
    EXPECT_EQ(p.events(), 1u);
    EXPECT_EQ(feed_into(p, "data: 2\n\ndata: 3\n", out), sse::parse_status::ok);
    EXPECT_EQ(p.events(), 2u);
    EXPECT_EQ(feed_into(p, "\n", out), sse::parse_status::ok);
    EXPECT_EQ(p.events(), 3u);
    EXPECT_EQ(out, (parser_events{{"", "1"}, {"", "2"}, {"", "3"}}));
}

TEST(StreamParser, InvalidUtf8PassesThroughUntouched) {
    std::string bad = "\xC3\x28 \xFF\xFE \x80 \xED\xA0\x80 \xF8\x88\x80\x80";
    EXPECT_EQ(parse_whole("event: \xFF\x80\ndata: " + bad + "\n\n"),
              (parser_events{{"\xFF\x80", bad}}));
}

TEST(StreamParser, NulInDataPassesThroughUntouched) {
    std::string data = "\0a\0\0b\0"s;
    parser_events got = parse_whole("data: " + data + "\ndata:\0\n\n"s);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].first, "");
    EXPECT_EQ(got[0].second, data + "\n\0"s);
    EXPECT_EQ(got[0].second.size(), 8u);
}

TEST(DescribeParseStatus, NamesEachStatus) {
    EXPECT_STREQ(sse::describe(sse::parse_status::ok), "ok");
    EXPECT_STREQ(sse::describe(sse::parse_status::too_large),
                 "an event larger than sse_max_message_size");
    EXPECT_STREQ(sse::describe(sse::parse_status::bad_event_name),
                 "an event name with NUL or over 255 bytes");
}

TEST(StreamParser, LongIgnoredLineFailsTheSameWhateverTheSplit) {
    std::string body = ":" + std::string(1000, 'c') + "\ndata: a\n\n";
    for (size_t cut : {size_t{0}, size_t{500}, body.size() - 1}) {
        sse::stream_parser p(8);
        int events = 0;
        auto on = [&](std::string_view, std::string_view) { events++; };
        sse::parse_status st =
            p.feed(std::string_view(body).substr(0, cut), on);
        if (st == sse::parse_status::ok) {
            st = p.feed(std::string_view(body).substr(cut), on);
        }
        EXPECT_EQ(st, sse::parse_status::too_large) << "cut at " << cut;
        EXPECT_EQ(events, 0) << "cut at " << cut;
    }
}
