// Who may subscribe and publish: signed tokens (sse_auth_jwt) and the
// subscribe hook (sse_subscribe_request), both checked in the access phase
// before any stream starts, and the $sse_jwt_* / $sse_channels variables.
// Token verification itself is src/jwt.cpp.
#include "ngx_http_sse.hpp"

#include <cstdio>
#include <new>

#include "jwt.hpp"

// What the access check learnt about one request, in r->pool. Found again
// through its pool cleanup (the module's ctx slot belongs to the content
// handlers), which also runs its destructor.
struct ngx_http_sse_auth_ctx_t {
    ngx_http_sse_loc_conf_t *lcf;  // the location whose rules are checked
    sse::jwt::claims claims;       // empty without sse_auth_jwt
    time_t leeway;
    std::string channels;      // the ids, comma-separated, for $sse_channels
    ngx_http_request_t *hook;  // the sse_subscribe_request subrequest
    ngx_uint_t hook_status;
    unsigned verified : 1;  // token and rights checked
    unsigned hook_done : 1;
};

static void ngx_http_sse_auth_cleanup(void *data) noexcept {
    static_cast<ngx_http_sse_auth_ctx_t *>(data)->~ngx_http_sse_auth_ctx_t();
}

static ngx_http_sse_auth_ctx_t *ngx_http_sse_auth_ctx(ngx_http_request_t *r) {
    for (ngx_pool_cleanup_t *c = r->pool->cleanup; c; c = c->next) {
        if (c->handler == ngx_http_sse_auth_cleanup) {
            return static_cast<ngx_http_sse_auth_ctx_t *>(c->data);
        }
    }
    return NULL;
}

// ---------------------------------------------------------------- config

void ngx_http_sse_auth_create_conf(ngx_http_sse_loc_conf_t *lcf) {
    // pcalloc: realm, token, keys, aud and iss empty.
    lcf->auth_jwt = NGX_CONF_UNSET;
    lcf->auth_jwt_leeway = NGX_CONF_UNSET;
    lcf->presence_channel =
        static_cast<ngx_http_complex_value_t *>(NGX_CONF_UNSET_PTR);
}

char *ngx_http_sse_auth_merge_conf(ngx_conf_t *cf,
                                   ngx_http_sse_loc_conf_t *prev,
                                   ngx_http_sse_loc_conf_t *conf) {
    if (conf->auth_jwt == NGX_CONF_UNSET) {
        conf->auth_jwt = prev->auth_jwt == NGX_CONF_UNSET ? 0 : prev->auth_jwt;
        conf->auth_jwt_realm = prev->auth_jwt_realm;
        conf->auth_jwt_token = prev->auth_jwt_token;
    }
    if (conf->auth_jwt_keys == NULL) {
        conf->auth_jwt_keys = prev->auth_jwt_keys;
    }
    ngx_conf_merge_sec_value(conf->auth_jwt_leeway, prev->auth_jwt_leeway, 0);
    ngx_conf_merge_str_value(conf->auth_jwt_aud, prev->auth_jwt_aud, "");
    ngx_conf_merge_str_value(conf->auth_jwt_iss, prev->auth_jwt_iss, "");
    ngx_conf_merge_str_value(conf->subscribe_request, prev->subscribe_request,
                             "");
    ngx_conf_merge_str_value(conf->unsubscribe_request,
                             prev->unsubscribe_request, "");
    ngx_conf_merge_ptr_value(conf->presence_channel, prev->presence_channel,
                             NULL);
    if (conf->auth_jwt == 1 && conf->auth_jwt_keys == NULL &&
        (conf->role == NGX_HTTP_SSE_SUBSCRIBE ||
         conf->role == NGX_HTTP_SSE_PUBLISH)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sse_auth_jwt\" needs \"sse_auth_jwt_key_file\"");
        return (char *)NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

// Bytes allowed in a quoted-string of WWW-Authenticate (RFC 6750 3).
static bool ngx_http_sse_auth_quotable(u_char c) {
    return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\';
}

char *ngx_http_sse_auth_jwt(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(conf);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->auth_jwt != NGX_CONF_UNSET) {
        return (char *)"is duplicate";
    }
    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts > 2) {
            return (char *)"takes nothing after \"off\"";
        }
        lcf->auth_jwt = 0;
        return NGX_CONF_OK;
    }
    for (size_t i = 0; i < value[1].len; i++) {
        if (!ngx_http_sse_auth_quotable(value[1].data[i])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"%V\" directive, a "
                               "realm cannot hold quotes, backslashes or "
                               "control characters",
                               &value[1], &cmd->name);
            return (char *)NGX_CONF_ERROR;
        }
    }
    lcf->auth_jwt = 1;
    lcf->auth_jwt_realm = value[1];
    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }
    if (value[2].len <= 6 || ngx_strncmp(value[2].data, "token=", 6) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "expected token=VALUE",
                           &value[2], &cmd->name);
        return (char *)NGX_CONF_ERROR;
    }
    ngx_str_t v = {value[2].len - 6, value[2].data + 6};
    lcf->auth_jwt_token = static_cast<ngx_http_complex_value_t *>(
        ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (lcf->auth_jwt_token == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
    ccv.cf = cf;
    ccv.value = &v;
    ccv.complex_value = lcf->auth_jwt_token;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return (char *)NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static void ngx_http_sse_auth_free_keys(void *data) noexcept {
    delete static_cast<sse::jwt::key_set *>(data);
}

// A JWK Set is small; a larger file is surely not one.
#define NGX_HTTP_SSE_AUTH_MAX_KEY_FILE (1024 * 1024)

char *ngx_http_sse_auth_key_file(ngx_conf_t *cf, ngx_command_t *cmd,
                                 void *conf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(conf);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->auth_jwt_keys != NULL) {
        return (char *)"is duplicate";
    }
    ngx_str_t name = value[1];
    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return (char *)NGX_CONF_ERROR;
    }
    try {
        std::string text;
        FILE *f = fopen(reinterpret_cast<char *>(name.data), "rb");
        if (f == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "cannot open JWK Set \"%V\"", &name);
            return (char *)NGX_CONF_ERROR;
        }
        char buf[8192];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0 &&
               text.size() <= NGX_HTTP_SSE_AUTH_MAX_KEY_FILE) {
            text.append(buf, n);
        }
        bool failed = ferror(f);
        fclose(f);
        if (failed) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot read JWK Set \"%V\"", &name);
            return (char *)NGX_CONF_ERROR;
        }
        if (text.size() > NGX_HTTP_SSE_AUTH_MAX_KEY_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "JWK Set \"%V\" is larger than 1m", &name);
            return (char *)NGX_CONF_ERROR;
        }
        auto *keys = new (std::nothrow) sse::jwt::key_set;
        ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
        if (keys == NULL || cln == NULL) {
            delete keys;
            return (char *)NGX_CONF_ERROR;
        }
        cln->handler = ngx_http_sse_auth_free_keys;
        cln->data = keys;
        std::string err = keys->load(text);
        if (!err.empty()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid JWK Set \"%V\": %s", &name,
                               err.c_str());
            return (char *)NGX_CONF_ERROR;
        }
        lcf->auth_jwt_keys = keys;
    } catch (...) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot load JWK Set \"%V\": out of memory", &name);
        return (char *)NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

// ---------------------------------------------------------------- refusals

// A NUL-terminated copy in r->pool, for ngx_http_sse_add_header.
static char *ngx_http_sse_auth_cstr(ngx_http_request_t *r, std::string_view s) {
    auto *p = static_cast<char *>(ngx_pnalloc(r->pool, s.size() + 1));
    if (p != NULL) {
        ngx_memcpy(p, s.data(), s.size());
        p[s.size()] = '\0';
    }
    return p;
}

// Answers 401 or 403 with WWW-Authenticate and a one-line body, then
// finalizes: the access phase stops here.
static ngx_int_t ngx_http_sse_auth_refuse(ngx_http_request_t *r,
                                          ngx_http_sse_loc_conf_t *lcf,
                                          ngx_uint_t status, const char *error,
                                          std::string_view reason) {
    std::string h = "Bearer realm=\"";
    h.append(reinterpret_cast<char *>(lcf->auth_jwt_realm.data),
             lcf->auth_jwt_realm.len);
    h += '"';
    // No token at all: no error code (RFC 6750 3.1).
    if (error != NULL) {
        h += ", error=\"";
        h += error;
        h += "\", error_description=\"";
        for (char c : reason) {
            h += ngx_http_sse_auth_quotable(c) ? c : '\'';
        }
        h += '"';
    }
    char *v = ngx_http_sse_auth_cstr(r, h);
    if (v == NULL ||
        ngx_http_sse_add_header(r, "WWW-Authenticate", v) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return NGX_DONE;
    }
    ngx_http_finalize_request(r, ngx_http_sse_error(r, status, reason));
    return NGX_DONE;
}

// ---------------------------------------------------------------- access

// The token: token=VALUE when it is set and not empty, else the
// Authorization header's Bearer credentials.
static ngx_int_t ngx_http_sse_auth_token(ngx_http_request_t *r,
                                         ngx_http_sse_loc_conf_t *lcf,
                                         ngx_str_t *token) {
    token->len = 0;
    if (lcf->auth_jwt_token != NULL &&
        ngx_http_complex_value(r, lcf->auth_jwt_token, token) != NGX_OK) {
        return NGX_ERROR;
    }
    if (token->len > 0 || r->headers_in.authorization == NULL) {
        return NGX_OK;
    }
    ngx_str_t h = r->headers_in.authorization->value;
    if (h.len < 7 || ngx_strncasecmp(h.data, (u_char *)"Bearer ", 7) != 0) {
        return NGX_OK;
    }
    u_char *p = h.data + 7, *end = h.data + h.len;
    while (p < end && *p == ' ') {
        p++;
    }
    while (end > p && end[-1] == ' ') {
        end--;
    }
    token->data = p;
    token->len = end - p;
    return NGX_OK;
}

// The request's context for lcf, made on first use.
static ngx_http_sse_auth_ctx_t *ngx_http_sse_auth_ctx_for(
    ngx_http_request_t *r, ngx_http_sse_loc_conf_t *lcf) {
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r);
    if (ctx != NULL && ctx->lcf == lcf) {
        return ctx;
    }
    ngx_pool_cleanup_t *cln =
        ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_sse_auth_ctx_t));
    if (cln == NULL) {
        return NULL;
    }
    ctx = new (cln->data) ngx_http_sse_auth_ctx_t{};
    ctx->lcf = lcf;
    cln->handler = ngx_http_sse_auth_cleanup;
    return ctx;
}

// Verifies the token and the rights on every channel; NGX_OK, or what the
// access phase returns after a refusal.
static ngx_int_t ngx_http_sse_auth_verify(ngx_http_request_t *r,
                                          ngx_http_sse_loc_conf_t *lcf,
                                          ngx_http_sse_auth_ctx_t *ctx,
                                          std::vector<std::string_view> &ids) {
    ngx_str_t token;
    if (ngx_http_sse_auth_token(r, lcf, &token) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (token.len == 0) {
        return ngx_http_sse_auth_refuse(r, lcf, NGX_HTTP_UNAUTHORIZED, NULL,
                                        "token missing");
    }
    sse::jwt::options opt;
    opt.now = ngx_time();
    opt.leeway = lcf->auth_jwt_leeway;
    opt.aud.assign(reinterpret_cast<char *>(lcf->auth_jwt_aud.data),
                   lcf->auth_jwt_aud.len);
    opt.iss.assign(reinterpret_cast<char *>(lcf->auth_jwt_iss.data),
                   lcf->auth_jwt_iss.len);
    sse::jwt::result res = sse::jwt::verify(
        *static_cast<sse::jwt::key_set *>(lcf->auth_jwt_keys),
        {reinterpret_cast<char *>(token.data), token.len}, opt);
    if (!res.ok) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "sse: token refused: %s", res.error.c_str());
        return ngx_http_sse_auth_refuse(r, lcf, NGX_HTTP_UNAUTHORIZED,
                                        "invalid_token", res.error);
    }
    ctx->claims = std::move(res.c);
    ctx->leeway = static_cast<time_t>(opt.leeway);

    bool sub = lcf->role == NGX_HTTP_SSE_SUBSCRIBE;
    for (std::string_view id : ids) {
        if (!ctx->claims.allowed(
                sub ? sse::jwt::right::subscribe : sse::jwt::right::publish,
                id)) {
            std::string why = sub ? "no subscribe right to channel "
                                  : "no publish right to channel ";
            why += id;
            return ngx_http_sse_auth_refuse(r, lcf, NGX_HTTP_FORBIDDEN,
                                            "insufficient_scope", why);
        }
    }
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_auth_hook_done(ngx_http_request_t *r, void *data,
                                             ngx_int_t rc) noexcept {
    auto *ctx = static_cast<ngx_http_sse_auth_ctx_t *>(data);
    ctx->hook_done = 1;
    ctx->hook_status = r->headers_out.status;
    if (ctx->hook_status == 0) {
        // Finalized before any header (e.g. an error inside nginx).
        ctx->hook_status = rc >= NGX_HTTP_SPECIAL_RESPONSE
                               ? (ngx_uint_t)rc
                               : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return rc;
}

// Starts the sse_subscribe_request subrequest (NGX_AGAIN), or judges its
// answer once done: 2xx lets the subscriber in, anything else refuses it
// with that status.
static ngx_int_t ngx_http_sse_auth_hook(ngx_http_request_t *r,
                                        ngx_http_sse_loc_conf_t *lcf,
                                        ngx_http_sse_auth_ctx_t *ctx) {
    if (ctx->hook == NULL) {
        auto *ps = static_cast<ngx_http_post_subrequest_t *>(
            ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t)));
        if (ps == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ps->handler = ngx_http_sse_auth_hook_done;
        ps->data = ctx;
        ngx_http_request_t *sr;
        if (ngx_http_subrequest(r, &lcf->subscribe_request, NULL, &sr, ps,
                                NGX_HTTP_SUBREQUEST_WAITED) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        // As auth_request does: a fake body, so that nothing reads or
        // closes the client's, and no response body is wanted.
        sr->request_body = static_cast<ngx_http_request_body_t *>(
            ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t)));
        if (sr->request_body == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        sr->header_only = 1;
        ctx->hook = sr;
        return NGX_AGAIN;
    }
    if (!ctx->hook_done) {
        return NGX_AGAIN;
    }
    ngx_uint_t st = ctx->hook_status;
    if (st >= NGX_HTTP_OK && st < NGX_HTTP_SPECIAL_RESPONSE) {
        return NGX_OK;
    }
    if (st < NGX_HTTP_BAD_REQUEST || st > 599) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sse: sse_subscribe_request answered %ui", st);
        st = NGX_HTTP_BAD_GATEWAY;
    }
    ngx_table_elt_t *wa = ctx->hook->headers_out.www_authenticate;
    if (wa == NULL && ctx->hook->upstream != NULL) {
        wa = ctx->hook->upstream->headers_in.www_authenticate;
    }
    if (st == NGX_HTTP_UNAUTHORIZED && wa != NULL) {
        char *v = ngx_http_sse_auth_cstr(
            r, {reinterpret_cast<char *>(wa->value.data), wa->value.len});
        if (v == NULL ||
            ngx_http_sse_add_header(r, "WWW-Authenticate", v) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    std::string why = "subscription refused by sse_subscribe_request (" +
                      std::to_string(ctx->hook_status) + ")";
    ngx_http_finalize_request(r, ngx_http_sse_error(r, st, why));
    return NGX_DONE;
}

static ngx_int_t ngx_http_sse_auth_check(ngx_http_request_t *r,
                                         ngx_http_sse_loc_conf_t *lcf) {
    bool jwt = lcf->auth_jwt == 1;
    // Only a GET joins a stream; HEAD answers headers only.
    bool hook = lcf->subscribe_request.len > 0 &&
                lcf->role == NGX_HTTP_SSE_SUBSCRIBE &&
                r->method == NGX_HTTP_GET;
    // The leave hook reads $sse_channels and $sse_jwt_sub too.
    bool leave = lcf->unsubscribe_request.len > 0 &&
                 lcf->role == NGX_HTTP_SSE_SUBSCRIBE &&
                 r->method == NGX_HTTP_GET;
    if (!jwt && !hook && !leave) {
        return NGX_DECLINED;
    }
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx_for(r, lcf);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!ctx->verified) {
        std::vector<std::string_view> ids;
        ngx_int_t answer;
        if (!ngx_http_sse_channels(r, lcf, ids, &answer)) {
            ngx_http_finalize_request(r, answer);
            return NGX_DONE;
        }
        for (std::string_view id : ids) {
            ctx->channels += ctx->channels.empty() ? "" : ",";
            ctx->channels += id;
        }
        if (jwt) {
            ngx_int_t rc = ngx_http_sse_auth_verify(r, lcf, ctx, ids);
            if (rc != NGX_OK) {
                return rc;
            }
        }
        ctx->verified = 1;
    }
    return hook ? ngx_http_sse_auth_hook(r, lcf, ctx) : NGX_OK;
}

static ngx_int_t ngx_http_sse_auth_handler(ngx_http_request_t *r) noexcept {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if ((lcf->role != NGX_HTTP_SSE_SUBSCRIBE &&
         lcf->role != NGX_HTTP_SSE_PUBLISH) ||
        r->method == NGX_HTTP_OPTIONS) {
        return NGX_DECLINED;
    }
    try {
        return ngx_http_sse_auth_check(r, lcf);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sse: out of memory in the access check");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

int64_t ngx_http_sse_auth_expires_at(ngx_http_request_t *r) noexcept {
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r);
    if (ctx == NULL || ctx->claims.exp == 0) {
        return 0;
    }
    // The token is accepted until exp + leeway; saturate far futures.
    int64_t end_s = ctx->claims.exp > INT64_MAX / 1000 - ctx->leeway
                        ? INT64_MAX / 1000
                        : ctx->claims.exp + ctx->leeway;
    return end_s * 1000;
}

const std::string *ngx_http_sse_auth_sub(ngx_http_request_t *r) noexcept {
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r->main);
    return ctx && !ctx->claims.sub.empty() ? &ctx->claims.sub : NULL;
}

// ---------------------------------------------------------------- variables

static ngx_int_t ngx_http_sse_auth_value(ngx_http_variable_value_t *v,
                                         const std::string *s) {
    if (s == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }
    v->data = (u_char *)s->data();
    v->len = s->size();
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_auth_sub_variable(ngx_http_request_t *r,
                                                ngx_http_variable_value_t *v,
                                                uintptr_t) noexcept {
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r->main);
    return ngx_http_sse_auth_value(
        v, ctx && !ctx->claims.sub.empty() ? &ctx->claims.sub : NULL);
}

static ngx_int_t ngx_http_sse_auth_channels_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t) noexcept {
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r->main);
    return ngx_http_sse_auth_value(
        v, ctx && !ctx->channels.empty() ? &ctx->channels : NULL);
}

static ngx_int_t ngx_http_sse_leave_reason_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t) noexcept {
    const char *why = ngx_http_sse_leave_reason(r);
    if (why == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }
    v->data = (u_char *)why;
    v->len = ngx_strlen(why);
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_auth_claim_variable(ngx_http_request_t *r,
                                                  ngx_http_variable_value_t *v,
                                                  uintptr_t data) noexcept {
    auto *name = reinterpret_cast<ngx_str_t *>(data);
    ngx_http_sse_auth_ctx_t *ctx = ngx_http_sse_auth_ctx(r->main);
    static const size_t prefix = sizeof("sse_jwt_claim_") - 1;
    if (ctx == NULL || name->len <= prefix) {
        return ngx_http_sse_auth_value(v, NULL);
    }
    return ngx_http_sse_auth_value(
        v, ctx->claims.claim({reinterpret_cast<char *>(name->data) + prefix,
                              name->len - prefix}));
}

ngx_int_t ngx_http_sse_auth_init(ngx_conf_t *cf) {
    static ngx_str_t sub = ngx_string("sse_jwt_sub");
    static ngx_str_t claim = ngx_string("sse_jwt_claim_");
    static ngx_str_t channels = ngx_string("sse_channels");
    ngx_http_variable_t *var =
        ngx_http_add_variable(cf, &sub, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }
    var->get_handler = ngx_http_sse_auth_sub_variable;
    var = ngx_http_add_variable(cf, &claim,
                                NGX_HTTP_VAR_NOCACHEABLE | NGX_HTTP_VAR_PREFIX);
    if (var == NULL) {
        return NGX_ERROR;
    }
    var->get_handler = ngx_http_sse_auth_claim_variable;
    var = ngx_http_add_variable(cf, &channels, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }
    var->get_handler = ngx_http_sse_auth_channels_variable;
    static ngx_str_t leave = ngx_string("sse_leave_reason");
    var = ngx_http_add_variable(cf, &leave, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }
    var->get_handler = ngx_http_sse_leave_reason_variable;

    auto *cmcf = static_cast<ngx_http_core_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    auto *h = static_cast<ngx_http_handler_pt *>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers));
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_sse_auth_handler;
    return NGX_OK;
}
