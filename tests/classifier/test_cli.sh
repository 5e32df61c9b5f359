#!/bin/sh
# cascade-classify end to end: each JSONL line comes back with a "score",
# bad lines are reported by number, and a bad model file is refused at
# start-up with a clear message.
#   test_cli.sh CASCADE_CLASSIFY MODEL
set -u
BIN=$1
MODEL=$2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() {
    echo "FAIL: $*"
    exit 1
}

cat > "$TMP/in.jsonl" <<'JSONL'
{"id": "a", "prompt": "What is 2+2?"}
{"prompt":"Name a prime.","score":5}
not json
{"id": "b"}

{"prompt": "Solve for x: 3x + 5 = 20.", "system": "Be brief.", "n_messages": 3 }
JSONL

"$BIN" --model "$MODEL" < "$TMP/in.jsonl" > "$TMP/out.jsonl" 2> "$TMP/err"
rc=$?
[ $rc -eq 1 ] || fail "exit status $rc, want 1 for the two bad lines"
[ "$(wc -l < "$TMP/out.jsonl")" -eq 3 ] || fail "want 3 scored lines, got: $(cat "$TMP/out.jsonl")"
grep -q 'line 3' "$TMP/err" && grep -q 'line 4' "$TMP/err" || fail "bad lines not reported: $(cat "$TMP/err")"

# The input line's bytes are kept and the score is appended as a number in [0,1].
line1=$(sed -n 1p "$TMP/out.jsonl")
case "$line1" in
'{"id": "a", "prompt": "What is 2+2?", "score": '0.*'}' | '{"id": "a", "prompt": "What is 2+2?", "score": '1'}') ;;
*) fail "line 1: $line1" ;;
esac
# An existing "score" is replaced, not duplicated.
line2=$(sed -n 2p "$TMP/out.jsonl")
case "$line2" in
*'"score":5'* | *'"score": 5'*) fail "old score kept: $line2" ;;
'{"prompt":"Name a prime.","score":'*'}') ;;
*) fail "line 2: $line2" ;;
esac
line3=$(sed -n 3p "$TMP/out.jsonl")
case "$line3" in
'{"prompt": "Solve for x: 3x + 5 = 20.", "system": "Be brief.", "n_messages": 3 , "score": '*'}') ;;
*) fail "line 3: $line3" ;;
esac

# Deterministic: a second run writes the same bytes.
"$BIN" --model "$MODEL" < "$TMP/in.jsonl" > "$TMP/out2.jsonl" 2> /dev/null
cmp -s "$TMP/out.jsonl" "$TMP/out2.jsonl" || fail "two runs differ"

# A truncated model fails at start-up, before reading any input.
size=$(wc -c < "$MODEL")
head -c $((size / 2)) "$MODEL" > "$TMP/half.cdm"
echo '{"prompt": "hi"}' | "$BIN" --model "$TMP/half.cdm" > "$TMP/o" 2> "$TMP/e"
rc=$?
[ $rc -eq 1 ] || fail "truncated model: exit status $rc"
[ ! -s "$TMP/o" ] || fail "truncated model: wrote output"
grep -q 'truncated' "$TMP/e" || fail "truncated model: message $(cat "$TMP/e")"

echo "cascade-classify: all checks passed"
