// JWT verification against tokens and keys made by PyJWT (jwt_vectors.hpp),
// refusals, and fuzz-style inputs that must give a reason, never a crash.
#include "jwt.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <random>
#include <string>

#include "jwt_vectors.hpp"

using namespace sse::jwt;
namespace v = jwt_vectors;

namespace {

const key_set &vector_keys() {
    static key_set *ks = [] {
        auto *k = new key_set;
        std::string err = k->load(v::jwks);
        EXPECT_EQ(err, "");
        return k;
    }();
    return *ks;
}

options at_now() {
    options o;
    o.now = v::now;
    return o;
}

result check(std::string_view token, const options &o = at_now()) {
    return verify(vector_keys(), token, o);
}

std::string b64(std::string_view s) {
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : s) {
        acc = (acc << 8) | c;
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out += tab[(acc >> bits) & 63];
        }
    }
    if (bits > 0) {
        out += tab[(acc << (6 - bits)) & 63];
    }
    return out;
}

}  // namespace

TEST(JwtBase64url, DecodesStrictly) {
    EXPECT_EQ(base64url_decode(""), "");
    EXPECT_EQ(base64url_decode("YQ"), "a");
    EXPECT_EQ(base64url_decode("YWI"), "ab");
    EXPECT_EQ(base64url_decode("YWJj"), "abc");
    EXPECT_EQ(base64url_decode("-_8"), "\xfb\xff");
    EXPECT_FALSE(base64url_decode("YQ=="));  // padding
    EXPECT_FALSE(base64url_decode("Y"));     // impossible length
    EXPECT_FALSE(base64url_decode("YR"));    // non-zero trailing bits
    EXPECT_FALSE(base64url_decode("+/8"));   // base64, not base64url
    EXPECT_FALSE(base64url_decode("YW J"));
    EXPECT_FALSE(base64url_decode(std::string_view("YW\0j", 4)));
}

TEST(JwtKeys, LoadsEveryKeyType) { EXPECT_EQ(vector_keys().size(), 6u); }

TEST(JwtKeys, RefusesBadSetsWithAReason) {
    struct {
        const char *json;
        const char *reason;
    } cases[] = {
        {"", "not valid JSON"},
        {"[]", "not a JWK Set"},
        {"{}", "\"keys\" is missing"},
        {R"({"keys": []})", "no signature key"},
        {R"({"keys": [1]})", "key 0: is not an object"},
        {R"({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]})", "shorter than 32"},
        {R"({"keys": [{"kty": "oct", "k": "a b"}]})", "not base64url"},
        {R"({"keys": [{"kty": "oct"}]})", "\"k\" is missing"},
        {R"({"keys": [{"kty": "XYZ"}]})", "unsupported \"kty\""},
        {R"({"keys": [{"k": "x"}]})", "\"kty\" is missing"},
        {R"({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]})",
         "2048 bits"},
        {R"({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]})",
         "unsupported EC curve"},
        {R"({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AA"}]})",
         "wrong length"},
        // A point that is not on the curve.
        {R"({"keys": [{"kty": "EC", "crv": "P-256",
              "x": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
              "y": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]})",
         "not a valid P-256"},
        {R"({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AA"}]})",
         "unsupported OKP curve"},
        {R"({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]})",
         "not 32 bytes"},
        {R"({"keys": [{"kid": 5, "kty": "oct"}]})", "\"kid\" is not a string"},
        {R"({"keys": [{"kty": "oct", "use": "sign",
              "k": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"}]})",
         "\"use\""},
        {R"({"keys": [{"kty": "oct", "alg": "RS256", "kid": "a",
              "k": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"}]})",
         "key 0 (kid \"a\"): \"alg\" is unsupported or does not fit"},
    };
    for (const auto &c : cases) {
        key_set ks;
        std::string err = ks.load(c.json);
        EXPECT_NE(err.find(c.reason), std::string::npos)
            << c.json << " -> " << err;
        EXPECT_EQ(err.find('\n'), std::string::npos);
        EXPECT_EQ(ks.size(), 0u);
    }
}

TEST(JwtKeys, SkipsEncryptionKeys) {
    key_set ks;
    EXPECT_EQ(ks.load(R"({"keys": [
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "k": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"}]})"),
              "");
    EXPECT_EQ(ks.size(), 1u);
}

class JwtAlg : public ::testing::TestWithParam<const char *> {};

TEST_P(JwtAlg, AcceptsPyJwtToken) {
    static const std::pair<const char *, const char *> tokens[] = {
        {"HS256", v::HS256}, {"HS384", v::HS384}, {"HS512", v::HS512},
        {"RS256", v::RS256}, {"RS384", v::RS384}, {"RS512", v::RS512},
        {"PS256", v::PS256}, {"PS384", v::PS384}, {"PS512", v::PS512},
        {"ES256", v::ES256}, {"ES384", v::ES384}, {"EdDSA", v::EdDSA},
    };
    const char *token = nullptr;
    for (const auto &[alg, t] : tokens) {
        if (std::string_view(alg) == GetParam()) {
            token = t;
        }
    }
    ASSERT_NE(token, nullptr);
    result r = check(token);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.c.sub, "alice");
    EXPECT_EQ(r.c.exp, v::now + 3600);
    EXPECT_TRUE(r.c.allowed(right::subscribe, "chat:room-1"));
    EXPECT_TRUE(r.c.allowed(right::publish, "ai:session-42"));

    // Any flipped bit of the signed part or the signature is refused.
    std::string t(token);
    for (size_t i : {size_t(1), t.find('.') + 2, t.size() - 3}) {
        std::string bad = t;
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        result b = check(bad);
        EXPECT_FALSE(b.ok) << GetParam() << " at " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(All, JwtAlg,
                         ::testing::Values("HS256", "HS384", "HS512", "RS256",
                                           "RS384", "RS512", "PS256", "PS384",
                                           "PS512", "ES256", "ES384", "EdDSA"));

TEST(JwtVerify, WithoutKidTriesEveryFittingKey) {
    EXPECT_TRUE(check(v::RS256_nokid).ok) << check(v::RS256_nokid).error;
    EXPECT_TRUE(check(v::ES256_nokid).ok);
}

TEST(JwtVerify, RefusalsSayWhy) {
    struct {
        const char *token;
        const char *reason;
    } cases[] = {
        {v::RS256_foreign, "bad signature"},
        {v::unknown_kid, "unknown kid"},
        {v::PS256_pinned, "does not fit alg"},
        {v::expired, "token expired"},
        {v::future, "not valid yet"},
        {v::sse_wrong, "\"sse\".\"subscribe\" is not a list"},
        {v::exp_string, "\"exp\" is not a number"},
        {v::alg_none, "alg none"},
        {v::alg_none_sig, "alg none"},
        {v::confusion, "does not fit alg"},
        {v::confusion_nokid, "bad signature"},
        {"", "empty"},
        {"abc", "three"},
        {"a.b.c.d", "three"},
        {"a.b", "three"},
        {"YQ==.YQ.YQ", "base64url"},
    };
    for (const auto &c : cases) {
        result r = check(c.token);
        EXPECT_FALSE(r.ok) << c.token;
        EXPECT_NE(r.error.find(c.reason), std::string::npos)
            << c.reason << " vs " << r.error;
    }
}

TEST(JwtVerify, LeewayCoversClockSkew) {
    options o = at_now();
    o.leeway = 11;
    EXPECT_TRUE(check(v::expired, o).ok);
    o.leeway = 10;
    EXPECT_FALSE(check(v::expired, o).ok);
    o.leeway = 30;
    EXPECT_TRUE(check(v::future, o).ok);
    o.leeway = INT64_MAX;
    o.now = INT64_MAX;
    EXPECT_TRUE(check(v::expired, o).ok);  // saturates, no overflow
}

TEST(JwtVerify, AudienceAndIssuer) {
    options o = at_now();
    o.aud = "chat";
    o.iss = "https://issuer";
    EXPECT_TRUE(check(v::HS256, o).ok);
    EXPECT_TRUE(check(v::aud_list, o).ok);
    EXPECT_NE(check(v::minimal, o).error.find("issuer"), std::string::npos);
    o.iss.clear();
    EXPECT_NE(check(v::minimal, o).error.find("audience"), std::string::npos);
    o.aud = "other";
    EXPECT_FALSE(check(v::HS256, o).ok);
    o.aud.clear();
    o.iss = "https://evil";
    EXPECT_FALSE(check(v::HS256, o).ok);
}

TEST(JwtVerify, MinimalTokenHasNoRights) {
    result r = check(v::minimal);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.c.exp, 0);
    EXPECT_EQ(r.c.sub, "");
    EXPECT_FALSE(r.c.allowed(right::subscribe, "chat:room-1"));
    EXPECT_NE(check(v::no_sse).error.find("\"sub\""), std::string::npos);
}

TEST(JwtVerify, ClaimsByName) {
    result r = check(v::HS256);
    ASSERT_TRUE(r.ok);
    ASSERT_NE(r.c.claim("iss"), nullptr);
    EXPECT_EQ(*r.c.claim("iss"), "https://issuer");
    EXPECT_EQ(*r.c.claim("exp"), std::to_string(v::now + 3600));
    EXPECT_EQ(r.c.claim("sse")->substr(0, 1), "{");
    EXPECT_EQ(r.c.claim("nope"), nullptr);
}

TEST(JwtRights, Patterns) {
    claims c;
    c.subscribe = {"chat:room-1", "chat:public:*", ""};
    c.publish = {"*"};
    EXPECT_TRUE(c.allowed(right::subscribe, "chat:room-1"));
    EXPECT_FALSE(c.allowed(right::subscribe, "chat:room-10"));
    EXPECT_FALSE(c.allowed(right::subscribe, "chat:room-"));
    EXPECT_TRUE(c.allowed(right::subscribe, "chat:public:"));
    EXPECT_TRUE(c.allowed(right::subscribe, "chat:public:lobby"));
    EXPECT_FALSE(c.allowed(right::subscribe, "chat:public"));
    EXPECT_TRUE(c.allowed(right::publish, "anything"));
    EXPECT_FALSE(pattern_matches("a*b", "axb"));  // '*' only at the end
}

// ------------------------------------------------------------ fuzz-style

namespace {

std::string hs256(const std::string &header, const std::string &payload) {
    // A token whose signature is wrong: exercises decoding and JSON only.
    return b64(header) + "." + b64(payload) + "." + b64("signature");
}

// Signed with the set's "hmac" key (bytes 1..64), so the claims checks run.
std::string hs256_signed(const std::string &payload) {
    unsigned char secret[64];
    for (int i = 0; i < 64; i++) {
        secret[i] = static_cast<unsigned char>(i + 1);
    }
    std::string input =
        b64("{\"alg\":\"HS256\",\"kid\":\"hmac\"}") + "." + b64(payload);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), secret, sizeof secret,
         reinterpret_cast<const unsigned char *>(input.data()), input.size(),
         mac, &len);
    return input + "." +
           b64(std::string_view(reinterpret_cast<char *>(mac), len));
}

}  // namespace

TEST(JwtFuzz, WrongJsonTypesAreReasons) {
    const char *headers[] = {
        "",
        "null",
        "[]",
        "\"x\"",
        "{",
        "{\"alg\": 1}",
        "{\"alg\": null}",
        "{\"alg\": \"none\"}",
        "{\"alg\": \"NONE\"}",
        "{\"alg\": \"\"}",
        "{\"alg\": \"HS256\", \"kid\": 7}",
        "{\"alg\": \"HS256\", \"kid\": [\"hmac\"]}",
        "{\"alg\": \"HS256\", \"crit\": [\"b64\"], \"kid\": \"hmac\"}",
        "{\"alg\": \"HS256\", \"kid\": \"hmac\"}",
        "{\"alg\": \"ES512\"}",
        "\xff\xfe",
        "{\"alg\": \"HS256\"}garbage",
    };
    for (const char *h : headers) {
        result r = check(hs256(h, "{}"));
        EXPECT_FALSE(r.ok) << h;
        EXPECT_FALSE(r.error.empty());
        EXPECT_EQ(r.error.find('\n'), std::string::npos);
    }
}

TEST(JwtFuzz, HugeAndDeepInputs) {
    std::string big(100000, 'A');
    EXPECT_NE(check(big + "." + big + "." + big).error.find("too long"),
              std::string::npos);
    std::string header =
        "{\"alg\": \"HS256\", \"x\": \"" + std::string(10000, 'y') + "\"}";
    EXPECT_FALSE(check(hs256(header, "{}")).ok);
    std::string deep(5000, '[');
    EXPECT_NE(check(hs256(deep, "{}")).error.find("nested"), std::string::npos);
    EXPECT_NE(check(hs256("{\"alg\": \"HS256\"}", "{\"a\":" + deep))
                  .error.find("nested"),
              std::string::npos);
}

TEST(JwtFuzz, TruncatedTokensNeverVerify) {
    for (const char *token : {v::HS256, v::RS256, v::ES256, v::EdDSA}) {
        std::string t(token);
        for (size_t n = 0; n < t.size(); n++) {
            result r = check(t.substr(0, n));
            EXPECT_FALSE(r.ok) << n;
            EXPECT_FALSE(r.error.empty());
        }
    }
}

TEST(JwtFuzz, RandomBytesNeverCrash) {
    std::mt19937 rng(20261201);
    const std::string alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    for (int i = 0; i < 3000; i++) {
        std::string s(rng() % 300, '\0');
        for (auto &c : s) {
            c = i % 2 ? static_cast<char>(rng())
                      : alphabet[rng() % alphabet.size()];
        }
        EXPECT_FALSE(check(s).ok);
    }
}

TEST(JwtFuzz, MutatedValidTokensNeverCrash) {
    std::mt19937 rng(7);
    for (const char *token : {v::HS256, v::PS256, v::ES384, v::EdDSA}) {
        for (int i = 0; i < 500; i++) {
            std::string t(token);
            for (int k = 0; k < 1 + static_cast<int>(rng() % 3); k++) {
                t[rng() % t.size()] = static_cast<char>(rng());
            }
            result r = check(t);
            if (r.ok) {
                // A mutation into an equivalent encoding is impossible
                // (strict base64url), so only an unchanged token verifies.
                EXPECT_EQ(t, token);
            }
        }
    }
}

TEST(JwtFuzz, AnyPayloadBehindAValidSignatureGivesAReason) {
    ASSERT_TRUE(check(hs256_signed("{}")).ok)
        << check(hs256_signed("{}")).error;
    struct {
        const char *payload;
        const char *reason;  // nullptr: accepted
    } cases[] = {
        {"null", "not a JSON object"},
        {"1", "not a JSON object"},
        {"[]", "not a JSON object"},
        {"\"s\"", "not a JSON object"},
        {"not json", "not JSON"},
        {"{\"exp\": 1e400}", "not JSON"},
        {"{\"exp\": -1}", "expired"},
        {"{\"exp\": 1.5e300}", "\"exp\" is not a number"},
        {"{\"exp\": 9223372036854775807}", nullptr},
        {"{\"exp\": 18446744073709551615}", "\"exp\" is not a number"},
        {"{\"nbf\": -9223372036854775808}", nullptr},
        {"{\"nbf\": true}", "\"nbf\" is not a number"},
        {"{\"iat\": \"x\"}", "\"iat\" is not a number"},
        {"{\"sse\": []}", "\"sse\" claim is not an object"},
        {"{\"sse\": {\"publish\": [1]}}", "not a list of strings"},
        {"{\"sub\": {}}", "\"sub\" is not a string"},
        {"{\"aud\": 5, \"a\": \"\\u0000\"}", nullptr},
        {"{\"exp\": 1700000000.5}", "expired"},
        {"{\"exp\": 1700000001.5}", nullptr},
    };
    for (const auto &c : cases) {
        result r = check(hs256_signed(c.payload));
        if (c.reason == nullptr) {
            EXPECT_TRUE(r.ok) << c.payload << ": " << r.error;
        } else {
            EXPECT_FALSE(r.ok) << c.payload;
            EXPECT_NE(r.error.find(c.reason), std::string::npos)
                << c.payload << ": " << r.error;
        }
    }
}
