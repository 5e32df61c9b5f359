#!/bin/sh
# The systemd units in deploy/systemd pass `systemd-analyze verify`: their
# directives exist and parse, and the binaries they start are there (the
# install paths are swapped for the build's own binaries). The Redis drop-in
# is verified merged into Debian's redis-server.service, as systemd would
# load it.
#   tests/deploy/verify_units.sh CASCADED CASCADE_ENGINE SOURCE_DIR
set -u
cascaded=$1
engine=$2
src=$3
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "FAIL: systemd-analyze is missing (Debian package systemd; scripts/setup.sh installs it)" >&2
    exit 1
fi
redis_unit=/lib/systemd/system/redis-server.service
if [ ! -f "$redis_unit" ]; then
    echo "FAIL: $redis_unit is missing (Debian package redis-server; scripts/setup.sh installs it)" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for u in cascaded.service cascade-engine.service; do
    sed -e "s|/usr/local/bin/cascaded|$cascaded|g" -e "s|/usr/local/bin/cascade-engine|$engine|g" \
        "$src/deploy/systemd/$u" > "$dir/$u"
done
cp "$redis_unit" "$dir/"
mkdir -p "$dir/redis-server.service.d"
cp "$src/deploy/systemd/redis-server.service.d/cascade.conf" "$dir/redis-server.service.d/"
status=0
for u in cascaded.service cascade-engine.service redis-server.service; do
    # Warnings about the host's other units are not ours: only lines that
    # name our units count, and the exit status.
    out=$(SYSTEMD_UNIT_PATH="$dir:" systemd-analyze verify "$dir/$u" 2>&1)
    rc=$?
    ours=$(printf '%s\n' "$out" | grep -E "(cascaded|cascade-engine|redis-server)\.service|cascade\.conf" || true)
    if [ $rc -ne 0 ] || [ -n "$ours" ]; then
        echo "FAIL: $u (rc $rc)" >&2
        printf '%s\n' "$out" >&2
        status=1
    else
        echo "ok: $u"
    fi
done
if ! grep -q -- "--appendonly yes" "$dir/redis-server.service.d/cascade.conf"; then
    echo "FAIL: the Redis drop-in does not turn AOF on" >&2
    status=1
fi
exit $status
