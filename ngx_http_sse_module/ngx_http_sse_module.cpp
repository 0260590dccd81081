// Directives, configuration and the module's process hooks.
#include "ngx_http_sse.hpp"
#include "ngx_http_sse_version.hpp"

// Bounds of a size or time, checked after nginx's own slot parsed it (as
// ngx_conf_num_bounds_t is for numbers); `what` ends the error message.
struct ngx_http_sse_bounds_t {
    ngx_conf_post_handler_pt post_handler;
    ngx_uint_t low;
    ngx_uint_t high;
    const char *what;
};

// A "zone=NAME" of sse_subscribe/sse_publish, and where it was written:
// the zone may be declared later in the http block, so it is checked at
// postconfiguration, where nginx alone would only say "zero size".
struct ngx_http_sse_zone_use_t {
    ngx_shm_zone_t *zone;
    ngx_str_t directive;
    ngx_str_t file;
    ngx_uint_t line;
};

static char *ngx_http_sse_role(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_http_handler_pt ngx_http_sse_role_handler(ngx_uint_t role);
static char *ngx_http_sse_channel(ngx_conf_t *cf, ngx_command_t *cmd,
                                  void *conf);
static char *ngx_http_sse_set_msec_off(ngx_conf_t *cf, ngx_command_t *cmd,
                                       void *conf);
static char *ngx_http_sse_check_size(ngx_conf_t *cf, void *post, void *data);
static char *ngx_http_sse_check_msec(ngx_conf_t *cf, void *post, void *data);
static ngx_int_t ngx_http_sse_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_sse_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_sse_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_sse_merge_loc_conf(ngx_conf_t *cf, void *parent,
                                         void *child);
static ngx_int_t ngx_http_sse_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_sse_init_process(ngx_cycle_t *cycle);
static void ngx_http_sse_exit_process(ngx_cycle_t *cycle);

static ngx_conf_num_bounds_t ngx_http_sse_buffer_bounds = {
    ngx_conf_check_num_bounds, 1, 1000000};
static ngx_conf_num_bounds_t ngx_http_sse_count_bounds = {
    ngx_conf_check_num_bounds, 0, 1000000};
static ngx_conf_num_bounds_t ngx_http_sse_subs_bounds = {
    ngx_conf_check_num_bounds, 0, 100000000};
static ngx_http_sse_bounds_t ngx_http_sse_message_bounds = {
    ngx_http_sse_check_size, 1, 256 << 20, "a size from 1 to 268435456 bytes"};
static ngx_http_sse_bounds_t ngx_http_sse_pending_bounds = {
    ngx_http_sse_check_size, 1024, NGX_MAX_INT32_VALUE,
    "a size from 1024 to 2147483647 bytes"};
static ngx_http_sse_bounds_t ngx_http_sse_ttl_bounds = {
    ngx_http_sse_check_msec, 1, NGX_MAX_INT_T_VALUE, "a positive time"};
static ngx_http_sse_bounds_t ngx_http_sse_wait_bounds = {
    ngx_http_sse_check_msec, 1, 60000, "a time from 1ms to 60s or \"off\""};
static ngx_http_sse_bounds_t ngx_http_sse_timer_bounds = {
    ngx_http_sse_check_msec, 1, NGX_MAX_INT_T_VALUE,
    "a positive time or \"off\""};
// A bare sse_retry number is milliseconds, the unit of SSE's "retry:".
static ngx_http_sse_bounds_t ngx_http_sse_retry_bounds = {
    ngx_http_sse_check_msec, 0, 86400000,
    "a time up to 24h (a bare number is milliseconds) or \"off\""};

static ngx_command_t ngx_http_sse_commands[] = {

    {ngx_string("sse_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE,
     ngx_http_sse_zone_directive, 0, 0, NULL},

    {ngx_string("sse_subscribe"),
     NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1, ngx_http_sse_role,
     NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_SSE_SUBSCRIBE, NULL},

    {ngx_string("sse_publish"),
     NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1, ngx_http_sse_role,
     NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_SSE_PUBLISH, NULL},

    {ngx_string("sse_channel"), NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     ngx_http_sse_channel, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sse_status"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS,
     ngx_http_sse_role, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_SSE_STATUS, NULL},

    {ngx_string("sse_allow_origin"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, allow_origin), NULL},

    {ngx_string("sse_allow_credentials"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, allow_credentials), NULL},

    {ngx_string("sse_buffer_length"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, buffer_length),
     &ngx_http_sse_buffer_bounds},

    {ngx_string("sse_message_ttl"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, message_ttl), &ngx_http_sse_ttl_bounds},

    {ngx_string("sse_heartbeat"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_set_msec_off, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, heartbeat), &ngx_http_sse_timer_bounds},

    {ngx_string("sse_retry"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_set_msec_off, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, retry), &ngx_http_sse_retry_bounds},

    {ngx_string("sse_last_event_id"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, last_event_id), NULL},

    {ngx_string("sse_initial_events"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, initial_events),
     &ngx_http_sse_count_bounds},

    {ngx_string("sse_max_message_size"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, max_message_size),
     &ngx_http_sse_message_bounds},

    {ngx_string("sse_max_subscribers"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, max_subscribers),
     &ngx_http_sse_subs_bounds},

    {ngx_string("sse_max_pending"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, max_pending),
     &ngx_http_sse_pending_bounds},

    {ngx_string("sse_publish_wait"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_set_msec_off, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, publish_wait),
     &ngx_http_sse_wait_bounds},

    {ngx_string("sse_stream_timeout"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_set_msec_off, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, stream_timeout),
     &ngx_http_sse_timer_bounds},

    {ngx_string("sse_auth_jwt"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE12,
     ngx_http_sse_auth_jwt, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sse_auth_jwt_key_file"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_auth_key_file, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sse_auth_jwt_leeway"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, auth_jwt_leeway), NULL},

    {ngx_string("sse_auth_jwt_require_aud"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, auth_jwt_aud), NULL},

    {ngx_string("sse_auth_jwt_require_iss"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, auth_jwt_iss), NULL},

    {ngx_string("sse_subscribe_request"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_hook_uri, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, subscribe_request), NULL},

    {ngx_string("sse_unsubscribe_request"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_hook_uri, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, unsubscribe_request), NULL},

    {ngx_string("sse_presence_channel"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF |
         NGX_CONF_TAKE1,
     ngx_http_sse_presence_channel, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sse_free_request"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sse_loc_conf_t, free_request), NULL},

    {ngx_string("sse_io_uring"), NGX_HTTP_MAIN_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_sse_main_conf_t, io_uring), NULL},

    ngx_null_command};

static ngx_http_module_t ngx_http_sse_module_ctx = {
    NULL,                            // preconfiguration
    ngx_http_sse_postconfiguration,  // postconfiguration
    ngx_http_sse_create_main_conf,   // create main configuration
    NULL,                            // init main configuration
    NULL,                            // create server configuration
    NULL,                            // merge server configuration
    ngx_http_sse_create_loc_conf,    // create location configuration
    ngx_http_sse_merge_loc_conf      // merge location configuration
};

ngx_module_t ngx_http_sse_module = {NGX_MODULE_V1,
                                    &ngx_http_sse_module_ctx,  // module context
                                    ngx_http_sse_commands,  // module directives
                                    NGX_HTTP_MODULE,        // module type
                                    NULL,                   // init master
                                    ngx_http_sse_init_module,   // init module
                                    ngx_http_sse_init_process,  // init process
                                    NULL,                       // init thread
                                    NULL,                       // exit thread
                                    ngx_http_sse_exit_process,  // exit process
                                    NULL,                       // exit master
                                    NGX_MODULE_V1_PADDING};

static char *ngx_http_sse_invalid(ngx_conf_t *cf, ngx_command_t *cmd,
                                  ngx_str_t *value, const char *why) {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, %s", value,
                       &cmd->name, why);
    return (char *)NGX_CONF_ERROR;
}

static char *ngx_http_sse_role(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(conf);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->role != NGX_HTTP_SSE_NONE) {
        return (char *)"is duplicate, or combined with another sse role";
    }
    lcf->role = cmd->offset;
    lcf->role_file = cf->conf_file->file.name;
    lcf->role_line = cf->conf_file->line;

    // One content handler per location: one set before us (proxy_pass,
    // fastcgi_pass, ...) is refused here, one set after us at merge.
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    if (clcf->handler != NULL) {
        return (char *)"cannot be combined with another content handler "
                       "(proxy_pass, fastcgi_pass, ...) in one location";
    }
    clcf->handler = ngx_http_sse_role_handler(lcf->role);
    if (lcf->role == NGX_HTTP_SSE_STATUS) {
        return NGX_CONF_OK;
    }

    if (cf->args->nelts == 2) {
        if (value[1].len <= 5 || ngx_strncmp(value[1].data, "zone=", 5) != 0) {
            return ngx_http_sse_invalid(cf, cmd, &value[1],
                                        "expected zone=NAME");
        }
        ngx_str_t name = {value[1].len - 5, value[1].data + 5};
        lcf->shm_zone = ngx_http_sse_zone_ref(cf, &name);
        if (lcf->shm_zone == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
            ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));
        auto *use = static_cast<ngx_http_sse_zone_use_t *>(
            ngx_array_push(&mcf->zone_uses));
        if (use == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        use->zone = lcf->shm_zone;
        use->directive = cmd->name;
        use->file = cf->conf_file->file.name;
        use->line = cf->conf_file->line;
    } else {
        auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
            ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));
        mcf->default_zone_needed = 1;
    }
    return NGX_CONF_OK;
}

static ngx_http_handler_pt ngx_http_sse_role_handler(ngx_uint_t role) {
    switch (role) {
        case NGX_HTTP_SSE_SUBSCRIBE:
            return ngx_http_sse_subscribe_handler;
        case NGX_HTTP_SSE_PUBLISH:
            return ngx_http_sse_publish_handler;
        case NGX_HTTP_SSE_STATUS:
            return ngx_http_sse_status_handler;
    }
    return NULL;
}

// "off", else nginx's msec slot. sse_retry also reads a bare number as
// milliseconds, where nginx reads seconds.
static char *ngx_http_sse_set_msec_off(ngx_conf_t *cf, ngx_command_t *cmd,
                                       void *conf) {
    auto *ms =
        reinterpret_cast<ngx_msec_t *>(static_cast<char *>(conf) + cmd->offset);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    bool off = ngx_strcmp(value[1].data, "off") == 0;
    ngx_int_t bare = cmd->post == &ngx_http_sse_retry_bounds
                         ? ngx_atoi(value[1].data, value[1].len)
                         : NGX_ERROR;
    if (!off && bare == NGX_ERROR) {
        return ngx_conf_set_msec_slot(cf, cmd, conf);
    }
    if (*ms != NGX_CONF_UNSET_MSEC) {
        return (char *)"is duplicate";
    }
    if (off) {
        *ms = NGX_HTTP_SSE_OFF;
        return NGX_CONF_OK;
    }
    *ms = (ngx_msec_t)bare;
    return ngx_http_sse_check_msec(cf, cmd->post, ms);
}

static char *ngx_http_sse_out_of_bounds(ngx_conf_t *cf,
                                        ngx_http_sse_bounds_t *bounds) {
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid value \"%V\" in \"%V\" directive, "
                       "it must be %s",
                       &value[1], &value[0], bounds->what);
    return (char *)NGX_CONF_ERROR;
}

static char *ngx_http_sse_check_size(ngx_conf_t *cf, void *post, void *data) {
    auto *bounds = static_cast<ngx_http_sse_bounds_t *>(post);
    size_t n = *static_cast<size_t *>(data);
    return n < bounds->low || n > bounds->high
               ? ngx_http_sse_out_of_bounds(cf, bounds)
               : NGX_CONF_OK;
}

static char *ngx_http_sse_check_msec(ngx_conf_t *cf, void *post, void *data) {
    auto *bounds = static_cast<ngx_http_sse_bounds_t *>(post);
    ngx_msec_t ms = *static_cast<ngx_msec_t *>(data);
    return ms < bounds->low || ms > bounds->high
               ? ngx_http_sse_out_of_bounds(cf, bounds)
               : NGX_CONF_OK;
}

// sse_channel VALUE... [split=SEP] [unescape]: after the first argument,
// "split=SEP" and "unescape" are options; every other argument is a value.
static char *ngx_http_sse_channel(ngx_conf_t *cf, ngx_command_t *cmd,
                                  void *conf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(conf);
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);

    if (lcf->channels != NULL) {
        return (char *)"is duplicate";
    }
    lcf->channels = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(ngx_http_complex_value_t));
    if (lcf->channels == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    ngx_array_t constants;  // of ngx_str_t: checked now, not per request
    if (ngx_array_init(&constants, cf->temp_pool, cf->args->nelts - 1,
                       sizeof(ngx_str_t)) != NGX_OK) {
        return (char *)NGX_CONF_ERROR;
    }
    bool split = false;
    bool unescape = false;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_str_t *v = &value[i];
        if (i > 1 && ngx_strncmp(v->data, "split=", 6) == 0) {
            if (split || v->len != 7) {
                return ngx_http_sse_invalid(
                    cf, cmd, v,
                    split ? "split= is duplicate"
                          : "the separator must be a single byte");
            }
            split = true;
            lcf->channel_rule.split = static_cast<char>(v->data[6]);
            continue;
        }
        if (i > 1 && ngx_strcmp(v->data, "unescape") == 0) {
            if (unescape) {
                return ngx_http_sse_invalid(cf, cmd, v, "it is duplicate");
            }
            unescape = true;
            lcf->channel_rule.unescape = true;
            continue;
        }
        if (v->len == 0) {
            return ngx_http_sse_invalid(cf, cmd, v, "it is empty");
        }
        auto *cv = static_cast<ngx_http_complex_value_t *>(
            ngx_array_push(lcf->channels));
        if (cv == NULL) {
            return (char *)NGX_CONF_ERROR;
        }
        ngx_http_compile_complex_value_t ccv;
        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = v;
        ccv.complex_value = cv;
        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return (char *)NGX_CONF_ERROR;
        }
        if (cv->lengths == NULL) {
            auto *c = static_cast<ngx_str_t *>(ngx_array_push(&constants));
            if (c == NULL) {
                return (char *)NGX_CONF_ERROR;
            }
            *c = *v;
        }
    }
    // Constant values are checked now, once the options are known (they
    // may come anywhere after the first value), one by one so that the
    // error names the value.
    auto *c = static_cast<ngx_str_t *>(constants.elts);
    try {
        std::vector<std::string_view> all;
        std::vector<std::string> ids;
        for (ngx_uint_t i = 0; i < constants.nelts; i++) {
            std::string_view one(reinterpret_cast<char *>(c[i].data), c[i].len);
            sse::channels_error e =
                sse::parse_channels({one}, lcf->channel_rule, ids);
            if (e != sse::channels_error::none) {
                return ngx_http_sse_invalid(cf, cmd, &c[i], sse::describe(e));
            }
            all.push_back(one);
        }
        if (sse::parse_channels(all, lcf->channel_rule, ids) !=
            sse::channels_error::none) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\" directive names more than %uz channels",
                               &cmd->name, sse::max_channels_per_subscriber);
            return (char *)NGX_CONF_ERROR;
        }
    } catch (...) {
        return (char *)NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static void *ngx_http_sse_create_main_conf(ngx_conf_t *cf) {
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_sse_main_conf_t)));
    if (mcf == NULL) {
        return NULL;
    }
    if (ngx_array_init(&mcf->zones, cf->pool, 2,
                       sizeof(ngx_http_sse_zone_t *)) != NGX_OK ||
        ngx_array_init(&mcf->zone_uses, cf->pool, 2,
                       sizeof(ngx_http_sse_zone_use_t)) != NGX_OK) {
        return NULL;
    }
    mcf->io_uring = NGX_CONF_UNSET;  // unset: on
    return mcf;
}

static void *ngx_http_sse_create_loc_conf(ngx_conf_t *cf) {
    auto *lcf = static_cast<ngx_http_sse_loc_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_sse_loc_conf_t)));
    if (lcf == NULL) {
        return NULL;
    }
    // pcalloc: role NONE, shm_zone, channel and last_event_id NULL.
    lcf->buffer_length = NGX_CONF_UNSET_UINT;
    lcf->message_ttl = NGX_CONF_UNSET_MSEC;
    lcf->heartbeat = NGX_CONF_UNSET_MSEC;
    lcf->retry = NGX_CONF_UNSET_MSEC;
    lcf->stream_timeout = NGX_CONF_UNSET_MSEC;
    lcf->publish_wait = NGX_CONF_UNSET_MSEC;
    lcf->initial_events = NGX_CONF_UNSET_UINT;
    lcf->max_message_size = NGX_CONF_UNSET_SIZE;
    lcf->max_pending = NGX_CONF_UNSET_SIZE;
    lcf->max_subscribers = NGX_CONF_UNSET_UINT;
    lcf->allow_credentials = NGX_CONF_UNSET;
    lcf->free_request = NGX_CONF_UNSET;
    ngx_http_sse_auth_create_conf(lcf);
    return lcf;
}

static char *ngx_http_sse_merge_loc_conf(ngx_conf_t *cf, void *parent,
                                         void *child) {
    auto *prev = static_cast<ngx_http_sse_loc_conf_t *>(parent);
    auto *conf = static_cast<ngx_http_sse_loc_conf_t *>(child);

    if (conf->last_event_id == NULL) {
        conf->last_event_id = prev->last_event_id;
    }
    if (conf->allow_origin == NULL) {
        conf->allow_origin = prev->allow_origin;
    }
    ngx_conf_merge_value(conf->allow_credentials, prev->allow_credentials, 0);
    ngx_conf_merge_uint_value(conf->buffer_length, prev->buffer_length, 100);
    ngx_conf_merge_msec_value(conf->message_ttl, prev->message_ttl,
                              3600 * 1000);
    ngx_conf_merge_msec_value(conf->heartbeat, prev->heartbeat, 15000);
    ngx_conf_merge_msec_value(conf->retry, prev->retry, NGX_HTTP_SSE_OFF);
    ngx_conf_merge_msec_value(conf->stream_timeout, prev->stream_timeout,
                              NGX_HTTP_SSE_OFF);
    ngx_conf_merge_msec_value(conf->publish_wait, prev->publish_wait, 100);
    ngx_conf_merge_uint_value(conf->initial_events, prev->initial_events, 0);
    ngx_conf_merge_size_value(conf->max_message_size, prev->max_message_size,
                              64 * 1024);
    ngx_conf_merge_size_value(conf->max_pending, prev->max_pending,
                              1024 * 1024);
    ngx_conf_merge_uint_value(conf->max_subscribers, prev->max_subscribers, 0);
    ngx_conf_merge_value(conf->free_request, prev->free_request, 1);

    if ((conf->role == NGX_HTTP_SSE_SUBSCRIBE ||
         conf->role == NGX_HTTP_SSE_PUBLISH) &&
        conf->channels == NULL) {
        ngx_conf_log_error(
            NGX_LOG_EMERG, cf, 0, "\"sse_channel\" is required where \"%s\" is",
            conf->role == NGX_HTTP_SSE_SUBSCRIBE ? "sse_subscribe"
                                                 : "sse_publish");
        return (char *)NGX_CONF_ERROR;
    }
    if (conf->role != NGX_HTTP_SSE_NONE) {
        // Merging a location: cf->ctx holds its own confs. A content
        // handler set after ours (proxy_pass, ...) replaced it.
        auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
            ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
        if (clcf->handler != ngx_http_sse_role_handler(conf->role)) {
            ngx_log_error(
                NGX_LOG_EMERG, cf->log, 0,
                "\"%s\" directive cannot be combined with another content "
                "handler (proxy_pass, fastcgi_pass, ...) in one location "
                "(\"%V\") in %V:%ui",
                conf->role == NGX_HTTP_SSE_SUBSCRIBE ? "sse_subscribe"
                : conf->role == NGX_HTTP_SSE_PUBLISH ? "sse_publish"
                                                     : "sse_status",
                &clcf->name, &conf->role_file, conf->role_line);
            return (char *)NGX_CONF_ERROR;
        }
    }
    if (conf->role != NGX_HTTP_SSE_NONE && conf->allow_credentials == 1 &&
        conf->allow_origin == NULL) {
        auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
            ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "\"sse_allow_credentials\" is ignored in location "
                      "\"%V\": it needs \"sse_allow_origin\" (%V:%ui)",
                      &clcf->name, &conf->role_file, conf->role_line);
    }
    if (conf->role == NGX_HTTP_SSE_PUBLISH && conf->channels->nelts > 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"sse_channel\" takes one value where "
                           "\"sse_publish\" is: a publish names one channel");
        return (char *)NGX_CONF_ERROR;
    }
    return ngx_http_sse_auth_merge_conf(cf, prev, conf);
}

static ngx_int_t ngx_http_sse_postconfiguration(ngx_conf_t *cf) {
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));
    auto *use = static_cast<ngx_http_sse_zone_use_t *>(mcf->zone_uses.elts);
    for (ngx_uint_t i = 0; i < mcf->zone_uses.nelts; i++) {
        if (use[i].zone->shm.size == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"%V\" directive names zone \"%V\", but no "
                          "\"sse_zone zone=%V:SIZE\" declares it in %V:%ui",
                          &use[i].directive, &use[i].zone->shm.name,
                          &use[i].zone->shm.name, &use[i].file, use[i].line);
            return NGX_ERROR;
        }
    }
    if (mcf->default_zone_needed && mcf->zones.nelts != 1) {
        ngx_conf_log_error(
            NGX_LOG_EMERG, cf, 0,
            mcf->zones.nelts == 0
                ? "\"sse_subscribe\" and \"sse_publish\" need an \"sse_zone\""
                : "\"sse_subscribe\" and \"sse_publish\" need \"zone=NAME\" "
                  "when there are several \"sse_zone\"s");
        return NGX_ERROR;
    }
    // Process slots are never shared: leave room for old workers draining
    // during reloads.
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(
        ngx_get_conf(cf->cycle->conf_ctx, ngx_core_module));
    if (mcf->zones.nelts > 0 && ccf->worker_processes != NGX_CONF_UNSET &&
        ccf->worker_processes > (ngx_int_t)sse::max_workers) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"worker_processes %i\" is more than an sse zone "
                           "serves (%ui, so that reloads have room)",
                           ccf->worker_processes, (ngx_uint_t)sse::max_workers);
        return NGX_ERROR;
    }
    return ngx_http_sse_auth_init(cf);
}

ngx_http_sse_zone_t *ngx_http_sse_loc_zone(ngx_http_request_t *r,
                                           ngx_http_sse_loc_conf_t *lcf) {
    if (lcf->shm_zone != NULL) {
        return static_cast<ngx_http_sse_zone_t *>(lcf->shm_zone->data);
    }
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_sse_module));
    return static_cast<ngx_http_sse_zone_t **>(mcf->zones.elts)[0];
}

static ngx_int_t ngx_http_sse_init_module(ngx_cycle_t *cycle) {
    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "sse module " NGX_HTTP_SSE_VERSION);
    ngx_http_sse_redis_count_init_module(cycle);
    return NGX_OK;
}

static ngx_int_t ngx_http_sse_init_process(ngx_cycle_t *cycle) {
    return ngx_http_sse_worker_init(cycle);
}

static void ngx_http_sse_exit_process(ngx_cycle_t *cycle) {
    ngx_http_sse_worker_exit(cycle);
}
