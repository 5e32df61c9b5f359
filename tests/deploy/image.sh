#!/usr/bin/env bash
# image.sh: the gateway image, end to end (outside CI: a build takes minutes).
# Builds cascade/gateway:$TAG with deploy/container/build.sh unless it is
# already stored (--rebuild forces it), runs it with its default command (the
# quickstart config), waits for /readyz, sends a chat request as the README's
# tenant (sk-cascade-local), checks the answer is an OpenAI chat completion,
# checks the process runs as uid 10001, and stops the container.
#
#   tests/deploy/image.sh [--rebuild]
#
# Environment:
#   TAG        image tag (default: dev)
#   PODMAN     the podman binary (default: podman)
#   PORT       host port published to the container's 8080 (default: 18080)
#   RESTRICTED auto (default), 0 or 1. 1 runs the container the way a
#              restricted sandbox allows: runc instead of crun (crun refuses
#              hybrid cgroups), rlimits no higher than this machine's (no
#              CAP_SYS_RESOURCE), host network with cascaded on
#              127.0.0.1:$PORT (publishing a port hung). auto tries the
#              ordinary way first (`-p 127.0.0.1:$PORT:8080`, 120 s) and falls
#              back to 1, saying so.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${TAG:-dev}
PODMAN=${PODMAN:-podman}
PORT=${PORT:-18080}
IMAGE=cascade/gateway:$TAG
NAME=cascade-gateway-test-$$
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v "$PODMAN" >/dev/null || fail "$PODMAN is not installed (Debian package podman)"
command -v curl >/dev/null || fail "curl is not installed"
if [ "${1:-}" = --rebuild ] || ! $PODMAN image exists "$IMAGE"; then
  TAG=$TAG PODMAN=$PODMAN deploy/container/build.sh gateway
fi
echo "image: $IMAGE, $($PODMAN image inspect --format '{{.Size}}' "$IMAGE") bytes"

cleanup() { $PODMAN rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

start() {
  if [ "$1" = 1 ]; then
    local nofile nproc
    nofile=$(ulimit -Hn)
    nproc=$(cat /proc/sys/kernel/pid_max)
    echo "run: restricted: --runtime runc --ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc --network host"
    $PODMAN run -d --name "$NAME" --runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
      --network host "$IMAGE" -c /etc/cascade/cascade.json --listen "127.0.0.1:$PORT" >/dev/null
  else
    echo "run: -p 127.0.0.1:$PORT:8080, the image's default command"
    timeout 120 $PODMAN run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" "$IMAGE" >/dev/null
  fi
}
RESTRICTED=${RESTRICTED:-auto}
t0=$(date +%s%N)
case "$RESTRICTED" in
  0|1) start "$RESTRICTED" || fail "podman run failed" ;;
  auto)
    if ! start 0; then
      echo "podman run could not start the container the ordinary way; trying RESTRICTED=1"
      cleanup
      t0=$(date +%s%N)
      start 1 || fail "podman run failed in restricted mode too"
    fi ;;
  *) fail "RESTRICTED is auto, 0 or 1" ;;
esac

# Ready once both tiers have loaded their models.
url=http://127.0.0.1:$PORT
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)" = 200 ] && break
  [ "$($PODMAN inspect --format '{{.State.Running}}' "$NAME")" = true ] ||
    { $PODMAN logs "$NAME" >&2; fail "the container exited"; }
  sleep 0.2
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ] ||
  { $PODMAN logs "$NAME" >&2; fail "/readyz never answered 200 within 60 s"; }
t1=$(date +%s%N)
echo "ready: /readyz 200, $(( (t1 - t0) / 1000000 )) ms after podman run"

body=$(curl -s -w '\n%{http_code}' "$url/v1/chat/completions" \
  -H 'Authorization: Bearer sk-cascade-local' -H 'Content-Type: application/json' \
  -d '{"model":"auto","max_tokens":16,"messages":[{"role":"user","content":"Once upon a time"}]}')
code=${body##*$'\n'}
json=${body%$'\n'*}
echo "chat: HTTP $code: $json"
[ "$code" = 200 ] || fail "chat request answered $code"
# An OpenAI chat completion: object, an assistant message with text, a
# finish reason and token usage.
printf '%s' "$json" | node -e '
  const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const c = r.choices && r.choices[0];
  const ok = r.object === "chat.completion" && typeof r.id === "string" && c &&
    c.message && c.message.role === "assistant" && typeof c.message.content === "string" &&
    c.message.content.length > 0 && typeof c.finish_reason === "string" &&
    r.usage && r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0;
  if (!ok) { console.error("not an OpenAI chat completion"); process.exit(1); }
' || fail "the answer is not an OpenAI chat completion"

# A wrong key gets an OpenAI-format 401.
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/chat/completions" \
  -H 'Authorization: Bearer sk-wrong' -H 'Content-Type: application/json' \
  -d '{"model":"auto","messages":[{"role":"user","content":"hi"}]}')
[ "$code" = 401 ] || fail "a wrong key answered $code, not 401"

# Non-root: the gateway's process runs as uid 10001.
uid=$($PODMAN top "$NAME" huser 2>/dev/null | awk 'NR == 2 { print $1 }')
[ "$uid" = 10001 ] || fail "cascaded runs as uid '$uid', not 10001"

$PODMAN stop -t 10 "$NAME" >/dev/null
echo "PASS: $IMAGE answered a chat request from its quickstart config, as uid 10001, and stopped"
