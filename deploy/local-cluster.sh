#!/usr/bin/env bash
# local-cluster.sh — a whole ragkv cluster on loopback ports, for trying it out and for
# tests/cluster/test_local_cluster.py: a Redis primary and one replica, three Sentinels
# watching them, three ragkvd nodes sharing the metadata through the Sentinels.
#
#   deploy/local-cluster.sh start DIR MODEL   start everything under DIR; prints DIR/cluster.env
#   deploy/local-cluster.sh tenant DIR NAME   create a tenant (on node 1), copy the credentials
#                                             to the other nodes and reload them; prints its token
#   deploy/local-cluster.sh stop DIR          stop everything started under DIR
#
# Environment: RAGKV_BUILD (default build: where ragkvd and ragkv-admin are), REPLICAS
# (owners per chunk, default 2). Every process's pid is in DIR/pids/NAME, its log in DIR/log/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${RAGKV_BUILD:-$here/build}
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n 2,14p "$0"; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds (bounded: 20 s)
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "local-cluster: timed out waiting for $what" >&2
  return 1
}

start_bg() { # NAME COMMAND...: start in the background, stdout+stderr to DIR/log/NAME
  local name=$1; shift
  "$@" >"$dir/log/$name" 2>&1 &
  echo $! >"$dir/pids/$name"
}

case "$cmd" in
start)
  model=${3:?usage: local-cluster.sh start DIR MODEL}
  mkdir -p "$dir/pids" "$dir/log" "$dir/redis0" "$dir/redis1"
  p0=$(free_port); p1=$(free_port)
  start_bg redis0 redis-server --bind 127.0.0.1 --port "$p0" --dir "$dir/redis0" --appendonly yes --save ""
  start_bg redis1 redis-server --bind 127.0.0.1 --port "$p1" --dir "$dir/redis1" --appendonly yes --save "" \
    --replicaof 127.0.0.1 "$p0"
  wait_for "redis primary" redis-cli -p "$p0" ping
  wait_for "replica in sync" sh -c "redis-cli -p $p1 info replication | grep -q master_link_status:up"
  sentinels=""
  for i in 1 2 3; do
    sp=$(free_port)
    mkdir -p "$dir/sentinel$i"
    cat >"$dir/sentinel$i/sentinel.conf" <<CONF
bind 127.0.0.1
port $sp
dir $dir/sentinel$i
sentinel monitor ragkv 127.0.0.1 $p0 2
sentinel down-after-milliseconds ragkv 1000
sentinel failover-timeout ragkv 4000
sentinel parallel-syncs ragkv 1
CONF
    start_bg "sentinel$i" redis-server "$dir/sentinel$i/sentinel.conf" --sentinel
    wait_for "sentinel $i" redis-cli -p "$sp" ping
    sentinels="${sentinels:+$sentinels,}127.0.0.1:$sp"
  done
  head -c 24 /dev/urandom | base64 >"$dir/cluster.secret"
  chmod 600 "$dir/cluster.secret"
  {
    echo "REDIS_PRIMARY=127.0.0.1:$p0"
    echo "REDIS_REPLICA=127.0.0.1:$p1"
    echo "SENTINELS=$sentinels"
  } >"$dir/cluster.env"
  for i in 1 2 3; do
    np=$(free_port); hp=$(free_port)
    start_bg "node$i" "$build/service/ragkvd" --bind 127.0.0.1 --port "$np" --http-port "$hp" \
      --data-dir "$dir/node$i" --model "$model" --workers 2 --compute-threads 1 --log-level warn \
      --redis-sentinels "$sentinels" --redis-master ragkv --redis-wait-replicas 1 \
      --cluster-secret-file "$dir/cluster.secret" --node-id "node$i" --cluster-replicas "${REPLICAS:-2}" \
      --cluster-heartbeat-ms 250 --cluster-node-ttl-ms 1500 --peer-timeout-ms 3000
    wait_for "node $i" grep -q "ragkvd ready" "$dir/log/node$i"
    echo "NODE$i=127.0.0.1:$np" >>"$dir/cluster.env"
    echo "HTTP$i=127.0.0.1:$hp" >>"$dir/cluster.env"
  done
  cat "$dir/cluster.env"
  ;;
tenant)
  name=${3:?usage: local-cluster.sh tenant DIR NAME}
  # shellcheck disable=SC1091
  . "$dir/cluster.env"
  token=$("$build/clients/ragkv-admin" --host "${NODE1%:*}" --port "${NODE1##*:}" \
    --token-file "$dir/node1/admin.token" tenant create "$name" | tail -n 1)
  # credentials are per node (DATA_DIR/auth/tenants): hand node 1's file to the others
  for i in 2 3; do
    [ -f "$dir/pids/node$i" ] && kill -0 "$(cat "$dir/pids/node$i")" 2>/dev/null || continue
    cp "$dir/node1/auth/tenants" "$dir/node$i/auth/tenants.new"
    mv "$dir/node$i/auth/tenants.new" "$dir/node$i/auth/tenants"
    n=$(grep -c "ragkvd reloaded" "$dir/log/node$i" || true)
    kill -HUP "$(cat "$dir/pids/node$i")"
    wait_for "node $i to reload" sh -c "[ \$(grep -c 'ragkvd reloaded' '$dir/log/node$i') -gt $n ]"
  done
  echo "$token"
  ;;
stop)
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  ;;
*)
  sed -n 2,14p "$0"; exit 2 ;;
esac
