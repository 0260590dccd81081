// Channel ids: valid_channel_id, parse_channels (sse_channel's values and
// options) and split_channels.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "event.hpp"

using namespace std::string_literals;

namespace {

// Joins n distinct ids "c0,c1,...".
std::string distinct_ids(size_t n) {
    std::string s;
    for (size_t i = 0; i < n; i++) {
        s += (i ? "," : "") + ("c" + std::to_string(i));
    }
    return s;
}

std::vector<std::string> split(std::string_view list,
                               sse::channels_error expect) {
    std::vector<std::string_view> out;
    EXPECT_EQ(sse::split_channels(list, out), expect)
        << "list: " << ::testing::PrintToString(std::string(list));
    return {out.begin(), out.end()};
}

using ids = std::vector<std::string>;

ids parse(std::vector<std::string_view> values, sse::channel_rule rule,
          sse::channels_error expect) {
    ids out;
    EXPECT_EQ(sse::parse_channels(values, rule, out), expect)
        << "values: "
        << ::testing::PrintToString(ids(values.begin(), values.end()));
    return out;
}

const sse::channel_rule exact{};
const sse::channel_rule split_comma{',', false};
const sse::channel_rule unescape_only{'\0', true};
const sse::channel_rule split_unescape{',', true};

}  // namespace

TEST(ChannelChars, AllowsExactlyTheDocumentedSet) {
    const std::string allowed =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        "_.:@~-/";
    for (int c = 0; c < 256; c++) {
        bool expect = allowed.find(static_cast<char>(c)) != std::string::npos;
        EXPECT_EQ(sse::is_channel_char(static_cast<unsigned char>(c)), expect)
            << "byte " << c;
        EXPECT_EQ(sse::valid_channel_id(std::string(1, static_cast<char>(c))),
                  expect)
            << "byte " << c;
    }
}

TEST(ValidChannelId, AcceptsMixedAllowedChars) {
    EXPECT_TRUE(sse::valid_channel_id("user:42/room.main~x@host_a-b"));
}

TEST(ValidChannelId, RejectsEmpty) { EXPECT_FALSE(sse::valid_channel_id("")); }

TEST(ValidChannelId, Accepts255BytesRejects256) {
    EXPECT_TRUE(sse::valid_channel_id(std::string(255, 'a')));
    EXPECT_FALSE(sse::valid_channel_id(std::string(256, 'a')));
}

TEST(ValidChannelId, RejectsOneBadByteAnywhere) {
    for (std::string bad : {" "s, "\n"s, "\r"s, "\0"s, "%"s, ","s, "\xc3"s}) {
        EXPECT_FALSE(sse::valid_channel_id(bad + "abc"));
        EXPECT_FALSE(sse::valid_channel_id("ab" + bad + "c"));
        EXPECT_FALSE(sse::valid_channel_id("abc" + bad));
    }
}

TEST(SplitChannels, SplitsOnCommasKeepingOrder) {
    EXPECT_EQ(split("b,a,c", sse::channels_error::none),
              (std::vector<std::string>{"b", "a", "c"}));
    EXPECT_EQ(split("one", sse::channels_error::none),
              (std::vector<std::string>{"one"}));
}

TEST(SplitChannels, DropsDuplicatesKeepingFirstSeenOrder) {
    EXPECT_EQ(split("b,a,b,c,a,b", sse::channels_error::none),
              (std::vector<std::string>{"b", "a", "c"}));
}

TEST(SplitChannels, EmptyItemsAreAnError) {
    for (const char *s : {"", ",", "a,,b", ",a", "a,", "a,b,"}) {
        split(s, sse::channels_error::empty);
    }
}

TEST(SplitChannels, BadBytesAreAnError) {
    for (std::string s : {"a b"s, "a,b c"s, " a"s, "a\n"s, "a,\r\nb"s, "a\0b"s,
                          "a%2Fb"s, "a;b"s, "a,caf\xc3\xa9"s}) {
        split(s, sse::channels_error::bad_char);
    }
}

TEST(SplitChannels, Accepts255ByteIdRejects256AsTooLong) {
    std::string ok(255, 'x');
    EXPECT_EQ(split("a," + ok, sse::channels_error::none),
              (std::vector<std::string>{"a", ok}));
    split("a," + std::string(256, 'x'), sse::channels_error::too_long);
    // Length is checked before the bytes.
    split(std::string(256, ' '), sse::channels_error::too_long);
}

TEST(SplitChannels, Accepts64IdsRejects65AsTooMany) {
    std::vector<std::string> ids =
        split(distinct_ids(64), sse::channels_error::none);
    ASSERT_EQ(ids.size(), 64u);
    EXPECT_EQ(ids.front(), "c0");
    EXPECT_EQ(ids.back(), "c63");
    split(distinct_ids(65), sse::channels_error::too_many);
}

TEST(SplitChannels, DuplicatesDoNotCountTowardsTheLimit) {
    std::vector<std::string> ids =
        split(distinct_ids(64) + ",c5", sse::channels_error::none);
    EXPECT_EQ(ids.size(), 64u);
    ids = split("c0,c0,c0," + distinct_ids(64) + ",c63,c1",
                sse::channels_error::none);
    EXPECT_EQ(ids.size(), 64u);
}

TEST(SplitChannels, ClearsOutputFirst) {
    std::vector<std::string_view> out = {"stale"};
    ASSERT_EQ(sse::split_channels("a", out), sse::channels_error::none);
    EXPECT_EQ(out, (std::vector<std::string_view>{"a"}));
}

TEST(SplitChannels, ReportsTheFirstErrorInListOrder) {
    split("a b,,c", sse::channels_error::bad_char);
    split(",a b", sse::channels_error::empty);
}

TEST(DescribeChannelsError, NamesEveryError) {
    EXPECT_STREQ(sse::describe(sse::channels_error::none), "ok");
    EXPECT_STREQ(sse::describe(sse::channels_error::empty), "empty channel id");
    EXPECT_STREQ(sse::describe(sse::channels_error::too_long),
                 "channel id longer than 255 bytes");
    EXPECT_STREQ(sse::describe(sse::channels_error::too_many),
                 "more than 64 channels");
    EXPECT_STREQ(sse::describe(sse::channels_error::bad_escape),
                 "malformed %-escape in channel id");
    EXPECT_NE(std::string(sse::describe(sse::channels_error::bad_char))
                  .find("A-Z a-z 0-9"),
              std::string::npos);
}

// The injection of issue 8: a variable's bytes are one id, whatever they
// hold, unless the location asks for splitting or decoding.
TEST(ParseChannels, ExactValueIsOneIdNeverSplitNorDecoded) {
    parse({"user:x,admin"}, exact, sse::channels_error::bad_char);
    parse({"user:x%2Cadmin"}, exact, sse::channels_error::bad_char);
    parse({"user:%61dmin"}, exact, sse::channels_error::bad_char);
    EXPECT_EQ(parse({"user:x"}, exact, sse::channels_error::none),
              ids{"user:x"});
}

TEST(ParseChannels, SeveralValuesAreSeveralIds) {
    EXPECT_EQ(parse({"b", "a", "c"}, exact, sse::channels_error::none),
              (ids{"b", "a", "c"}));
    EXPECT_EQ(parse({"b", "a", "b"}, exact, sse::channels_error::none),
              (ids{"b", "a"}));
    parse({"a", ""}, exact, sse::channels_error::empty);
}

TEST(ParseChannels, SplitSplitsEachValueOnItsSeparator) {
    EXPECT_EQ(parse({"a,b", "c,a"}, split_comma, sse::channels_error::none),
              (ids{"a", "b", "c"}));
    EXPECT_EQ(parse({"a;b,c"}, {';', false}, sse::channels_error::bad_char),
              (ids{"a"}));
    EXPECT_EQ(parse({"a:b"}, {':', false}, sse::channels_error::none),
              (ids{"a", "b"}));
    for (std::string_view s : {"", ",", "a,,b", ",a", "a,"}) {
        parse({s}, split_comma, sse::channels_error::empty);
    }
}

TEST(ParseChannels, SplitDoesNotDecode) {
    parse({"a,b%3Ac"}, split_comma, sse::channels_error::bad_char);
}

TEST(ParseChannels, UnescapeDecodesOnceAfterSplitting) {
    EXPECT_EQ(
        parse({"esc%3Aa,esc%2Fb"}, split_unescape, sse::channels_error::none),
        (ids{"esc:a", "esc/b"}));
    // An escaped separator is data, never a split: one invalid id.
    parse({"x%2Cadmin"}, split_unescape, sse::channels_error::bad_char);
    // %25 gives '%', which is not decoded again.
    parse({"%2561dmin"}, split_unescape, sse::channels_error::bad_char);
    parse({"%2561dmin"}, unescape_only, sse::channels_error::bad_char);
    EXPECT_EQ(parse({"%61dmin"}, unescape_only, sse::channels_error::none),
              ids{"admin"});
    // Without split, a decoded comma is still one (invalid) id.
    parse({"a%2Cb"}, unescape_only, sse::channels_error::bad_char);
    parse({"a,b"}, unescape_only, sse::channels_error::bad_char);
}

TEST(ParseChannels, UnescapeHexCaseAndDecodedBytesAreValidated) {
    EXPECT_EQ(parse({"a%3ab%3Ac"}, unescape_only, sse::channels_error::none),
              ids{"a:b:c"});
    for (std::string_view s : {"a%20b", "a%00b", "a%0Ab", "caf%C3%A9"}) {
        parse({s}, unescape_only, sse::channels_error::bad_char);
    }
}

TEST(ParseChannels, MalformedEscapeIsAnError) {
    for (std::string_view s : {"%", "a%", "a%4", "a%zz", "a%4g", "%%41"}) {
        parse({s}, unescape_only, sse::channels_error::bad_escape);
    }
}

TEST(ParseChannels, LimitsApplyToDecodedIds) {
    // 255 decoded bytes from 765 escaped ones pass; 256 do not.
    std::string esc;
    for (int i = 0; i < 255; i++) {
        esc += "%61";
    }
    EXPECT_EQ(parse({esc}, unescape_only, sse::channels_error::none),
              ids{std::string(255, 'a')});
    parse({esc + "a"}, unescape_only, sse::channels_error::too_long);
    parse({std::string(256, 'a')}, exact, sse::channels_error::too_long);
}

TEST(ParseChannels, AtMostMaxDistinctIds) {
    std::string list = distinct_ids(64);
    EXPECT_EQ(parse({list}, split_comma, sse::channels_error::none).size(),
              64u);
    parse({list, "extra"}, split_comma, sse::channels_error::too_many);
    EXPECT_EQ(
        parse({list, "c0"}, split_comma, sse::channels_error::none).size(),
        64u);
    ids out;
    EXPECT_EQ(sse::parse_channels({"a", "b"}, exact, out, 1),
              sse::channels_error::too_many);
    EXPECT_EQ(sse::parse_channels({"a", "a"}, exact, out, 1),
              sse::channels_error::none);
    EXPECT_EQ(out, ids{"a"});
}

TEST(ParseChannels, ClearsOutputFirst) {
    ids out = {"stale"};
    ASSERT_EQ(sse::parse_channels({"a"}, exact, out),
              sse::channels_error::none);
    EXPECT_EQ(out, ids{"a"});
}
