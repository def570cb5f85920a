#!/usr/bin/env bash
# Local services Sentinel's tests talk to, all bound to loopback:
#
#   redis       127.0.0.1:6379   (redis-cli ping)
#   docker      unix:///var/run/docker.sock, plus image sentinel-test/busybox:latest
#   node        127.0.0.1:9100   (prometheus-node-exporter)
#   prometheus  127.0.0.1:9090   (scrapes node every 1s as job "node")
#
# Usage: scripts/services.sh start|stop|status
#
#   start   starts whatever does not already answer (anything that answers is
#           left alone), waits until each one answers, prints one OK/FAILED
#           line per service and exits non-zero naming the failures.
#   stop    stops what `start` launched (pid files in $STATE_DIR).
#   status  prints what answers; exits non-zero if something does not.
#
# Needs root (dockerd). No systemd is assumed: daemons are started directly in
# the background, in their own session, logging to $STATE_DIR/*.log.
set -euo pipefail

STATE_DIR=${SENTINEL_SERVICES_DIR:-/tmp/sentinel-services}
IMAGE=sentinel-test/busybox:latest
# Extra dockerd flags, e.g. SENTINEL_DOCKERD_FLAGS="--storage-driver=vfs".
read -r -a DOCKERD_EXTRA <<<"${SENTINEL_DOCKERD_FLAGS:-}"

SERVICES=(redis docker node prometheus)
PROM_QUERY='up{job="node"}'

log() { printf '%s\n' "services.sh: $*" >&2; }

# ---------------------------------------------------------------- helpers

# wait_for SECONDS CHECK_FUNCTION [PIDFILE]: poll every 0.5s until the check
# passes; give up early if the process named by PIDFILE has exited.
wait_for() {
    local deadline=$((SECONDS + $1)) pid=""
    [[ -n ${3:-} && -s ${3:-} ]] && pid=$(<"$3")
    while ((SECONDS < deadline)); do
        if "$2"; then return 0; fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "${3##*/}: pid $pid exited"
            return 1
        fi
        sleep 0.5
    done
    "$2"
}

# pid_alive PIDFILE NAME: the pid in PIDFILE is running and its command line
# mentions NAME (guards against a recycled pid).
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# spawn NAME CMD...: run CMD detached (own session, stdin closed, output to
# $STATE_DIR/NAME.log) and record its pid in $STATE_DIR/NAME.pid.
spawn() {
    local name=$1
    shift
    # setsid execs in place (a background job is never a group leader), so
    # $! is the daemon's own pid.
    setsid "$@" </dev/null >>"$STATE_DIR/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/$name.pid"
}

# show_log NAME: last lines of a service log, for failure reports.
show_log() {
    local f="$STATE_DIR/$1.log"
    if [[ -s $f ]]; then
        log "---- last lines of $f ----"
        tail -n 25 "$f" >&2
        log "----"
    fi
}

# ---------------------------------------------------------------- checks

redis_ok() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }
docker_ok() { docker info >/dev/null 2>&1; }
node_ok() { curl -sf -o /dev/null --max-time 5 http://127.0.0.1:9100/metrics; }
prometheus_ready() { curl -sf -o /dev/null --max-time 5 http://127.0.0.1:9090/-/ready; }
# up{job="node"} has value "1": node-exporter is actually being scraped.
# (-G --data-urlencode avoids curl's {} URL globbing.)
prometheus_ok() {
    curl -sf --max-time 5 -G --data-urlencode "query=$PROM_QUERY" \
        http://127.0.0.1:9090/api/v1/query 2>/dev/null | grep -q '"value":\[[0-9.e+]*,"1"\]'
}
# answers SERVICE: the service responds at all (prometheus: ready, even if
# not scraping yet).
answers() {
    case $1 in
        prometheus) prometheus_ready ;;
        *) "${1}_ok" ;;
    esac
}
image_ok() { docker image inspect "$IMAGE" >/dev/null 2>&1; }
container_ok() {
    [[ $(docker run --rm --network none "$IMAGE" sh -c 'echo ok' 2>>"$STATE_DIR/docker.log") == ok ]]
}

# ---------------------------------------------------------------- starters
# Each returns 0 when the service answers, and sets NOTE to a short remark.

start_redis() {
    if redis_ok; then NOTE="already running"; return 0; fi
    mkdir -p "$STATE_DIR/redis"
    # redis daemonizes itself and writes its own pid file.
    redis-server --bind 127.0.0.1 --port 6379 --protected-mode yes \
        --daemonize yes --pidfile "$STATE_DIR/redis.pid" \
        --logfile "$STATE_DIR/redis.log" --dir "$STATE_DIR/redis" \
        --appendonly yes --save "" >>"$STATE_DIR/redis.log" 2>&1 || true
    NOTE="started"
    wait_for 20 redis_ok || { NOTE="does not answer on 127.0.0.1:6379"; return 1; }
}

# dockerd needs mounted cgroups. A machine booted without systemd may have
# none: mount cgroup v2 (or fall back to cgroupfs-mount for v1).
ensure_cgroups() {
    local d=/sys/fs/cgroup
    [[ -f $d/cgroup.controllers || -d $d/memory || -d $d/cpu ]] && return 0
    log "no cgroup hierarchy under $d; mounting one"
    mkdir -p "$d"
    mount -t cgroup2 none "$d" 2>/dev/null && return 0
    if command -v cgroupfs-mount >/dev/null; then cgroupfs-mount && return 0; fi
    log "could not mount cgroups under $d"
    return 1
}

# launch_dockerd [EXTRA FLAGS...]
launch_dockerd() {
    # No bridge/NAT: containers only ever run with --network none, and this
    # avoids needing iptables or touching the host's network at all.
    # dockerd insists on writing its own pid file and refuses to start if the
    # file names a live process, so it gets one separate from docker.pid.
    # Callers have made sure no dockerd of ours is alive: any file is stale.
    rm -f "$STATE_DIR/dockerd.pid"
    spawn docker dockerd \
        --host=unix:///var/run/docker.sock \
        --pidfile="$STATE_DIR/dockerd.pid" \
        --bridge=none --iptables=false --ip-masq=false \
        "${DOCKERD_EXTRA[@]}" "$@"
}

# docker answers, or no dockerd of ours is alive (not starting, not stopping).
docker_settled() { docker_ok || ! pid_alive "$STATE_DIR/dockerd.pid" dockerd; }

start_docker() {
    NOTE="already running"
    # A dockerd of ours may still be starting up or shutting down.
    wait_for 30 docker_settled || true
    if ! docker_ok; then
        if pid_alive "$STATE_DIR/dockerd.pid" dockerd; then
            NOTE="a dockerd (pid $(<"$STATE_DIR/dockerd.pid")) is alive but does not answer"
            return 1
        fi
        ensure_cgroups || true
        NOTE="started"
        launch_dockerd
        if ! wait_for 60 docker_ok "$STATE_DIR/docker.pid"; then
            # Most likely the default storage driver (overlay2) does not work
            # on this filesystem, e.g. /var/lib/docker on overlayfs: retry
            # once with the always-working vfs driver.
            if pid_alive "$STATE_DIR/docker.pid" dockerd; then
                stop_pid docker dockerd
            fi
            log "dockerd did not come up; retrying with --storage-driver=vfs"
            NOTE="started with --storage-driver=vfs"
            launch_dockerd --storage-driver=vfs
            wait_for 60 docker_ok "$STATE_DIR/docker.pid" ||
                { NOTE="dockerd does not answer"; return 1; }
        fi
    fi
    if ! image_ok; then
        build_image || { NOTE="could not build $IMAGE"; return 1; }
        NOTE+=", built $IMAGE"
    fi
    container_ok || { NOTE="cannot run a container from $IMAGE"; return 1; }
    NOTE+=", $IMAGE runs"
}

# A minimal image: a static busybox plus a few applet symlinks, imported from
# a tarball (no registry access needed).
build_image() {
    local bb root rc=0
    bb=$(command -v busybox || true)
    [[ -x /bin/busybox ]] && bb=/bin/busybox
    [[ -n $bb ]] || { log "busybox not found (install busybox-static)"; return 1; }
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    for applet in sh sleep dd cat ls mkdir rm mount tail head echo yes true false; do
        ln -s busybox "$root/bin/$applet"
    done
    tar -C "$root" -cf - . |
        docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$IMAGE" \
            >>"$STATE_DIR/docker.log" 2>&1 || rc=$?
    rm -rf "$root"
    return "$rc"
}

start_node() {
    if node_ok; then NOTE="already running"; return 0; fi
    # The systemd collector only logs errors here (no systemd/dbus).
    spawn node prometheus-node-exporter --web.listen-address=127.0.0.1:9100 \
        --no-collector.systemd
    NOTE="started"
    wait_for 20 node_ok "$STATE_DIR/node.pid" ||
        { NOTE="does not answer on 127.0.0.1:9100"; return 1; }
}

write_prometheus_config() {
    cat >"$STATE_DIR/prometheus.yml" <<'EOF'
# Written by scripts/services.sh.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:9100"]
EOF
    promtool check config "$STATE_DIR/prometheus.yml" >>"$STATE_DIR/prometheus.log" 2>&1
}

start_prometheus() {
    if prometheus_ready; then
        NOTE="already running"
    else
        write_prometheus_config || { NOTE="promtool rejected $STATE_DIR/prometheus.yml"; return 1; }
        mkdir -p "$STATE_DIR/prometheus-data"
        spawn prometheus prometheus \
            --config.file="$STATE_DIR/prometheus.yml" \
            --web.listen-address=127.0.0.1:9090 \
            --storage.tsdb.path="$STATE_DIR/prometheus-data"
        NOTE="started"
        wait_for 30 prometheus_ready "$STATE_DIR/prometheus.pid" ||
            { NOTE="does not answer on 127.0.0.1:9090"; return 1; }
    fi
    wait_for 30 prometheus_ok || { NOTE+=", but $PROM_QUERY is not 1"; return 1; }
    NOTE+=", $PROM_QUERY = 1"
}

# ---------------------------------------------------------------- stop

# stop_pid NAME MATCH: TERM the pid in $STATE_DIR/NAME.pid, KILL after 30s.
stop_pid() {
    local pidfile="$STATE_DIR/$1.pid" pid i
    if ! pid_alive "$pidfile" "$2"; then
        rm -f "$pidfile"
        return 1
    fi
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$1 (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    local svc failed=() NOTE
    mkdir -p "$STATE_DIR"
    for svc in "${SERVICES[@]}"; do
        NOTE=""
        if "start_$svc"; then
            printf '%-11s OK      %s\n' "$svc" "$NOTE"
        else
            printf '%-11s FAILED  %s (log: %s)\n' "$svc" "$NOTE" "$STATE_DIR/$svc.log"
            show_log "$svc"
            failed+=("$svc")
        fi
    done
    if ((${#failed[@]})); then
        log "FAILED to start: ${failed[*]}"
        exit 1
    fi
}

cmd_stop() {
    local svc match
    for svc in prometheus node docker redis; do
        case $svc in
            redis) match=redis-server ;;
            docker) match=dockerd ;;
            node) match=prometheus-node-exporter ;;
            prometheus) match=prometheus ;;
        esac
        # dockerd's own pid file is a fallback in case docker.pid got lost.
        if stop_pid "$svc" "$match" ||
            { [[ $svc == docker ]] && stop_pid dockerd dockerd; }; then
            printf '%-11s stopped\n' "$svc"
        elif answers "$svc"; then
            printf '%-11s not started by this script; left running\n' "$svc"
        else
            printf '%-11s not running\n' "$svc"
        fi
    done
    rm -f "$STATE_DIR/dockerd.pid"
}

cmd_status() {
    local down=0
    report() {
        if "$2"; then
            printf '%-11s up      %s\n' "$1" "$3"
        else
            printf '%-11s DOWN    %s\n' "$1" "$3"
            down=1
        fi
    }
    report redis redis_ok "127.0.0.1:6379"
    report docker docker_ok "unix:///var/run/docker.sock"
    if docker_ok; then report image image_ok "$IMAGE"; fi
    report node node_ok "http://127.0.0.1:9100/metrics"
    report prometheus prometheus_ready "http://127.0.0.1:9090"
    report scrape prometheus_ok "$PROM_QUERY == 1"
    return "$down"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
