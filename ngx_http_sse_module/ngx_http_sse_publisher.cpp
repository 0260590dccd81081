// sse_publish: backends publish, read, and delete channels.
#include "ngx_http_sse.hpp"

#define NGX_HTTP_SSE_PUBLISH_ALLOW "GET, HEAD, POST, PUT, DELETE, OPTIONS"

// Per publish request, in r->pool.
struct ngx_http_sse_publish_ctx_t {
    ngx_str_t channel;
    ngx_str_t event;
};

static ngx_int_t ngx_http_sse_publish(ngx_http_request_t *r);
static void ngx_http_sse_publish_body(ngx_http_request_t *r);

ngx_int_t ngx_http_sse_publish_handler(ngx_http_request_t *r) {
    try {
        return ngx_http_sse_publish(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s",
                      e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

static std::string ngx_http_sse_id_json(sse::zone_root *root, uint64_t seq) {
    if (seq == 0) {
        return "null";
    }
    char id[sse::max_event_id_len];
    size_t n = sse::format_event_id(id, {root->epoch, seq});
    return '"' + std::string(id, n) + '"';
}

static ngx_int_t ngx_http_sse_channel_info(ngx_http_request_t *r,
                                           ngx_http_sse_zone_t *z,
                                           std::string_view id) {
    std::string json;
    {
        sse::store st = ngx_http_sse_store(z);
        ngx_http_sse_locked lock(z);
        sse::channel *ch = st.find(id);
        if (ch != NULL) {
            st.expire(ch, ngx_current_msec);
            json = "{\"channel\":";
            ngx_http_sse_json_string(json, id);
            json += ",\"messages\":" + std::to_string(ch->count) +
                    ",\"subscribers\":" +
                    std::to_string(sse::store::subscribers(ch)) +
                    ",\"published\":" + std::to_string(ch->published) +
                    ",\"first_id\":" +
                    ngx_http_sse_id_json(z->root,
                                         ch->count ? ch->at(0)->seq : 0) +
                    ",\"last_id\":" +
                    ngx_http_sse_id_json(z->root, ch->last_seq) + "}\n";
        }
    }
    if (json.empty()) {
        return ngx_http_sse_error(r, NGX_HTTP_NOT_FOUND, "no such channel");
    }
    return ngx_http_sse_send_text(r, NGX_HTTP_OK, "application/json", json);
}

static ngx_int_t ngx_http_sse_channel_delete(ngx_http_request_t *r,
                                             ngx_http_sse_zone_t *z,
                                             std::string_view id) {
    std::string json;
    {
        sse::store st = ngx_http_sse_store(z);
        ngx_http_sse_locked lock(z);
        sse::channel *ch = st.find(id);
        if (ch != NULL) {
            json = "{\"channel\":";
            ngx_http_sse_json_string(json, id);
            json += ",\"deleted\":true,\"subscribers\":" +
                    std::to_string(sse::store::subscribers(ch)) + "}\n";
            st.remove(ch, ngx_current_msec);
        }
    }
    if (json.empty()) {
        return ngx_http_sse_error(r, NGX_HTTP_NOT_FOUND, "no such channel");
    }
    // Every worker ends the channel's streams.
    ngx_http_sse_notify(z);
    return ngx_http_sse_send_text(r, NGX_HTTP_OK, "application/json", json);
}

static ngx_int_t ngx_http_sse_publish(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_sse_options(r, NGX_HTTP_SSE_PUBLISH_ALLOW);
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_POST |
                       NGX_HTTP_PUT | NGX_HTTP_DELETE))) {
        return ngx_http_sse_not_allowed(r, NGX_HTTP_SSE_PUBLISH_ALLOW,
                                        "method not allowed here");
    }

    std::vector<std::string_view> ids;
    ngx_int_t rc = ngx_http_sse_channels(r, lcf, ids);
    if (rc != NGX_OK) {
        return rc;
    }
    if (ids.size() != 1) {
        return ngx_http_sse_error(r, NGX_HTTP_BAD_REQUEST,
                                  "invalid channel: publish to one channel "
                                  "at a time");
    }
    ngx_http_sse_zone_t *z = ngx_http_sse_loc_zone(r, lcf);

    if (r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)) {
        return ngx_http_sse_channel_info(r, z, ids[0]);
    }
    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_sse_channel_delete(r, z, ids[0]);
    }

    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_pcalloc(r->pool, sizeof(ngx_http_sse_publish_ctx_t)));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->channel.data = (u_char *) ids[0].data();
    ctx->channel.len = ids[0].size();

    // The event type: SSE-Event header, else the event argument.
    if (ngx_http_sse_header(r, "SSE-Event", &ctx->event) != NGX_OK) {
        ngx_str_t arg;
        if (ngx_http_arg(r, (u_char *) "event", 5, &arg) == NGX_OK) {
            u_char *dst = static_cast<u_char *>(ngx_pnalloc(r->pool,
                                                            arg.len + 1));
            if (dst == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }
            ctx->event.data = dst;
            u_char *src = arg.data;
            ngx_unescape_uri(&dst, &src, arg.len, 0);
            ctx->event.len = dst - ctx->event.data;
        }
    }
    if (!sse::valid_event_name(
            {reinterpret_cast<char *>(ctx->event.data), ctx->event.len})) {
        return ngx_http_sse_error(r, NGX_HTTP_BAD_REQUEST,
                                  "invalid event name: it may not contain "
                                  "CR, LF or NUL, nor exceed 255 bytes");
    }
    if (r->headers_in.content_length_n > (off_t) lcf->max_message_size) {
        return ngx_http_sse_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                  "message larger than sse_max_message_size");
    }
    ngx_http_set_ctx(r, ctx, ngx_http_sse_module);

    rc = ngx_http_read_client_request_body(r, ngx_http_sse_publish_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }
    return NGX_DONE;
}

// Copies the body out of its buffers, memory or temp file alike.
static ngx_int_t ngx_http_sse_body(ngx_http_request_t *r, size_t max,
                                   std::string &out) {
    if (r->request_body == NULL) {
        return NGX_OK;
    }
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        size_t n = ngx_buf_size(b);
        if (out.size() + n > max) {
            return NGX_DECLINED;
        }
        if (b->in_file) {
            size_t at = out.size();
            out.resize(at + n);
            ssize_t got = ngx_read_file(
                b->file, reinterpret_cast<u_char *>(&out[at]), n,
                b->file_pos);
            if (got != (ssize_t) n) {
                return NGX_ERROR;
            }
        } else {
            out.append(reinterpret_cast<char *>(b->pos), n);
        }
    }
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_publish_now(ngx_http_request_t *r) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_sse_module));
    auto *ctx = static_cast<ngx_http_sse_publish_ctx_t *>(
        ngx_http_get_module_ctx(r, ngx_http_sse_module));
    ngx_http_sse_zone_t *z = ngx_http_sse_loc_zone(r, lcf);

    std::string data;
    ngx_int_t rc = ngx_http_sse_body(r, lcf->max_message_size, data);
    if (rc == NGX_DECLINED) {
        return ngx_http_sse_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                  "message larger than sse_max_message_size");
    }
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    std::string_view id(reinterpret_cast<char *>(ctx->channel.data),
                        ctx->channel.len);
    sse::publish_result res{sse::publish_status::no_memory, 0};
    uint32_t subscribers = 0;
    {
        sse::store st = ngx_http_sse_store(z);
        ngx_msec_t now = ngx_current_msec;
        ngx_http_sse_locked lock(z);
        sse::channel *ch = st.find_or_create(id, now);
        if (ch != NULL) {
            res = st.publish(
                ch, {reinterpret_cast<char *>(ctx->event.data), ctx->event.len},
                data, now, lcf->buffer_length, lcf->message_ttl);
            subscribers = sse::store::subscribers(ch);
        }
    }
    if (res.status != sse::publish_status::ok) {
        return ngx_http_sse_error(r, NGX_HTTP_INSUFFICIENT_STORAGE,
                                  "message does not fit in the sse zone");
    }
    ngx_http_sse_notify(z);

    std::string json = "{\"channel\":";
    ngx_http_sse_json_string(json, id);
    json += ",\"id\":" + ngx_http_sse_id_json(z->root, res.seq) +
            ",\"subscribers\":" + std::to_string(subscribers) + "}\n";
    return ngx_http_sse_send_text(r, NGX_HTTP_ACCEPTED, "application/json",
                                  json);
}

static void ngx_http_sse_publish_body(ngx_http_request_t *r) {
    ngx_int_t rc;
    try {
        rc = ngx_http_sse_publish_now(r);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s",
                      e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
}
