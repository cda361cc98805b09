#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster on one machine, beside the default node (rabbit@localhost on
# 5672), for trying bridge's cluster mode and for the cluster tests (tests/test_cluster.py).
#
#   deploy/local/cluster.sh up              start the three nodes and cluster them (fresh state)
#   deploy/local/cluster.sh down            stop them and delete their state
#   deploy/local/cluster.sh status          each node: running / paused / stopped, and its URL
#   deploy/local/cluster.sh urls            the AMQP URLs, one a line (for [rabbitmq] urls)
#   deploy/local/cluster.sh kill NODE       kill -9 the node (a crash)
#   deploy/local/cluster.sh stop NODE       stop the node gracefully (rabbitmqctl stop)
#   deploy/local/cluster.sh start NODE      start a killed or stopped node again (it rejoins)
#   deploy/local/cluster.sh pause NODE      SIGSTOP the node (a stall, like a partition)
#   deploy/local/cluster.sh resume NODE     SIGCONT it
#   deploy/local/cluster.sh ctl NODE ARGS   rabbitmqctl ARGS against the node
#
# NODE: c1, c2, c3 (or 1, 2, 3, or the full name). Nodes are bridge-c1@localhost ..
# bridge-c3@localhost, AMQP on 127.0.0.1:5681-5683 (guest/guest), Erlang distribution on
# 25681-25683, no plugins (no management), cluster_partition_handling = pause_minority. Their
# data, logs and configuration live under $BRIDGE_CLUSTER_DIR (default $TMPDIR/bridge-cluster or
# /tmp/bridge-cluster). They use the default node's Erlang cookie when it can be read (so the
# system's rabbitmqctl reaches them too), else one of their own.
set -euo pipefail

STATE=${BRIDGE_CLUSTER_DIR:-${TMPDIR:-/tmp}/bridge-cluster}
AMQP_BASE=${BRIDGE_CLUSTER_AMQP_BASE:-5680}   # node N listens on AMQP_BASE + N
DIST_BASE=${BRIDGE_CLUSTER_DIST_BASE:-25680}  # and on DIST_BASE + N for Erlang distribution
NODES=(c1 c2 c3)
SYSTEM_COOKIE=/var/lib/rabbitmq/.erlang.cookie
START_TIMEOUT=${BRIDGE_CLUSTER_START_TIMEOUT:-90}

find_bin() {
  for dir in /usr/lib/rabbitmq/bin /usr/local/lib/rabbitmq/bin /opt/rabbitmq/sbin; do
    [ -x "$dir/rabbitmq-server" ] && { echo "$dir"; return 0; }
  done
  local server
  server=$(command -v rabbitmq-server 2>/dev/null || true)
  [ -n "$server" ] && { dirname "$(readlink -f "$server")"; return 0; }
  return 1
}

RMQ_BIN=$(find_bin) || {
  echo "error: rabbitmq-server is not installed; run deploy/local/ensure-rabbitmq.sh (make rabbitmq) first." >&2
  exit 1
}

die() { echo "error: $*" >&2; exit 1; }

node_index() {  # c1 | 1 | bridge-c1@localhost -> 1
  case "$1" in
    c[1-3]) echo "${1#c}" ;;
    [1-3]) echo "$1" ;;
    bridge-c[1-3]@*) local n=${1#bridge-c}; echo "${n%%@*}" ;;
    *) die "unknown node '$1' (use c1, c2 or c3)" ;;
  esac
}

node_name() { echo "bridge-c$1@localhost"; }
node_dir() { echo "$STATE/c$1"; }
amqp_port() { echo $((AMQP_BASE + $1)); }
node_pid() {
  local file
  file="$(node_dir "$1")/pid"
  [ -s "$file" ] && cat "$file"
}

alive() {  # the node's VM exists (running or paused)
  local pid
  pid=$(node_pid "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

paused() {
  local pid
  pid=$(node_pid "$1") || return 1
  [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = "T" ]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_env() {  # the environment of node $1 (and of rabbitmqctl run against it)
  local i=$1 dir
  dir=$(node_dir "$i")
  export HOME="$STATE/home"
  export RABBITMQ_CONF_ENV_FILE="$STATE/rabbitmq-env.conf"
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$i")
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/enabled_plugins"
  export RABBITMQ_DIST_PORT
  RABBITMQ_DIST_PORT=$((DIST_BASE + i))
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(amqp_port "$i")
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_DIST_PORT_MIN=$((DIST_BASE + 10000 + 10 * i))
  export RABBITMQ_CTL_DIST_PORT_MAX=$((DIST_BASE + 10000 + 10 * i + 9))
}

ctl() {  # ctl N ARGS: rabbitmqctl against node N, as the nodes' user with their cookie
  local i=$1
  shift
  (node_env "$i"; "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$i")" "$@")
}

prepare() {
  rm -rf "$STATE"
  mkdir -p "$STATE/home"
  chmod 700 "$STATE/home"
  if [ -r "$SYSTEM_COOKIE" ]; then
    cp "$SYSTEM_COOKIE" "$STATE/home/.erlang.cookie"
  elif [ -r "$HOME/.erlang.cookie" ]; then
    cp "$HOME/.erlang.cookie" "$STATE/home/.erlang.cookie"
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$STATE/home/.erlang.cookie"
  fi
  chmod 400 "$STATE/home/.erlang.cookie"
  : >"$STATE/enabled_plugins"           # no plugins: no management listener to collide on
  : >"$STATE/rabbitmq-env.conf"         # not the system's (it names the default node)
  for i in 1 2 3; do
    local dir
    dir=$(node_dir "$i")
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$i")
cluster_partition_handling = pause_minority
cluster_name = bridge-local
CONF
  done
}

launch() {  # start node $1 detached (its state is kept)
  local i=$1
  if alive "$i"; then
    return 0
  fi
  port_open "$(amqp_port "$i")" && die "port $(amqp_port "$i") is taken by another process"
  rm -f "$(node_dir "$i")/pid"
  (
    node_env "$i"
    # Quorum queues keep a file per segment: give the node room.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    cd "$STATE"
    "$RMQ_BIN/rabbitmq-server" -detached >>"$(node_dir "$i")/log/startup.log" 2>&1
  ) || die "$(node_name "$i") did not start; see $(node_dir "$i")/log"
}

await_node() {
  local i=$1
  ctl "$i" -q wait --timeout "$START_TIMEOUT" "$(node_dir "$i")/pid" >/dev/null 2>&1 ||
    ctl "$i" -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 || {
      tail -n 30 "$(node_dir "$i")"/log/*.log >&2 2>/dev/null || true
      die "$(node_name "$i") did not come up within ${START_TIMEOUT}s; see $(node_dir "$i")/log"
    }
}

clustered() {  # every node runs and sees the other two
  local i
  for i in 1 2 3; do
    alive "$i" && ! paused "$i" || return 1
  done
  local running
  running=$(ctl 1 -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null) || return 1
  [ "$running" = "3" ]
}

cmd_up() {
  if [ -d "$STATE" ] && clustered; then
    echo "the local cluster is up"
    cmd_urls
    return 0
  fi
  cmd_down >/dev/null 2>&1 || true
  prepare
  for i in 1 2 3; do launch "$i"; done
  for i in 1 2 3; do await_node "$i"; done
  local out
  for i in 2 3; do
    out=$(ctl "$i" -q stop_app 2>&1 && ctl "$i" -q join_cluster "$(node_name 1)" 2>&1 &&
      ctl "$i" -q start_app 2>&1) || die "$(node_name "$i") could not join $(node_name 1): $out"
  done
  for i in 1 2 3; do ctl "$i" -q await_startup --timeout "$START_TIMEOUT" >/dev/null; done
  clustered || die "the nodes started but did not form one cluster; see $STATE/c*/log"
  echo "the local cluster is up (state in $STATE)"
  cmd_urls
}

cmd_down() {
  local i pid pids=()
  for i in 1 2 3; do
    pid=$(node_pid "$i" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true  # the Erlang VM shuts down cleanly on SIGTERM
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 150); do  # up to 15 s, then no more waiting: the state goes anyway
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$STATE"
  echo "the local cluster is down"
}

cmd_status() {
  local i state code=0
  for i in 1 2 3; do
    if ! alive "$i"; then
      state=stopped
      code=1
    elif paused "$i"; then
      state=paused
      code=1
    elif port_open "$(amqp_port "$i")"; then
      state=running
    else
      state=starting
      code=1
    fi
    printf '%-22s %-8s amqp://guest:guest@127.0.0.1:%s/  pid %s\n' \
      "$(node_name "$i")" "$state" "$(amqp_port "$i")" "$(node_pid "$i" 2>/dev/null || echo -)"
  done
  return $code
}

cmd_urls() {
  local i
  for i in 1 2 3; do echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2F"; done
}

cmd_kill() {
  local i pid
  i=$(node_index "${1:?usage: cluster.sh kill NODE}")
  alive "$i" || die "$(node_name "$i") is not running"
  pid=$(node_pid "$i")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  echo "killed $(node_name "$i") (pid $pid)"
}

cmd_stop() {
  local i
  i=$(node_index "${1:?usage: cluster.sh stop NODE}")
  alive "$i" || die "$(node_name "$i") is not running"
  ctl "$i" -q stop >/dev/null
  echo "stopped $(node_name "$i")"
}

cmd_start() {
  local i
  i=$(node_index "${1:?usage: cluster.sh start NODE}")
  [ -d "$(node_dir "$i")/mnesia" ] || die "no local cluster here; run: cluster.sh up"
  launch "$i"
  await_node "$i"
  echo "started $(node_name "$i")"
}

cmd_pause() {
  local i
  i=$(node_index "${1:?usage: cluster.sh pause NODE}")
  alive "$i" || die "$(node_name "$i") is not running"
  kill -STOP "$(node_pid "$i")"
  echo "paused $(node_name "$i") (SIGSTOP)"
}

cmd_resume() {
  local i
  i=$(node_index "${1:?usage: cluster.sh resume NODE}")
  alive "$i" || die "$(node_name "$i") is not running"
  kill -CONT "$(node_pid "$i")"
  echo "resumed $(node_name "$i") (SIGCONT)"
}

cmd_ctl() {
  local i
  i=$(node_index "${1:?usage: cluster.sh ctl NODE ARGS...}")
  shift
  ctl "$i" "$@"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  urls) cmd_urls ;;
  kill|stop|start|pause|resume|ctl)
    command=$1
    shift
    "cmd_$command" "$@"
    ;;
  *)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
