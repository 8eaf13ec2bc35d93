#!/usr/bin/env bash
# skep against Docker Swarm on the same Docker Engine, in one run.
#
#   benches/side_by_side.sh [N ...]          (default: 20 60 200)
#
# For each N, three ways of running N containers of one local image (a static C program that
# waits for SIGTERM; built here FROM scratch, never pulled):
#   docker   `docker run -d` N times, one after another (the engine's own floor);
#   swarm    Docker Swarm on this engine (`docker swarm init` on 127.0.0.1, left afterwards
#            when it was inactive before): `docker service create --replicas N`;
#   skep     one `skep daemon` (release build) with its docker runtime: `skep service create
#            --replicas N`.
# and three timings each, until the engine runs exactly that many of the service's containers
# (and, for swarm and skep, `service ls` says so):
#   create   0 -> N;   up   N -> 2N (`service scale`, or N more `docker run`);
#   down     2N -> N (`service scale`, or `docker rm -f` of N).
# Then skep's exec runtime (no engine): EXEC_REPLICAS (default 1000) replicas of /bin/sleep,
# create -> N/N, with the host memory each task took (MemAvailable before and after) and the
# load average after the burst.
#
# PARTS (default "docker swarm skep exec") runs only some of the four.
#
# Prints a Markdown report (machine, versions, security settings, times, ratios against
# `docker run`) on stdout; progress on stderr. Needs root, a Docker Engine, gcc with a static
# libc, and cargo (it builds `target/release/skep` unless SKEP_BIN names a binary).
# Every daemon, container and service it makes is removed on the way out, even on failure.

set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(20 60 200)
EXEC_REPLICAS=${EXEC_REPLICAS:-1000}
PARTS=${PARTS:-docker swarm skep exec}
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
LIMIT_S=${LIMIT_S:-600}
ADDR=127.0.91.9:2377
SWARM_ADDR=127.0.0.1:42378
IMAGE=skep-bench-waiter:1
WORK=$(mktemp -d /tmp/skep-side-by-side.XXXXXX)
SKEP_PID=""
SWARM_STARTED=0

log() { echo "side-by-side: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2fx", a / b; else print "-" }'; }

cleanup() {
  set +e
  docker ps -aq --filter label=skep-bench=side-by-side | xargs -r docker rm -f >/dev/null 2>&1
  if [ -n "$SKEP_PID" ]; then
    skep service ls -q 2>/dev/null | xargs -r "$SKEP" --host "unix://$WORK/skep.sock" service rm >/dev/null 2>&1
    kill -TERM "$SKEP_PID" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$SKEP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SKEP_PID" 2>/dev/null
  fi
  docker ps -aq --filter label=skep.service.name | xargs -r docker rm -f >/dev/null 2>&1
  if [ "$SWARM_STARTED" = 1 ]; then
    docker service ls -q --filter label=skep-bench=side-by-side | xargs -r docker service rm >/dev/null 2>&1
    docker swarm leave --force >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || die "needs root (the exec runtime makes namespaces)"
docker version >/dev/null 2>&1 || die "no Docker Engine answers"
command -v gcc >/dev/null || die "needs gcc and a static libc"

if [ -z "${SKEP_BIN:-}" ]; then
  log "building target/release/skep"
  cargo build --release --quiet --bin skep >&2
  SKEP_BIN=target/release/skep
fi
SKEP_BIN=$(realpath "$SKEP_BIN")
skep() { "$SKEP_BIN" --host "unix://$WORK/skep.sock" "$@"; }
SKEP=$SKEP_BIN

# ---------------------------------------------------------------- the image
cat >"$WORK/waiter.c" <<'EOF'
#include <signal.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(void) { signal(SIGTERM, bye); signal(SIGINT, bye); for (;;) pause(); }
EOF
gcc -static -O2 -o "$WORK/waiter" "$WORK/waiter.c"
printf 'FROM scratch\nCOPY waiter /waiter\nENTRYPOINT ["/waiter"]\n' >"$WORK/Dockerfile"
docker build -q -t "$IMAGE" "$WORK" >/dev/null || die "cannot build $IMAGE"

# ---------------------------------------------------------------- waiting
# running_containers LABEL=VALUE: how many of its containers the engine runs.
running_containers() { docker ps -q --filter "label=$1" | wc -l; }

# wait_until DESC CMD...: polls CMD every 50 ms until it succeeds, or fails the run.
wait_until() {
  local desc=$1 start
  shift
  start=$(date +%s)
  until "$@"; do
    [ $(($(date +%s) - start)) -lt "$LIMIT_S" ] || die "$desc: not within ${LIMIT_S}s"
    sleep 0.05
  done
}

# ---------------------------------------------------------------- docker run
declare -A T
docker_runs() { # N NAME-PREFIX FROM
  local n=$1 p=$2 from=$3
  for i in $(seq "$from" $((from + n - 1))); do
    docker run -d --label skep-bench=side-by-side --label "sbs=$p" --name "$p-$i" "$IMAGE" >/dev/null
  done
}
raw_count_is() { [ "$(running_containers "sbs=$1")" -eq "$2" ]; }
for n in "${SIZES[@]}"; do
  part docker || break
  p=sbs-raw-$n
  log "docker run: $n"
  t0=$(now_ns); docker_runs "$n" "$p" 1; wait_until "docker run $n" raw_count_is "$p" "$n"; t1=$(now_ns)
  T[docker,create,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns); docker_runs "$n" "$p" $((n + 1)); wait_until "docker run +$n" raw_count_is "$p" $((2 * n)); t1=$(now_ns)
  T[docker,up,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns)
  docker rm -f $(seq -f "$p-%g" $((n + 1)) $((2 * n))) >/dev/null
  wait_until "docker rm $n" raw_count_is "$p" "$n"; t1=$(now_ns)
  T[docker,down,$n]=$(secs "$t0" "$t1")
  docker ps -aq --filter "label=sbs=$p" | xargs -r docker rm -f >/dev/null
done

# ---------------------------------------------------------------- Docker Swarm
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if ! part swarm; then
  :
elif [ "$state" = inactive ]; then
  docker swarm init --listen-addr "$SWARM_ADDR" --advertise-addr "$SWARM_ADDR" >/dev/null
  SWARM_STARTED=1
elif [ "$state" != active ]; then
  die "the engine's swarm mode is '$state'"
fi
swarm_at() { # NAME N: service ls says N/N and the engine runs N of its containers
  [ "$(docker service ls --filter "name=$1" --format '{{.Replicas}}')" = "$2/$2" ] &&
    [ "$(running_containers "com.docker.swarm.service.name=$1")" -eq "$2" ]
}
swarm_gone() { [ "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$1" | wc -l)" -eq 0 ]; }
for n in "${SIZES[@]}"; do
  part swarm || break
  s=sbs-swarm-$n
  log "swarm: $n"
  t0=$(now_ns)
  docker service create --detach --quiet --no-resolve-image --label skep-bench=side-by-side \
    --container-label skep-bench=side-by-side --name "$s" --replicas "$n" "$IMAGE" >/dev/null
  wait_until "swarm $n" swarm_at "$s" "$n"; t1=$(now_ns)
  T[swarm,create,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns); docker service scale --detach "$s=$((2 * n))" >/dev/null 2>&1
  wait_until "swarm up" swarm_at "$s" $((2 * n)); t1=$(now_ns)
  T[swarm,up,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns); docker service scale --detach "$s=$n" >/dev/null 2>&1
  wait_until "swarm down" swarm_at "$s" "$n"; t1=$(now_ns)
  T[swarm,down,$n]=$(secs "$t0" "$t1")
  docker service rm "$s" >/dev/null
  wait_until "swarm rm" swarm_gone "$s"
done
SWARM_VERSION=$(docker version --format '{{.Server.Version}}')
if [ "$SWARM_STARTED" = 1 ]; then
  docker swarm leave --force >/dev/null
  SWARM_STARTED=0
fi

# ---------------------------------------------------------------- skep
if part skep || part exec; then
mkdir -p "$WORK/data"
"$SKEP_BIN" daemon --data-dir "$WORK/data" --socket "$WORK/skep.sock" --listen-addr "$ADDR" \
  --advertise-addr "$ADDR" --hostname side-by-side-1 2>"$WORK/daemon.log" &
SKEP_PID=$!
wait_until "skep daemon's socket" [ -S "$WORK/skep.sock" ]
skep swarm init --advertise-addr "$ADDR" >/dev/null
fi
skep_at() { # NAME N [exec]
  [ "$(skep service ls --filter "name=$1" --format '{{.Replicas}}')" = "$2/$2" ] &&
    { [ "${3:-}" = exec ] || [ "$(running_containers "skep.service.name=$1")" -eq "$2" ]; }
}
skep_gone() { [ -z "$(skep service ls -q --filter "name=$1")" ] && [ "$(docker ps -aq --filter "label=skep.service.name=$1" | wc -l)" -eq 0 ]; }
for n in "${SIZES[@]}"; do
  part skep || break
  s=sbs-skep-$n
  log "skep: $n"
  t0=$(now_ns)
  skep service create --detach --name "$s" --replicas "$n" "$IMAGE" >/dev/null
  wait_until "skep $n" skep_at "$s" "$n"; t1=$(now_ns)
  T[skep,create,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns); skep service scale --detach "$s=$((2 * n))" >/dev/null
  wait_until "skep up" skep_at "$s" $((2 * n)); t1=$(now_ns)
  T[skep,up,$n]=$(secs "$t0" "$t1")
  t0=$(now_ns); skep service scale --detach "$s=$n" >/dev/null
  wait_until "skep down" skep_at "$s" "$n"; t1=$(now_ns)
  T[skep,down,$n]=$(secs "$t0" "$t1")
  skep service rm "$s" >/dev/null
  wait_until "skep rm" skep_gone "$s"
done

# ---------------------------------------------------------------- skep, exec runtime
mem_avail_kib() { awk '/^MemAvailable:/ { print $2 }' /proc/meminfo; }
page_tables_kib() { awk '/^PageTables:/ { print $2 }' /proc/meminfo; }
EXEC_CREATE=- EXEC_MEM_KIB=- EXEC_PT_KIB=- LOAD=-
if part exec; then
log "skep exec: $EXEC_REPLICAS"
m0=$(mem_avail_kib); pt0=$(page_tables_kib)
t0=$(now_ns)
skep service create --detach --runtime exec --name sbs-exec --replicas "$EXEC_REPLICAS" -- /bin/sleep 100000 >/dev/null
wait_until "skep exec $EXEC_REPLICAS" skep_at sbs-exec "$EXEC_REPLICAS" exec; t1=$(now_ns)
EXEC_CREATE=$(secs "$t0" "$t1")
LOAD=$(cut -d' ' -f1 /proc/loadavg)
m1=$(mem_avail_kib); pt1=$(page_tables_kib)
EXEC_MEM_KIB=$(((m0 - m1) / EXEC_REPLICAS))
EXEC_PT_KIB=$(((pt1 - pt0) / EXEC_REPLICAS))
skep service rm sbs-exec >/dev/null
wait_until "skep exec rm" skep_gone sbs-exec
fi
SKEP_VERSION=$("$SKEP_BIN" --version)

# ---------------------------------------------------------------- report
cat <<EOF
## skep and Docker Swarm, side by side

Run $(date -u +%Y-%m-%dT%H:%MZ) with \`PARTS="$PARTS" benches/side_by_side.sh ${SIZES[*]}\` on $(nproc) cores,
$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r),
Docker Engine $SWARM_VERSION, $SKEP_VERSION (release build, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')).

Security settings: **skep** as installed: every node call over mutual TLS 1.3 (rustls,
ECDSA P-256 node certificates from the cluster's CA), the Raft log and snapshots sealed at rest
(ChaCha20-Poly1305), every change on the hash-chained audit log, the default Cedar policies,
autolock off. **Swarm** as installed: mutual TLS between nodes, its Raft log encrypted at rest,
autolock off. One node each; the same image, a static program waiting for SIGTERM.

Seconds until the engine runs exactly that many of the service's containers (and \`service
ls\` says N/N); in brackets, the ratio to \`docker run -d\` one after another.

| N | step | docker run | Swarm | skep |
|---|------|-----------:|------:|-----:|
EOF
for n in "${SIZES[@]}"; do
  for step in create up down; do
    d=${T[docker,$step,$n]:--} w=${T[swarm,$step,$n]:--} k=${T[skep,$step,$n]:--}
    label=$step
    case $step in create) label="create 0 → $n" ;; up) label="scale $n → $((2 * n))" ;; down) label="scale $((2 * n)) → $n" ;; esac
    echo "| $n | $label | $d | $w ($(ratio "$w" "$d")) | $k ($(ratio "$k" "$d")) |"
  done
done
cat <<EOF

skep's exec runtime (no engine): $EXEC_REPLICAS replicas of \`/bin/sleep\`, create → $EXEC_REPLICAS/$EXEC_REPLICAS
in ${EXEC_CREATE} s; host memory per task ${EXEC_MEM_KIB} KiB (MemAvailable before and after, the
command's own process included), of which page tables ${EXEC_PT_KIB} KiB; load average
(1 min) just after: ${LOAD}.
EOF
