#!/usr/bin/env bash
# `make matrix`: for each nginx source archive in $1 (default
# ../shared/nginx-src), build nginx itself with only what the smoke tests
# use, plus this module against it, out of tree under build/matrix/VERSION/,
# then run the smoke subset of t/ against that nginx binary and .so.
# Prints a table: version x (module builds, smoke passes). Exit status 1 if
# any version fails.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC_DIR=${1:?usage: pkg/matrix.sh DIR_WITH_nginx-X.Y.Z.tar.gz}
OUT=$ROOT/build/matrix
PYTHON=${PYTHON:-/usr/bin/python3}
JOBS=${JOBS:-2}
SMOKE=(t/test_subscribe.py t/test_publish.py t/test_fanout.py
       t/test_resume.py t/test_reload.py t/test_http2.py t/test_gzip.py
       t/test_version.py)
# The smoke tests need HTTP/2, TLS (h2 over TLS), gzip, regex locations and
# the *_temp_path directives the test config sets; everything else is off.
CONFIGURE_FLAGS=(--with-compat --with-http_v2_module --with-http_ssl_module
    --without-http_charset_module --without-http_ssi_module
    --without-http_userid_module --without-http_auth_basic_module
    --without-http_mirror_module --without-http_autoindex_module
    --without-http_geo_module --without-http_split_clients_module
    --without-http_referer_module --without-http_grpc_module
    --without-http_memcached_module --without-http_empty_gif_module
    --without-http_browser_module --without-http_upstream_hash_module
    --without-http_upstream_ip_hash_module
    --without-http_upstream_least_conn_module
    --without-http_upstream_random_module
    --without-http_upstream_keepalive_module
    --without-http_upstream_zone_module --without-mail_pop3_module
    --without-mail_imap_module --without-mail_smtp_module)

shopt -s nullglob
archives=("$SRC_DIR"/nginx-*.tar.gz)
if [ ${#archives[@]} -eq 0 ]; then
    echo "matrix: no nginx-*.tar.gz in $SRC_DIR" >&2
    exit 1
fi
# Oldest first, by version number.
mapfile -t archives < <(printf '%s\n' "${archives[@]}" | sort -V)

declare -A built smoke took
failed=0
for tgz in "${archives[@]}"; do
    name=$(basename "$tgz" .tar.gz)            # nginx-1.30.4
    ver=${name#nginx-}
    dir=$OUT/$ver
    tree=$dir/$name
    start=$SECONDS
    mkdir -p "$dir"
    echo "== $name: build (logs in $dir)"
    built[$ver]=no
    smoke[$ver]=-
    if [ ! -f "$tree/.extracted" ] || [ "$tgz" -nt "$tree/.extracted" ]; then
        rm -rf "$tree" && mkdir -p "$tree" &&
            tar -xzf "$tgz" -C "$tree" --strip-components=1 &&
            touch "$tree/.extracted"
    fi
    # A release tarball has ./configure; a repository tree, auto/configure.
    conf=./configure
    [ -x "$tree/configure" ] || conf=auto/configure
    ok=1
    if [ ! -f "$tree/objs/Makefile" ] || [ config -nt "$tree/objs/Makefile" ] \
        || [ config.make -nt "$tree/objs/Makefile" ]; then
        (cd "$tree" && $conf "${CONFIGURE_FLAGS[@]}" \
            --add-dynamic-module="$ROOT") >"$dir/configure.log" 2>&1 || ok=0
    fi
    if [ $ok = 1 ] && make -C "$tree" -f objs/Makefile -j"$JOBS" binary modules \
        >"$dir/build.log" 2>&1; then
        built[$ver]=yes
    else
        tail -30 "$dir/configure.log" "$dir/build.log" 2>/dev/null
        failed=1
        took[$ver]=$((SECONDS - start))
        continue
    fi
    echo "== $name: smoke"
    "$tree/objs/nginx" -V 2>&1 | head -1
    if SSE_NGINX_BIN=$tree/objs/nginx SSE_MODULE=$tree/objs/ngx_http_sse_module.so \
        "$PYTHON" -m pytest -q -p no:cacheprovider "${SMOKE[@]}" \
        >"$dir/smoke.log" 2>&1; then
        smoke[$ver]="yes ($(grep -Eo '[0-9]+ passed' "$dir/smoke.log" | tail -1))"
    else
        smoke[$ver]="NO ($(grep -E '[0-9]+ (passed|failed|error)' "$dir/smoke.log" |
            tail -1 | sed 's/=//g; s/^ *//; s/ in [0-9.]*s.*//'))"
        grep -E '^(FAILED|ERROR)' "$dir/smoke.log" | head -20
        failed=1
    fi
    took[$ver]=$((SECONDS - start))
done

echo
printf '| %-8s | %-13s | %-40s | %6s |\n' nginx "module builds" "smoke passes" time
printf '|%s|%s|%s|%s|\n' ---------- --------------- \
    ------------------------------------------ --------
for tgz in "${archives[@]}"; do
    ver=$(basename "$tgz" .tar.gz); ver=${ver#nginx-}
    printf '| %-8s | %-13s | %-40s | %5ss |\n' "$ver" "${built[$ver]}" \
        "${smoke[$ver]}" "${took[$ver]}"
done
exit $failed
