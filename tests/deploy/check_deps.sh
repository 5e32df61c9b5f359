#!/bin/sh
# Cascade's Debian packages are listed once, in scripts/deps.sh, and every
# installer goes through it, so CI (.ci/run -> scripts/test.sh ->
# scripts/setup.sh) installs from the very lists the container images are
# built from. This fails when:
#   - setup.sh, gateway.Containerfile or engine.Containerfile stops calling
#     scripts/deps.sh (build/runtime/test), or CI stops reaching setup.sh;
#   - any other file runs `apt-get install` / `apt install` itself (a second
#     list, free to drift);
#   - a shared library the given binaries load comes from a package missing
#     from `scripts/deps.sh --list runtime` (the gateway image would not start).
#   tests/deploy/check_deps.sh SOURCE_DIR [BINARY...]
set -u
src=$1
shift
bad=0
fail() {
    echo "FAIL: $*" >&2
    bad=$((bad + 1))
}

# Lines that are not comments (a Containerfile's and a shell script's
# comments both start with #).
code() {
    grep -v '^[[:space:]]*#' "$1"
}

# $1 file, $2 ERE: some non-comment line matches.
calls() {
    [ -f "$src/$1" ] || { fail "$1 is missing"; return; }
    code "$src/$1" | grep -Eq "$2" || fail "$1 does not run: $2"
}

calls scripts/setup.sh 'scripts/deps\.sh test'
calls scripts/test.sh 'scripts/setup\.sh'
calls .ci/run 'scripts/test\.sh'
for f in gateway engine; do
    calls "deploy/container/$f.Containerfile" '^RUN[[:space:]]+scripts/deps\.sh build$'
    calls "deploy/container/$f.Containerfile" '^RUN[[:space:]]+[^[:space:]]*scripts/deps\.sh runtime'
done

# apt-get/apt install in command position: at the start of a line or after
# ; & | RUN sudo $SUDO exec then do or VAR=value, with any options before
# `install`. A hint in a message ("(apt-get install python3-numpy)") is not
# a command and is not matched.
lead='(^|[;&|`]|\$\(|\bRUN|\bsudo|\$\{?[A-Za-z_]+\}?|\bexec|\bthen|\bdo|\b[A-Z_]+=[^[:space:]]*)'
apt="${lead}[[:space:]]*apt(-get)?([[:space:]]+-[^[:space:]]+)*[[:space:]]+install\b"
# Files that may hold an install of their own, each with its reason:
#   scripts/deps.sh        the one list
#   bench/peers/*          install the peers and load tools the benchmarks
#                          compare against (nginx, wrk), not Cascade's
#                          dependencies; neither CI nor the images run them
allowed=' scripts/deps.sh tests/deploy/check_deps.sh '
if [ -d "$src/.git" ] && command -v git >/dev/null 2>&1; then
    files=$(git -C "$src" ls-files)
else
    files=$(cd "$src" && find . -path ./node_modules -prune -o -path './build*' -prune -o -path ./.git -prune \
            -o -type f -print | sed 's|^\./||')
fi
n=0
list=$(mktemp)
for f in $files; do
    case "$allowed" in *" $f "*) continue ;; esac
    case "$f" in bench/peers/*) continue ;; esac
    case "$f" in *.md|*.png|*.json|*.cdm|*.tsv|*.bin|*.safetensors) continue ;; esac
    [ -f "$src/$f" ] || continue
    n=$((n + 1))
    printf '%s\n' "$f" >>"$list"
done
# One grep over them all; comment lines (path:line:   # ...) are dropped.
hits=$(cd "$src" && tr '\n' '\0' <"$list" | xargs -0 grep -EHn "$apt" | grep -Ev '^[^:]+:[0-9]+:[[:space:]]*#')
rm -f "$list"
if [ -n "$hits" ]; then
    printf '%s\n' "$hits" | while IFS= read -r h; do
        echo "FAIL: installs packages itself (put them in scripts/deps.sh): $h" >&2
    done
    bad=$((bad + 1))
fi
[ "$n" -gt 50 ] || fail "only $n files searched under $src"

# Every shared library of the given binaries comes from a runtime package.
# Not listed, with reason: libc6 and libgcc-s1 (in every Debian base image),
# and the sanitizer runtimes with the libstdc++ they pull (CASCADE_SANITIZE
# builds only; never shipped).
runtime=" $("$src/scripts/deps.sh" --list runtime | tr '\n' ' ') "
[ "$runtime" != "  " ] || fail "scripts/deps.sh --list runtime printed nothing"
libs=""
for bin in "$@"; do
    [ -x "$bin" ] || { fail "$bin is not an executable"; continue; }
    l=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
    [ -n "$l" ] || fail "ldd $bin found no shared libraries"
    for lib in $l; do
        case "${lib##*/}" in libasan.so*|libubsan.so*|liblsan.so*|libstdc++.so*) continue ;; esac
        libs="$libs ${bin##*/}:$lib"
    done
done
# One dpkg -S for every path (it reads all of dpkg's file lists, seconds a
# call). Debian merged /lib into /usr/lib, and dpkg knows each file by one
# of the two, or by its link target: ask for each spelling.
owners=$(for e in $libs; do
             lib=${e#*:}
             printf '%s\n%s\n%s\n' "$lib" "$(readlink -f "$lib")" "/usr${lib#/usr}"
             case "$lib" in /usr/*) printf '%s\n' "${lib#/usr}" ;; esac
         done | sort -u | xargs -r dpkg -S 2>/dev/null)
for e in $libs; do
    bin=${e%%:*}
    lib=${e#*:}
    real=$(readlink -f "$lib")
    pkg=$(printf '%s\n' "$owners" | awk -v a="$lib" -v b="$real" -v c="/usr${lib#/usr}" -v d="${lib#/usr}" \
          '{ p = $NF; sub(/:.*/, "", $1) } p == a || p == b || p == c || p == d { print $1; exit }')
    if [ -z "$pkg" ]; then
        fail "$bin loads $lib, which no Debian package owns (the image cannot install it)"
        continue
    fi
    case "$pkg" in libc6|libgcc-s1) continue ;; esac
    case "$runtime" in
        *" $pkg "*) ;;
        *) fail "$bin loads $lib from $pkg, missing from scripts/deps.sh runtime" ;;
    esac
done

echo "check_deps: $n files searched, $# binaries' libraries checked ($(echo $libs | wc -w) libraries), $bad failed"
[ "$bad" -eq 0 ]
