// Small HTTP helpers shared by the subscriber and publisher handlers.
#include "ngx_http_sse.hpp"

ngx_int_t ngx_http_sse_add_header(ngx_http_request_t *r, const char *key,
                                  const char *value) {
    auto *h =
        static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.data = (u_char *)key;
    h->key.len = ngx_strlen(key);
    h->value.data = (u_char *)value;
    h->value.len = ngx_strlen(value);
    return NGX_OK;
}

ngx_int_t ngx_http_sse_send_text(ngx_http_request_t *r, ngx_uint_t status,
                                 const char *type, std::string_view body) {
    // A publisher's unread body must not be taken for the next request.
    if (r->request_body == NULL && ngx_http_discard_request_body(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (ngx_http_sse_cors(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.status = status;
    r->headers_out.content_type.data = (u_char *)type;
    r->headers_out.content_type.len = ngx_strlen(type);
    const char *semi = ngx_strchr(type, ';');
    r->headers_out.content_type_len =
        semi ? (size_t)(semi - type) : r->headers_out.content_type.len;
    r->headers_out.content_length_n = body.size();
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only || body.empty()) {
        return rc == NGX_OK && !r->header_only
                   ? ngx_http_send_special(r, NGX_HTTP_LAST)
                   : rc;
    }
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size());
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->last = ngx_cpymem(b->last, body.data(), body.size());
    b->last_buf = r == r->main;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, NULL};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t ngx_http_sse_error(ngx_http_request_t *r, ngx_uint_t status,
                             std::string_view reason) {
    std::string body(reason);
    body += '\n';
    return ngx_http_sse_send_text(r, status, "text/plain; charset=utf-8", body);
}

ngx_int_t ngx_http_sse_not_allowed(ngx_http_request_t *r, const char *allow,
                                   std::string_view reason) {
    if (ngx_http_sse_add_header(r, "Allow", allow) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_sse_error(r, NGX_HTTP_NOT_ALLOWED, reason);
}

ngx_int_t ngx_http_sse_cors(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if (lcf->allow_origin == NULL) {
        return NGX_OK;
    }
    ngx_str_t origin;
    if (ngx_http_complex_value(r, lcf->allow_origin, &origin) != NGX_OK) {
        return NGX_ERROR;
    }
    if (origin.len == 0) {
        return NGX_OK;
    }
    // Header values are NUL-terminated copies for ngx_http_sse_add_header.
    auto *v = static_cast<char *>(ngx_pnalloc(r->pool, origin.len + 1));
    if (v == NULL) {
        return NGX_ERROR;
    }
    ngx_memcpy(v, origin.data, origin.len);
    v[origin.len] = '\0';
    if (ngx_http_sse_add_header(r, "Access-Control-Allow-Origin", v) !=
        NGX_OK) {
        return NGX_ERROR;
    }
    // A computed origin (e.g. $http_origin) varies with the request.
    if (lcf->allow_origin->lengths != NULL &&
        ngx_http_sse_add_header(r, "Vary", "Origin") != NGX_OK) {
        return NGX_ERROR;
    }
    if (lcf->allow_credentials &&
        ngx_http_sse_add_header(r, "Access-Control-Allow-Credentials",
                                "true") != NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

ngx_int_t ngx_http_sse_options(ngx_http_request_t *r, const char *allow,
                               const char *allow_headers) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    if (ngx_http_sse_add_header(r, "Allow", allow) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (lcf->allow_origin != NULL &&
        (ngx_http_sse_add_header(r, "Access-Control-Allow-Methods", allow) !=
             NGX_OK ||
         ngx_http_sse_add_header(r, "Access-Control-Allow-Headers",
                                 allow_headers) != NGX_OK ||
         ngx_http_sse_add_header(r, "Access-Control-Max-Age", "86400") !=
             NGX_OK)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_sse_send_text(r, NGX_HTTP_NO_CONTENT, "text/plain", "");
}

bool ngx_http_sse_channels(ngx_http_request_t *r, ngx_http_sse_loc_conf_t *lcf,
                           std::vector<std::string_view> &ids,
                           ngx_int_t *answer) {
    // Each value is used as nginx gives it: decoding or splitting only
    // where the location asks (sse_channel ... split=SEP unescape), so
    // what auth_request and other modules saw is the id used.
    auto *cv = static_cast<ngx_http_complex_value_t *>(lcf->channels->elts);
    std::vector<std::string_view> values;
    for (ngx_uint_t i = 0; i < lcf->channels->nelts; i++) {
        ngx_str_t v;
        if (ngx_http_complex_value(r, &cv[i], &v) != NGX_OK) {
            *answer = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }
        values.emplace_back(reinterpret_cast<char *>(v.data), v.len);
    }
    std::vector<std::string> parsed;
    sse::channels_error e =
        sse::parse_channels(values, lcf->channel_rule, parsed);
    if (e != sse::channels_error::none) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sse: invalid channel: %s", sse::describe(e));
        std::string why = "invalid channel: ";
        why += sse::describe(e);
        *answer = ngx_http_sse_error(r, NGX_HTTP_BAD_REQUEST, why);
        return false;
    }
    ids.clear();
    for (const std::string &id : parsed) {
        auto *p = static_cast<char *>(ngx_pnalloc(r->pool, id.size()));
        if (p == NULL) {
            *answer = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }
        ngx_memcpy(p, id.data(), id.size());
        ids.emplace_back(p, id.size());
    }
    return true;
}

ngx_int_t ngx_http_sse_header(ngx_http_request_t *r, std::string_view name,
                              ngx_str_t *value) {
    ngx_list_part_t *part = &r->headers_in.headers.part;
    auto *h = static_cast<ngx_table_elt_t *>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_DECLINED;
            }
            part = part->next;
            h = static_cast<ngx_table_elt_t *>(part->elts);
            i = 0;
        }
        if (h[i].key.len == name.size() &&
            ngx_strncasecmp(h[i].key.data, (u_char *)name.data(),
                            name.size()) == 0) {
            *value = h[i].value;
            return NGX_OK;
        }
    }
}

// Length of the valid UTF-8 sequence at p (at most n bytes), or 0.
static size_t ngx_http_sse_utf8_len(const unsigned char *p, size_t n) {
    size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 ? 2 : 0;
    if (len == 0 || len > n || p[0] > 0xf4) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
    }
    // Overlong forms, surrogates and code points past U+10FFFF.
    if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f) ||
        (p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] > 0x8f)) {
        return 0;
    }
    return len;
}

void ngx_http_sse_json_string(std::string &out, std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    auto *p = reinterpret_cast<const unsigned char *>(s.data());
    size_t n = s.size();
    out += '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
            continue;
        }
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
            continue;
        }
        size_t len = c >= 0x80 ? ngx_http_sse_utf8_len(p + i, n - i) : 0;
        if (len > 0) {
            out.append(reinterpret_cast<const char *>(p + i), len);
            i += len - 1;
            continue;
        }
        // Controls, DEL and bytes that are not UTF-8: the JSON stays valid.
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 15];
    }
    out += '"';
}

ngx_int_t ngx_http_sse_unescape(ngx_http_request_t *r, ngx_str_t *v) {
    if (ngx_strlchr(v->data, v->data + v->len, '%') == NULL) {
        return NGX_OK;
    }
    u_char *dst = static_cast<u_char *>(ngx_pnalloc(r->pool, v->len));
    if (dst == NULL) {
        return NGX_ERROR;
    }
    u_char *src = v->data;
    v->data = dst;
    ngx_unescape_uri(&dst, &src, v->len, 0);
    v->len = dst - v->data;
    return NGX_OK;
}
