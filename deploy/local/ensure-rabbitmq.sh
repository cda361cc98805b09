#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: start the installed one, or install it
# from the system's packages when that is possible; otherwise say exactly what to do.
set -u
HOST=127.0.0.1
PORT=5672

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

wait_ready() {
  for _ in $(seq 1 90); do
    if port_open; then
      if command -v rabbitmqctl >/dev/null 2>&1; then
        rabbitmqctl -q await_startup >/dev/null 2>&1 && return 0
      else
        return 0
      fi
    fi
    sleep 1
  done
  return 1
}

if port_open; then
  command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl -q await_startup >/dev/null 2>&1
  echo "RabbitMQ is running on $HOST:$PORT"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ -x /usr/sbin/rabbitmq-server ]; then
  PATH="$PATH:/usr/sbin"
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    echo "RabbitMQ is not installed; installing rabbitmq-server from the system's packages"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null 2>&1 ||
      { $SUDO apt-get update -q >/dev/null 2>&1 &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null; } || {
      echo "error: installing rabbitmq-server with apt-get failed; install it yourself and run make again." >&2
      exit 1
    }
    PATH="$PATH:/usr/sbin"
  else
    cat >&2 <<MSG
error: RabbitMQ is not running on $HOST:$PORT and rabbitmq-server is not installed.
Install and start it, then run make again:
  Debian/Ubuntu:  sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached
  macOS:          brew install rabbitmq && brew services start rabbitmq
  Docker:         docker run -d --name rabbitmq -p 5672:5672 rabbitmq:3
MSG
    exit 1
  fi
fi

if port_open; then  # the package's service may have started it
  wait_ready && { echo "RabbitMQ is running on $HOST:$PORT"; exit 0; }
fi
echo "starting RabbitMQ (rabbitmq-server -detached)"
# RabbitMQ wants many file handles (quorum queues, one segment file each); 1024 is too few.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
rabbitmq-server -detached >/dev/null 2>&1 || true
if wait_ready; then
  echo "RabbitMQ is running on $HOST:$PORT"
  exit 0
fi
echo "error: RabbitMQ did not come up on $HOST:$PORT within 90 s; see its log (/var/log/rabbitmq)." >&2
exit 1
