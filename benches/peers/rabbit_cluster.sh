#!/usr/bin/env bash
# A 3-node RabbitMQ 3.10 cluster on this machine, for benches/cluster.rs: the
# MQTT plugin on a mutual-TLS listener per node, client-certificate login (the
# certificate's CN is the user name), users and permissions from a definitions
# file, the nodes joined by classic-config peer discovery. Debian's
# rabbitmq-server, started by hand (no systemd); as root it drops to the
# rabbitmq user, so everything lives under DIR, owned by it.
#
#   rabbit_cluster.sh DIR setup USER...   write the configuration (DIR/tls holds
#                                         ca.pem, server.pem, server.key)
#   rabbit_cluster.sh DIR start N         start node N (1-3) in the background
#   rabbit_cluster.sh DIR wait N          wait until node N's MQTT port listens
#   rabbit_cluster.sh DIR kill N          SIGKILL node N (its Erlang VM)
#   rabbit_cluster.sh DIR stop            stop every node (SIGTERM, then SIGKILL)
#
# Ports: node N has AMQP 25600+10N, Erlang distribution 25601+10N, MQTT over
# TLS 28800+N.
set -euo pipefail
dir=$1 cmd=$2
shift 2
mqtt_port() { echo $((28800 + $1)); }

node_env() {
    local n=$1
    export HOME="$dir/home"
    export RABBITMQ_NODENAME="r$n@localhost"
    export RABBITMQ_NODE_PORT=$((25600 + 10 * n))
    export RABBITMQ_DIST_PORT=$((25601 + 10 * n))
    export RABBITMQ_MNESIA_BASE="$dir/n$n/mnesia"
    export RABBITMQ_LOG_BASE="$dir/n$n/log"
    export RABBITMQ_PID_FILE="$dir/n$n/pid"
    export RABBITMQ_CONFIG_FILE="$dir/n$n/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
}

case $cmd in
setup)
    mkdir -p "$dir/home" "$dir/tls"
    echo "carehubbenchcookie" > "$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"
    echo "[rabbitmq_mqtt]." > "$dir/enabled_plugins"
    {
        printf '{"vhosts":[{"name":"/"}],"users":['
        sep=""
        for u in "$@"; do
            printf '%s{"name":"%s","password_hash":"","hashing_algorithm":"rabbit_password_hashing_sha256","tags":[]}' "$sep" "$u"
            sep=","
        done
        printf '],"permissions":['
        sep=""
        for u in "$@"; do
            printf '%s{"user":"%s","vhost":"/","configure":".*","write":".*","read":".*"}' "$sep" "$u"
            sep=","
        done
        printf ']}\n'
    } > "$dir/definitions.json"
    for n in 1 2 3; do
        mkdir -p "$dir/n$n/mnesia" "$dir/n$n/log"
        cat > "$dir/n$n/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((25600 + 10 * n))
mqtt.listeners.tcp = none
mqtt.listeners.ssl.default = $(mqtt_port "$n")
mqtt.ssl_cert_login = true
mqtt.allow_anonymous = false
ssl_cert_login_from = common_name
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
loopback_users = none
load_definitions = $dir/definitions.json
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = r1@localhost
cluster_formation.classic_config.nodes.2 = r2@localhost
cluster_formation.classic_config.nodes.3 = r3@localhost
CONF
    done
    chown -R rabbitmq:rabbitmq "$dir"
    ;;
start)
    n=$1
    node_env "$n"
    nohup nice rabbitmq-server > "$dir/n$n/stdout.log" 2>&1 &
    ;;
wait)
    n=$1
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$(mqtt_port "$n")") 2>/dev/null; then exit 0; fi
        sleep 0.1
    done
    echo "node $n did not listen on $(mqtt_port "$n")" >&2
    tail -20 "$dir/n$n/stdout.log" >&2
    exit 1
    ;;
kill)
    n=$1
    [ -f "$dir/n$n/pid" ] && kill -9 "$(cat "$dir/n$n/pid")" 2>/dev/null || true
    rm -f "$dir/n$n/pid"
    ;;
stop)
    for n in 1 2 3; do
        [ -f "$dir/n$n/pid" ] && kill "$(cat "$dir/n$n/pid")" 2>/dev/null || true
    done
    sleep 5
    for n in 1 2 3; do
        [ -f "$dir/n$n/pid" ] && kill -9 "$(cat "$dir/n$n/pid")" 2>/dev/null || true
        rm -f "$dir/n$n/pid"
    done
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
