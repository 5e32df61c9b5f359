#!/bin/sh
# Every config under deploy/ passes `cascaded --check-config`: it parses, its
# engines' options are valid, its classifier model loads and its routing
# shares find a score distribution. A config that drifts from the code (a key
# renamed, a share without a classifier) fails here before a user finds it.
#   tests/deploy/check_configs.sh CASCADED SOURCE_DIR
set -u
cascaded=$1
src=$2
n=0
bad=0
for f in "$src"/deploy/*.json "$src"/deploy/examples/*.json; do
    [ -f "$f" ] || continue
    n=$((n + 1))
    if ! "$cascaded" --check-config -c "$f"; then
        echo "FAIL: $f" >&2
        bad=$((bad + 1))
    fi
done
if [ "$n" -lt 6 ]; then
    echo "FAIL: only $n configs under $src/deploy (expected the quickstart and 5 examples)" >&2
    exit 1
fi
echo "$n configs checked, $bad failed"
[ "$bad" -eq 0 ]
