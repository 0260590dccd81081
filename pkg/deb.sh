#!/usr/bin/env bash
# `make deb`: libnginx-mod-http-sse_VERSION_ARCH.deb from the module built
# against Debian's nginx-dev tree, laid out as Debian's libnginx-mod-*
# packages are, and bound to the exact nginx ABI that tree declares.
# Usage: pkg/deb.sh MODULE.so VERSION OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
so=$1 version=$2 out=$3
abi=$(sed -n 's/^nginx:abi=//p' /usr/share/nginx/src/debian/libnginx-mod.abisubstvars)
if [ -z "$abi" ]; then
    echo "deb: no nginx:abi in nginx-dev's libnginx-mod.abisubstvars" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)
name=libnginx-mod-http-sse
work=$out/deb
root=$work/root
rm -rf "$work" && mkdir -p "$root/DEBIAN"

install -D -m 644 "$so" "$root/usr/lib/nginx/modules/ngx_http_sse_module.so"
strip --strip-unneeded "$root/usr/lib/nginx/modules/ngx_http_sse_module.so"
mkdir -p "$root/usr/share/nginx/modules-available"
# An absolute path: it also loads when nginx runs with its own -p prefix.
echo "load_module /usr/lib/nginx/modules/ngx_http_sse_module.so;" \
    > "$root/usr/share/nginx/modules-available/mod-http-sse.conf"
doc=$root/usr/share/doc/$name
mkdir -p "$doc"
{ cat pkg/debian/copyright.in; echo " ."; sed 's/^$/./; s/^/ /' LICENSE; } \
    > "$doc/copyright"
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
gzip -9n < README.md > "$doc/README.md.gz"
if [ -d docs ]; then
    for f in docs/*.md; do gzip -9n < "$f" > "$doc/$(basename "$f").gz"; done
fi

# Shared libraries the .so needs (libc6, libstdc++6, libgcc-s1), as
# dh_shlibdeps computes them; dpkg-shlibdeps wants a debian/control.
mkdir -p "$work/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" \
    > "$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O \
    "$root/usr/lib/nginx/modules/ngx_http_sse_module.so" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || shlibs="libc6, libstdc++6"

for s in postinst prerm postrm; do
    install -m 755 "pkg/debian/$s" "$root/DEBIAN/$s"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@ABI@/$abi/" -e "s/@SHLIBS@/$shlibs/" pkg/debian/control.in \
    > "$root/DEBIAN/control"
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) \
    > "$root/DEBIAN/md5sums"
deb=$out/${name}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
dpkg-deb -f "$deb" Package Version Depends
