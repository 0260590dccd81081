// Channel ids: valid_channel_id and split_channels.
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
    EXPECT_NE(std::string(sse::describe(sse::channels_error::bad_char))
                  .find("A-Z a-z 0-9"),
              std::string::npos);
}
