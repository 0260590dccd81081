// Event ids: "EPOCH-SEQ", parse_event_id and format_event_id.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>

#include "event.hpp"

namespace {

std::string format(sse::event_id id) {
    char buf[sse::max_event_id_len + 8];
    std::memset(buf, '#', sizeof(buf));
    size_t n = sse::format_event_id(buf, id);
    EXPECT_LE(n, sse::max_event_id_len);
    EXPECT_EQ(buf[n], '#') << "wrote past the returned length";
    return std::string(buf, n);
}

// "E-S" when s parses, "none" when it does not.
std::string parsed(const std::string &s) {
    std::optional<sse::event_id> id = sse::parse_event_id(s);
    if (!id) {
        return "none";
    }
    return std::to_string(id->epoch) + "-" + std::to_string(id->seq);
}

}  // namespace

TEST(FormatEventId, WritesDecimalEpochDashSeq) {
    EXPECT_EQ(format({0, 0}), "0-0");
    EXPECT_EQ(format({1, 2}), "1-2");
    EXPECT_EQ(format({1700000000123, 42}), "1700000000123-42");
    EXPECT_EQ(format({10, 100}), "10-100");
}

TEST(FormatEventId, MaxValuesFillExactlyMaxEventIdLen) {
    std::string s = format({UINT64_MAX, UINT64_MAX});
    EXPECT_EQ(s, "18446744073709551615-18446744073709551615");
    EXPECT_EQ(s.size(), sse::max_event_id_len);
}

TEST(ParseEventId, ParsesWhatFormatWrites) {
    const sse::event_id ids[] = {{0, 0},          {1, 2},
                                 {9, 10},         {UINT64_MAX, 0},
                                 {0, UINT64_MAX}, {UINT64_MAX, UINT64_MAX}};
    for (sse::event_id id : ids) {
        auto back = sse::parse_event_id(format(id));
        ASSERT_TRUE(back.has_value()) << format(id);
        EXPECT_EQ(back->epoch, id.epoch);
        EXPECT_EQ(back->seq, id.seq);
    }
}

TEST(ParseEventId, RandomIdsRoundTrip) {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 10000; i++) {
        // Vary the magnitude so short and long numbers both appear.
        sse::event_id id{rng() >> (rng() % 64), rng() >> (rng() % 64)};
        auto back = sse::parse_event_id(format(id));
        ASSERT_TRUE(back.has_value());
        ASSERT_EQ(back->epoch, id.epoch);
        ASSERT_EQ(back->seq, id.seq);
    }
}

TEST(ParseEventId, RejectsMalformedIds) {
    const char *bad[] = {"",      "-",    "1-",    "-1",    "a-1",  "1-a",
                         "1-2-3", " 1-2", "1-2 ",  "+1-2",  "1-+2", "1--2",
                         "12",    "1_2",  "1 - 2", "1-2\n", "0x1-2"};
    for (const char *s : bad) {
        EXPECT_EQ(parsed(s), "none") << "input: \"" << s << "\"";
    }
    EXPECT_EQ(parsed(std::string("1-2\0", 4)), "none");
    EXPECT_EQ(parsed(std::string("1\0-2", 4)), "none");
}

TEST(ParseEventId, RejectsHugeInput) {
    EXPECT_EQ(parsed(std::string(10240, '1')), "none");
    EXPECT_EQ(parsed(std::string(5120, '1') + "-" + std::string(5119, '1')),
              "none");
    EXPECT_EQ(parsed("1-" + std::string(10240, '0')), "none");
}

TEST(ParseEventId, RejectsOverflowAcceptsMax) {
    EXPECT_EQ(parsed("18446744073709551615-18446744073709551615"),
              "18446744073709551615-18446744073709551615");
    EXPECT_EQ(parsed("18446744073709551616-1"), "none");
    EXPECT_EQ(parsed("1-18446744073709551616"), "none");
    EXPECT_EQ(parsed("18446744073709551620-1"), "none");
    EXPECT_EQ(parsed("99999999999999999999-1"), "none");
    EXPECT_EQ(parsed("184467440737095516150-1"), "none");
    EXPECT_EQ(parsed("18446744073709551614-0"), "18446744073709551614-0");
}

TEST(ParseEventId, AcceptsLeadingZerosUpToTwentyDigits) {
    // Leading zeros are accepted (the id is not canonical, but it names
    // the same event), as long as each number is at most 20 digits.
    EXPECT_EQ(parsed("01-02"), "1-2");
    EXPECT_EQ(parsed("00-00"), "0-0");
    EXPECT_EQ(parsed("00000000000000000001-00000000000000000002"), "1-2");
    EXPECT_EQ(parsed("000000000000000000001-2"), "none");
    EXPECT_EQ(parsed("1-000000000000000000002"), "none");
}
