// sse_status: the zones' figures as JSON, or Prometheus text with
// ?format=prometheus.
#include "ngx_http_sse.hpp"
#include "ngx_http_sse_version.hpp"

struct ngx_http_sse_zone_figures_t {
    std::string name;
    uint64_t epoch;
    uint64_t seq;
    uint64_t channels;
    uint64_t subscribers;  // channel subscriptions: a stream on 3 counts 3
    uint64_t messages;     // held for resume
    uint64_t retained;     // out of their rings, kept for workers to copy
    uint64_t message_bytes;
    sse::zone_stats stats;
    uint64_t bytes_total;
    uint64_t bytes_free;
    std::vector<std::pair<int32_t, uint64_t>> workers;  // pid, subscribers
    bool checked;
    std::string check;  // "" when the zone is consistent
    ngx_http_sse_redis_figures_t redis;
    std::string redis_counts;  // JSON; "" for a shared-memory zone
    ngx_http_sse_redis_count_figures_t counts;
};

static ngx_http_sse_zone_figures_t ngx_http_sse_figures(ngx_http_sse_zone_t *z,
                                                        bool check) {
    ngx_http_sse_zone_figures_t f{};
    f.name.assign(reinterpret_cast<char *>(z->shm_zone->shm.name.data),
                  z->shm_zone->shm.name.len);
    f.bytes_total = z->shm_zone->shm.size;
    ngx_http_sse_redis_figures(z, &f.redis);
    f.redis_counts = ngx_http_sse_redis_count_json(z);
    ngx_http_sse_redis_count_figures(z, &f.counts);
    auto s = ngx_http_sse_session(z);
    sse::store::figures zf = s->get_figures();
    f.epoch = s->epoch();
    f.seq = s->seq();
    f.channels = zf.channels;
    f.messages = zf.messages;
    f.retained = zf.retained;
    f.message_bytes = zf.message_bytes;
    f.stats = zf.stats;
    f.subscribers = zf.subscribers;
    f.workers = std::move(zf.workers);
    f.bytes_free = z->arena->bytes_free();
    if (check) {
        // Test and debugging aid: walks the whole zone under the lock.
        f.checked = true;
        f.check = s->check();
    }
    return f;
}

static std::string ngx_http_sse_status_json(
    const std::vector<ngx_http_sse_zone_figures_t> &zones) {
    std::string j = "{\"version\":\"" NGX_HTTP_SSE_VERSION "\",\"zones\":[";
    for (size_t i = 0; i < zones.size(); i++) {
        const auto &f = zones[i];
        auto num = [&j](const char *k, uint64_t v) {
            j += ",\"";
            j += k;
            j += "\":" + std::to_string(v);
        };
        j += i ? ",{\"name\":" : "{\"name\":";
        ngx_http_sse_json_string(j, f.name);
        j += f.redis.redis ? ",\"engine\":\"redis\"" : ",\"engine\":\"shm\"";
        j += ",\"epoch\":\"" + std::to_string(f.epoch) + "\"";
        j += ",\"last_id\":\"" + std::to_string(f.epoch) + "-" +
             std::to_string(f.seq) + "\"";
        num("channels", f.channels);
        num("subscribers", f.subscribers);
        num("messages", f.messages);
        num("retained", f.retained);
        num("message_bytes", f.message_bytes);
        num("published", f.stats.published);
        num("delivered", f.stats.delivered);
        num("slow_dropped", f.stats.slow_dropped);
        num("batched_writes", f.stats.batched_writes);
        num("evicted", f.stats.evicted);
        num("lost", f.stats.lost);
        num("refused", f.stats.refused);
        num("repairs", f.stats.repairs);
        if (f.checked) {
            j += ",\"check\":";
            ngx_http_sse_json_string(j, f.check.empty() ? "ok" : f.check);
        }
        if (f.redis.redis) {
            j += ",\"redis\":{\"url\":";
            ngx_http_sse_json_string(j, f.redis.url);
            j += ",\"state\":\"" + f.redis.state + "\",\"last_error\":";
            ngx_http_sse_json_string(j, f.redis.last_error);
            j += ",\"bus_pid\":" + std::to_string(f.redis.bus_pid) +
                 ",\"reconnects\":" + std::to_string(f.redis.reconnects) +
                 ",\"publishes\":" + std::to_string(f.redis.publishes) +
                 ",\"publish_errors\":" +
                 std::to_string(f.redis.publish_errors) +
                 ",\"publish_rtt_avg_us\":" +
                 std::to_string(f.redis.rtt_avg_us) +
                 ",\"publish_rtt_last_us\":" +
                 std::to_string(f.redis.rtt_last_us);
            if (f.redis.sentinels != 0) {
                j += ",\"sentinels\":" + std::to_string(f.redis.sentinels) +
                     ",\"sentinels_answered\":" +
                     std::to_string(f.redis.sentinels_answered) +
                     ",\"sentinel_confirmed_ago_ms\":" +
                     (f.redis.sentinel_confirmed_ago_ms < 0
                          ? std::string("null")
                          : std::to_string(f.redis.sentinel_confirmed_ago_ms));
            }
            j += "}";
        }
        if (!f.redis_counts.empty()) {
            j += ",\"redis_counts\":" + f.redis_counts;
        }
        num("bytes_total", f.bytes_total);
        num("bytes_used", f.bytes_total - f.bytes_free);
        num("bytes_free", f.bytes_free);
        j += ",\"workers\":[";
        for (size_t w = 0; w < f.workers.size(); w++) {
            j += w ? "," : "";
            j += "{\"pid\":" + std::to_string(f.workers[w].first) +
                 ",\"subscribers\":" + std::to_string(f.workers[w].second) +
                 "}";
        }
        j += "]}";
    }
    return j + "]}\n";
}

static std::string ngx_http_sse_status_prometheus(
    const std::vector<ngx_http_sse_zone_figures_t> &zones) {
    std::string t =
        "# HELP sse_build_info The module's version.\n"
        "# TYPE sse_build_info gauge\n"
        "sse_build_info{version=\"" NGX_HTTP_SSE_VERSION "\"} 1\n";
    using fig = ngx_http_sse_zone_figures_t;
    // One family: its HELP and TYPE, then a line for each zone `when` holds.
    auto family = [&](const char *name, const char *type, const char *help,
                      auto when, auto value) {
        t += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name +
             " " + type + "\n";
        for (const auto &f : zones) {
            if (when(f)) {
                t += std::string(name) + "{zone=\"" + f.name + "\"} " +
                     std::to_string(value(f)) + "\n";
            }
        }
    };
    auto every = [](const fig &) { return true; };
    auto metric = [&](const char *name, const char *type, const char *help,
                      auto value) { family(name, type, help, every, value); };
    metric("sse_channels", "gauge", "Channels in the zone.",
           [](const fig &f) { return f.channels; });
    metric("sse_subscribers", "gauge",
           "Channel subscriptions (a stream on three channels counts three).",
           [](const fig &f) { return f.subscribers; });
    metric("sse_messages", "gauge", "Events buffered for resume.",
           [](const fig &f) { return f.messages; });
    metric("sse_retained_messages", "gauge",
           "Events out of their rings, kept until every worker copied them.",
           [](const fig &f) { return f.retained; });
    metric("sse_message_bytes", "gauge", "Bytes of events buffered.",
           [](const fig &f) { return f.message_bytes; });
    metric("sse_published_total", "counter", "Events published.",
           [](const fig &f) { return f.stats.published; });
    metric("sse_delivered_total", "counter", "Events handed to subscribers.",
           [](const fig &f) { return f.stats.delivered; });
    metric("sse_slow_dropped_total", "counter",
           "Subscribers disconnected for owing over sse_max_pending.",
           [](const fig &f) { return f.stats.slow_dropped; });
    metric("sse_batched_writes_total", "counter",
           "Stream writes sent in io_uring batches (sse_io_uring).",
           [](const fig &f) { return f.stats.batched_writes; });
    metric("sse_evicted_total", "counter",
           "Events evicted early because the zone was full.",
           [](const fig &f) { return f.stats.evicted; });
    metric("sse_lost_total", "counter",
           "Events freed for memory before every subscribed worker read "
           "them (their subscribers resumed).",
           [](const fig &f) { return f.stats.lost; });
    metric("sse_refused_total", "counter",
           "Subscriptions refused because the zone was full.",
           [](const fig &f) { return f.stats.refused; });
    metric("sse_repairs_total", "counter",
           "Zone repairs after a process died holding its lock.",
           [](const fig &f) { return f.stats.repairs; });
    metric("sse_zone_bytes_used", "gauge", "Bytes of the zone in use.",
           [](const fig &f) { return f.bytes_total - f.bytes_free; });
    metric("sse_zone_bytes_free", "gauge", "Free bytes of the zone.",
           [](const fig &f) { return f.bytes_free; });
    t += "# HELP sse_engine The zone's engine (1 for the one it uses).\n"
         "# TYPE sse_engine gauge\n";
    for (const auto &f : zones) {
        t += "sse_engine{zone=\"" + f.name + "\",engine=\"" +
             (f.redis.redis ? "redis" : "shm") + "\"} 1\n";
    }
    t += "# HELP sse_redis_up The Redis bus of the zone is in sync (1) or "
         "not (0).\n# TYPE sse_redis_up gauge\n";
    for (const auto &f : zones) {
        if (f.redis.redis) {
            t += "sse_redis_up{zone=\"" + f.name + "\",state=\"" +
                 f.redis.state + "\"} " + (f.redis.state == "up" ? "1" : "0") +
                 "\n";
        }
    }
    auto redis = [](const fig &f) { return f.redis.redis; };
    auto redis_metric = [&](const char *name, const char *type,
                            const char *help, auto value) {
        family(name, type, help, redis, value);
    };
    redis_metric("sse_redis_reconnects_total", "counter",
                 "Times the Redis bus was lost or failed to connect.",
                 [](const fig &f) { return f.redis.reconnects; });
    redis_metric("sse_redis_publishes_total", "counter",
                 "Publishes Redis stored.",
                 [](const fig &f) { return f.redis.publishes; });
    redis_metric("sse_redis_publish_errors_total", "counter",
                 "Publishes refused with 503 (Redis failed or unreachable).",
                 [](const fig &f) { return f.redis.publish_errors; });
    redis_metric("sse_redis_publish_rtt_avg_seconds", "gauge",
                 "Mean round trip of a publish to Redis.",
                 [](const fig &f) { return f.redis.rtt_avg_us / 1e6; });
    // Subscriber counts across machines (only once the zone has them).
    auto counts = [](const fig &f) { return f.counts.on; };
    family("sse_redis_count_pushes_total", "counter",
           "Pushes of this machine's subscriber counts to Redis.", counts,
           [](const fig &f) { return f.counts.pushes; });
    family("sse_redis_count_push_errors_total", "counter",
           "Pushes of subscriber counts that failed (retried).", counts,
           [](const fig &f) { return f.counts.push_errors; });
    family("sse_redis_count_pending", "gauge",
           "Channels whose count changed and is not in Redis yet.", counts,
           [](const fig &f) { return f.counts.pending; });
    family(
        "sse_redis_count_push_age_seconds", "gauge",
        "Time since the counts were last pushed to Redis.",
        [](const fig &f) {
            return f.counts.on && f.counts.last_push_ms_ago >= 0;
        },
        [](const fig &f) { return f.counts.last_push_ms_ago / 1e3; });
    auto sentinel_metric = [&](const char *name, const char *help, auto value) {
        family(
            name, "gauge", help,
            [&](const fig &f) {
                return f.redis.sentinels != 0 && value(f) >= 0;
            },
            value);
    };
    sentinel_metric(
        "sse_redis_sentinels_answered",
        "Sentinels that answered the last check.",
        [](const fig &f) { return (double)f.redis.sentinels_answered; });
    sentinel_metric(
        "sse_redis_sentinel_confirmed_age_seconds",
        "Time since a sentinel last named the primary in use.",
        [](const fig &f) { return f.redis.sentinel_confirmed_ago_ms / 1e3; });
    t += "# HELP sse_worker_subscribers Channel subscriptions per worker.\n"
         "# TYPE sse_worker_subscribers gauge\n";
    for (const auto &f : zones) {
        for (const auto &[pid, n] : f.workers) {
            t += "sse_worker_subscribers{zone=\"" + f.name + "\",pid=\"" +
                 std::to_string(pid) + "\"} " + std::to_string(n) + "\n";
        }
    }
    return t;
}

ngx_int_t ngx_http_sse_status_handler(ngx_http_request_t *r) {
    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_sse_options(r, "GET, HEAD, OPTIONS", "");
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return ngx_http_sse_not_allowed(r, "GET, HEAD, OPTIONS",
                                        "sse_status answers GET");
    }
    try {
        auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
            ngx_http_get_module_main_conf(r, ngx_http_sse_module));
        std::vector<ngx_http_sse_zone_figures_t> zones;
        auto **z = static_cast<ngx_http_sse_zone_t **>(mcf->zones.elts);
        ngx_str_t check;
        bool checking = ngx_http_arg(r, (u_char *)"check", 5, &check) == NGX_OK;
        for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
            zones.push_back(ngx_http_sse_figures(z[i], checking));
        }
        ngx_str_t format;
        if (ngx_http_arg(r, (u_char *)"format", 6, &format) == NGX_OK &&
            format.len == 10 &&
            ngx_strncmp(format.data, "prometheus", 10) == 0) {
            return ngx_http_sse_send_text(
                r, NGX_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                ngx_http_sse_status_prometheus(zones));
        }
        return ngx_http_sse_send_text(r, NGX_HTTP_OK, "application/json",
                                      ngx_http_sse_status_json(zones));
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
