// The sse_zone directive and the shared-memory zone behind it.
#include "ngx_http_sse.hpp"

#include <sys/time.h>

static ngx_int_t ngx_http_sse_init_zone(ngx_shm_zone_t *shm_zone, void *data);

#define NGX_HTTP_SSE_MIN_ZONE_PAGES 16

// Which engine feeds the zone; a zone reused across a reload that adds or
// drops redis= follows the new configuration.
static void ngx_http_sse_zone_engine(ngx_http_sse_zone_t *z) {
    auto s = ngx_http_sse_session(z);
    if (z->redis == NULL) {
        s->set_external(0);
        s->set_bus_pid(0);
    } else if (s->external() == 0) {
        // In sync once the bus has taken Redis's epoch and history.
        s->set_external(1);
    }
}

// The store allocates from its own arena, not from nginx's slab pool: a
// worker killed inside ngx_slab_alloc/free leaves the slab's lists broken
// for good, while the arena is rebuilt from the store by the next session.
static void *ngx_http_sse_arena_alloc(void *ctx, size_t size) {
    return static_cast<sse::arena *>(ctx)->alloc(size);
}

static void ngx_http_sse_arena_free(void *ctx, void *p) {
    static_cast<sse::arena *>(ctx)->free(p);
}

static sse::allocator ngx_http_sse_zone_allocator(ngx_http_sse_zone_t *z) {
    return sse::allocator{z->arena, ngx_http_sse_arena_alloc,
                          ngx_http_sse_arena_free, z->arena};
}

static void ngx_http_sse_slab_lock(void *ctx) {
    ngx_shmtx_lock(&static_cast<ngx_slab_pool_t *>(ctx)->mutex);
}

static void ngx_http_sse_slab_unlock(void *ctx) {
    ngx_shmtx_unlock(&static_cast<ngx_slab_pool_t *>(ctx)->mutex);
}

sse::session ngx_http_sse_session(ngx_http_sse_zone_t *z) {
    return sse::session(z->root, ngx_http_sse_zone_allocator(z),
                        sse::mutex{z->shpool, ngx_http_sse_slab_lock,
                                   ngx_http_sse_slab_unlock});
}

// sse_zone zone=NAME:SIZE [redis=URL] [redis_timeout=TIME] [redis_ca=FILE]
//          [redis_sentinel_auth=[USER:]PASSWORD]
char *ngx_http_sse_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
                                  void *conf) {
    auto *value = static_cast<ngx_str_t *>(cf->args->elts);
    auto *mcf = static_cast<ngx_http_sse_main_conf_t *>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_sse_module));

    u_char *colon = NULL;
    if (value[1].len > 5 && ngx_strncmp(value[1].data, "zone=", 5) == 0) {
        colon = static_cast<u_char *>(
            ngx_strlchr(value[1].data + 5, value[1].data + value[1].len, ':'));
    }
    if (colon == NULL || colon == value[1].data + 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "expected zone=NAME:SIZE",
                           &value[1], &cmd->name);
        return (char *)NGX_CONF_ERROR;
    }
    ngx_str_t name = {static_cast<size_t>(colon - value[1].data - 5),
                      value[1].data + 5};
    ngx_str_t s = {
        static_cast<size_t>(value[1].data + value[1].len - colon - 1),
        colon + 1};
    ssize_t size = ngx_parse_size(&s);
    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "invalid zone size \"%V\"",
                           &value[1], &cmd->name, &s);
        return (char *)NGX_CONF_ERROR;
    }
    // Below 16 pages the zone's own tables (about 6 pages) leave it next to
    // no room for events.
    if (size < (ssize_t)(NGX_HTTP_SSE_MIN_ZONE_PAGES * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small, it must be at least "
                           "%uz bytes",
                           &name, NGX_HTTP_SSE_MIN_ZONE_PAGES * ngx_pagesize);
        return (char *)NGX_CONF_ERROR;
    }

    ngx_shm_zone_t *shm_zone =
        ngx_shared_memory_add(cf, &name, size, &ngx_http_sse_module);
    if (shm_zone == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"",
                           &name);
        return (char *)NGX_CONF_ERROR;
    }

    auto *z = static_cast<ngx_http_sse_zone_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_sse_zone_t)));
    auto **slot =
        static_cast<ngx_http_sse_zone_t **>(ngx_array_push(&mcf->zones));
    if (z == NULL || slot == NULL) {
        return (char *)NGX_CONF_ERROR;
    }
    z->shm_zone = shm_zone;
    z->index = mcf->zones.nelts - 1;

    ngx_str_t *redis = NULL, *redis_timeout = NULL, *redis_ca = NULL;
    ngx_str_t *sentinel_auth = NULL, *redis_cert = NULL, *redis_key = NULL;
    ngx_str_t *machine_ttl = NULL;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        if (value[i].len > 6 && ngx_strncmp(value[i].data, "redis=", 6) == 0 &&
            redis == NULL) {
            value[i].data += 6;
            value[i].len -= 6;
            redis = &value[i];
        } else if (value[i].len > 14 &&
                   ngx_strncmp(value[i].data, "redis_timeout=", 14) == 0 &&
                   redis_timeout == NULL) {
            value[i].data += 14;
            value[i].len -= 14;
            redis_timeout = &value[i];
        } else if (value[i].len > 9 &&
                   ngx_strncmp(value[i].data, "redis_ca=", 9) == 0 &&
                   redis_ca == NULL) {
            value[i].data += 9;
            value[i].len -= 9;
            redis_ca = &value[i];
        } else if (value[i].len >= 20 &&
                   ngx_strncmp(value[i].data, "redis_sentinel_auth=", 20) ==
                       0 &&
                   sentinel_auth == NULL) {
            value[i].data += 20;
            value[i].len -= 20;
            sentinel_auth = &value[i];
        } else if (value[i].len > 18 &&
                   ngx_strncmp(value[i].data, "redis_machine_ttl=", 18) == 0 &&
                   machine_ttl == NULL) {
            value[i].data += 18;
            value[i].len -= 18;
            machine_ttl = &value[i];
        } else if (machine_ttl != NULL && value[i].len >= 18 &&
                   ngx_strncmp(value[i].data, "redis_machine_ttl=", 18) == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate \"redis_machine_ttl=\" parameter "
                               "in \"%V\" directive",
                               &cmd->name);
            return (char *)NGX_CONF_ERROR;
        } else if (value[i].len > 11 &&
                   ngx_strncmp(value[i].data, "redis_cert=", 11) == 0 &&
                   redis_cert == NULL) {
            value[i].data += 11;
            value[i].len -= 11;
            redis_cert = &value[i];
        } else if (value[i].len > 10 &&
                   ngx_strncmp(value[i].data, "redis_key=", 10) == 0 &&
                   redis_key == NULL) {
            value[i].data += 10;
            value[i].len -= 10;
            redis_key = &value[i];
        } else if ((redis != NULL && value[i].len >= 6 &&
                    ngx_strncmp(value[i].data, "redis=", 6) == 0) ||
                   (sentinel_auth != NULL && value[i].len >= 20 &&
                    ngx_strncmp(value[i].data, "redis_sentinel_auth=", 20) ==
                        0)) {
            // Not echoed: it may hold a password.
            ngx_conf_log_error(
                NGX_LOG_EMERG, cf, 0,
                "duplicate \"%s\" parameter in \"%V\" directive",
                value[i].data[5] == '=' ? "redis=" : "redis_sentinel_auth=",
                &cmd->name);
            return (char *)NGX_CONF_ERROR;
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\" in \"%V\" "
                               "directive, expected redis=URL, "
                               "redis_timeout=TIME, redis_ca=FILE, "
                               "redis_sentinel_auth=[USER:]PASSWORD, "
                               "redis_cert=FILE, redis_key=FILE or "
                               "redis_machine_ttl=TIME",
                               &value[i], &cmd->name);
            return (char *)NGX_CONF_ERROR;
        }
    }
    if ((redis_timeout != NULL || redis_ca != NULL || sentinel_auth != NULL ||
         redis_cert != NULL || redis_key != NULL) &&
        redis == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" in \"%V\" needs \"redis=\"",
                           sentinel_auth ? "redis_sentinel_auth="
                           : redis_ca    ? "redis_ca="
                           : redis_cert  ? "redis_cert="
                           : redis_key   ? "redis_key="
                                         : "redis_timeout=",
                           &cmd->name);
        return (char *)NGX_CONF_ERROR;
    }
    if (redis != NULL &&
        ngx_http_sse_redis_parse(cf, z, redis, redis_timeout, redis_ca,
                                 sentinel_auth, redis_cert,
                                 redis_key) != NGX_CONF_OK) {
        return (char *)NGX_CONF_ERROR;
    }
    if (machine_ttl != NULL) {
        if (redis == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"redis_machine_ttl=\" in \"%V\" needs "
                               "\"redis=\"",
                               &cmd->name);
            return (char *)NGX_CONF_ERROR;
        }
        if (ngx_http_sse_redis_count_parse(cf, z, machine_ttl) != NGX_CONF_OK) {
            return (char *)NGX_CONF_ERROR;
        }
    }
    *slot = z;
    shm_zone->init = ngx_http_sse_init_zone;
    shm_zone->data = z;
    return NGX_CONF_OK;
}

ngx_shm_zone_t *ngx_http_sse_zone_ref(ngx_conf_t *cf, ngx_str_t *name) {
    // Size 0: the zone may be declared later; nginx reports an undeclared
    // one as a zero size zone.
    return ngx_shared_memory_add(cf, name, 0, &ngx_http_sse_module);
}

static ngx_int_t ngx_http_sse_init_zone(ngx_shm_zone_t *shm_zone, void *data) {
    auto *z = static_cast<ngx_http_sse_zone_t *>(shm_zone->data);
    auto *old = static_cast<ngx_http_sse_zone_t *>(data);

    if (old != NULL) {
        // Reload with the same name and size: keep channels, buffers, epoch.
        auto *ar = static_cast<sse::arena *>(old->shpool->data);
        if (ar == NULL || !ar->valid() ||
            !sse::store::compatible(
                static_cast<sse::zone_root *>(ar->user()))) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "sse zone \"%V\" was laid out by another build of "
                          "the module; restart nginx or change the zone's "
                          "size to start it anew",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }
        z->shpool = old->shpool;
        z->arena = ar;
        z->root = static_cast<sse::zone_root *>(ar->user());
        ngx_http_sse_zone_engine(z);
        return NGX_OK;
    }

    z->shpool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);
    if (shm_zone->shm.exists) {
        z->arena = static_cast<sse::arena *>(z->shpool->data);
        z->root = static_cast<sse::zone_root *>(z->arena->user());
        ngx_http_sse_zone_engine(z);
        return NGX_OK;
    }

    // Slab exhaustion is normal here (we evict and retry); don't log it.
    z->shpool->log_nomem = 0;
    size_t len = sizeof(" in sse zone \"\"") + shm_zone->shm.name.len;
    z->shpool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(z->shpool, len));
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }
    ngx_sprintf(z->shpool->log_ctx, " in sse zone \"%V\"%Z",
                &shm_zone->shm.name);

    // The epoch names this life of the zone: microseconds at creation.
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t epoch = (uint64_t)tv.tv_sec * 1000000 + (uint64_t)tv.tv_usec;

    // The arena takes all of the zone but a page (the slab's own use).
    ngx_shmtx_lock(&z->shpool->mutex);
    ngx_uint_t keep = 1;
    size_t arena_size =
        z->shpool->pfree > keep ? (z->shpool->pfree - keep) * ngx_pagesize : 0;
    void *mem =
        arena_size ? ngx_slab_alloc_locked(z->shpool, arena_size) : NULL;
    z->arena = mem ? sse::arena::create(mem, arena_size) : NULL;
    z->root = z->arena ? sse::store::create(ngx_http_sse_zone_allocator(z),
                                            epoch, z->arena->bytes_total())
                       : NULL;
    ngx_shmtx_unlock(&z->shpool->mutex);
    if (z->root == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "sse zone \"%V\" is too small", &shm_zone->shm.name);
        return NGX_ERROR;
    }
    z->arena->set_user(z->root);
    z->shpool->data = z->arena;
    ngx_http_sse_zone_engine(z);
    return NGX_OK;
}
