#!/usr/bin/env bash
# Several Docker daemons on this one machine, each a swarm node of its own (test/e2e_three_nodes.sh):
# node N runs in the network namespace chexnet-nN (address 10.231.0.1N on the host bridge chexnet-sw0,
# 10.231.0.1 on the host), its own UTS namespace (hostname chexnet-nN: Swarm's node name) and its own
# PID namespace under docker-init, so that killing that one process loses the whole node at once
# (dockerd, its containerd, the shims and every container), as a server's power cut would.
# Its socket is unix:///run/chexnet-nodeN.sock; its images and state live in /var/lib/chexnet-nodes/nN.
#
# Usage: test/swarm_nodes.sh up [N...]     start nodes (default 1 2 3); node 1 makes the swarm (the guide's step)
#        test/swarm_nodes.sh start N        start node N's daemon (its namespace kept; a stopped node rejoins)
#        test/swarm_nodes.sh join N ROLE    node N joins node 1's swarm as manager or worker (join-token's command)
#        test/swarm_nodes.sh kill N         SIGKILL node N: its daemon, containerd, shims and containers
#        test/swarm_nodes.sh crash N CONTAINER   SIGKILL of one container's process on node N, from the host
#        test/swarm_nodes.sh down           remove everything, also what a cut-off run left (see STATE)
# Needs root, iproute2, iptables, unshare (util-linux) and dockerd/docker-init (Docker 20.10).
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../scripts/lib.sh
source "${ROOT}/scripts/lib.sh"
trap_errors

BRIDGE=chexnet-sw0
NET=10.231.0
DATA=/var/lib/chexnet-nodes
RUNDIR=/run/chexnet-nodes
# While nodes exist, this file lists them: 'down' reads it (and looks for the names below) after a cut-off run.
STATE=/var/tmp/chexnet-swarm-nodes.state

address() { echo "${NET}.1$1"; }
sock() { echo "unix:///run/chexnet-node$1.sock"; }
on_node() { local n="$1"; shift; DOCKER_HOST="$(sock "${n}")" docker "$@"; }
check_node() { [[ "$1" =~ ^[1-9]$ ]] || die "a node is a number from 1 to 9, not '$1'."; }

# The host's side: a bridge for the namespaces, and forwarding between its ports (Docker's FORWARD policy
# is DROP, and br_netfilter sends bridged frames through it).
host_bridge() {
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
    ip addr add "${NET}.1/24" dev "${BRIDGE}"
    ip link set "${BRIDGE}" up
  fi
  if iptables -L DOCKER-USER -n >/dev/null 2>&1 && ! iptables -C DOCKER-USER -i "${BRIDGE}" -o "${BRIDGE}" -j ACCEPT 2>/dev/null; then
    iptables -I DOCKER-USER -i "${BRIDGE}" -o "${BRIDGE}" -j ACCEPT
  fi
}

namespace() {
  local n="$1" ns="chexnet-n$1"
  [[ -e "/run/netns/${ns}" ]] && return 0
  ip netns add "${ns}"
  ip link add "chexnet-v$n" type veth peer name eth0 netns "${ns}"
  ip link set "chexnet-v$n" master "${BRIDGE}" up
  ip -n "${ns}" link set lo up
  ip -n "${ns}" addr add "$(address "$n")/24" dev eth0
  ip -n "${ns}" link set eth0 up
  ip -n "${ns}" route add default via "${NET}.1"
}

# start N: node N's dockerd, PID 1's child in a PID namespace of its own. Flags that let several run at
# once: data, exec and pid paths and socket of its own (its managed containerd follows exec-root and
# data-root); a cgroup parent of its own; docker0 on a range no other node or the host uses. And what the
# field guide asks of an offline node: DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1, or every task Swarm starts
# first waits for a pull from a registry it cannot reach (20 s here, each time, where DNS does not answer).
start() {
  local n="$1" tries=0
  check_node "$n"
  grep -qx "$n" "${STATE}" 2>/dev/null || echo "$n" >> "${STATE}"
  host_bridge
  namespace "$n"
  if on_node "$n" info >/dev/null 2>&1; then return 0; fi
  ! node_pid "$n" >/dev/null || die "node $n runs but its dockerd does not answer; see ${RUNDIR}/n$n/dockerd.log."
  mkdir -p "${DATA}/n$n" "${RUNDIR}/n$n"
  # what a killed node leaves in /run, which a real server's restart empties: pid files (a new PID namespace
  # reuses their numbers), sockets, containerd's state
  rm -rf "/run/chexnet-node$n.sock" "${RUNDIR}/n$n/dockerd.pid" "${RUNDIR}/n$n/exec"
  # nsenter, not 'ip netns exec': that mounts a new /sys, hiding the cgroup hierarchies dockerd needs.
  # shellcheck disable=SC2016  # the inner shell expands its own arguments
  setsid nsenter --net="/run/netns/chexnet-n$n" unshare --uts --pid --fork --mount-proc -- \
    sh -c 'hostname "$1" && shift && exec "$@"' sh "chexnet-n$n" \
    env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 docker-init -- dockerd --data-root "${DATA}/n$n" --exec-root "${RUNDIR}/n$n/exec" \
      --pidfile "${RUNDIR}/n$n/dockerd.pid" -H "$(sock "$n")" --cgroup-parent "chexnet-n$n" \
      --bip "10.232.$n.1/24" --storage-driver overlay2 --log-level warn \
      > "${RUNDIR}/n$n/dockerd.log" 2>&1 < /dev/null &
  echo $! > "${RUNDIR}/n$n/node.pid"
  until on_node "$n" info >/dev/null 2>&1; do
    (( tries++ < 120 )) || { tail -n 20 "${RUNDIR}/n$n/dockerd.log" >&2; die "node $n's dockerd did not answer in 60 s; its log is above."; }
    sleep 0.5
  done
  log "node $n: dockerd on $(sock "$n"), address $(address "$n"), hostname $(on_node "$n" info --format '{{.Name}}')"
}

# The process that holds node N's PID namespace: 'unshare', which nsenter became.
node_pid() {
  local file="${RUNDIR}/n$1/node.pid"
  [[ -f "${file}" ]] && kill -0 "$(cat "${file}")" 2>/dev/null && cat "${file}"
}

# kill N: the PID namespace's init (docker-init) is SIGKILLed, so the kernel kills every process in it.
kill_node() {
  local n="$1" pid init tries=0
  check_node "$n"
  pid="$(node_pid "$n")" || { warn "node $n is not running"; return 0; }
  init="$(pgrep -P "${pid}" | head -n 1)"  # unshare --fork's child: PID 1 of the node's namespace
  kill -9 "${init:-${pid}}" 2>/dev/null || true
  while kill -0 "${pid}" 2>/dev/null && (( tries++ < 100 )); do sleep 0.1; done
  rm -f "${RUNDIR}/n$n/node.pid"
}

# crash N CONTAINER: a crash, not an operator's stop: SIGKILL from the host of the container's process. Docker
# names the process by its PID in node N's PID namespace, so the kill is sent from inside that namespace.
crash() {
  local n="$1" container="$2" pid holder init
  holder="$(node_pid "$n")" || die "node $n is not running."
  pid="$(on_node "$n" inspect -f '{{.State.Pid}}' "${container}")" || die "node $n has no container ${container}."
  [[ "${pid}" =~ ^[1-9][0-9]*$ ]] || die "container ${container} on node $n runs no process."
  init="$(pgrep -P "${holder}" | head -n 1)"
  nsenter -t "${init}" --pid --mount -- kill -9 "${pid}"
  log "node $n: SIGKILL of ${container}'s process (PID ${pid} on the node)"
}

join() {
  local n="$1" role="$2" token
  [[ "${role}" == manager || "${role}" == worker ]] || die "a node joins as manager or worker, not '${role}'."
  [[ "$(on_node "$n" info --format '{{.Swarm.LocalNodeState}}')" == inactive ]] || return 0
  token="$(on_node 1 swarm join-token -q "${role}")"
  on_node "$n" swarm join --token "${token}" --advertise-addr "$(address "$n")" "$(address 1):2377" >/dev/null
  log "node $n joined the swarm as a ${role}"
}

up() {
  local n nodes=("$@")
  [[ ${#nodes[@]} -gt 0 ]] || nodes=(1 2 3)
  for n in "${nodes[@]}"; do start "$n"; done
}

# Everything, whatever a cut-off run left: nodes (killed: nothing of theirs needs a clean stop), their
# namespaces, the bridge, the forwarding rule, the data roots (GBs of images).
down() {
  local n ns
  for n in $( (cat "${STATE}" 2>/dev/null; find "${RUNDIR}" -maxdepth 1 -name 'n[1-9]' -printf '%f\n' 2>/dev/null | cut -c2) | sort -u); do
    kill_node "$n"
    # a node whose holder is gone but whose processes are not (a cut-off 'kill'): by its namespace
    ip netns pids "chexnet-n$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for ns in $(ip netns list | awk '$1 ~ /^chexnet-n[1-9]$/ { print $1 }'); do
    ip netns pids "${ns}" | xargs -r kill -9 2>/dev/null || true
    ip netns del "${ns}"
  done
  for n in 1 2 3 4 5 6 7 8 9; do ip link del "chexnet-v$n" 2>/dev/null || true; done
  ip link del "${BRIDGE}" 2>/dev/null || true
  while iptables -D DOCKER-USER -i "${BRIDGE}" -o "${BRIDGE}" -j ACCEPT 2>/dev/null; do :; done
  # The nodes' mounts lived in their own mount namespaces, gone with their processes; a mount seen here
  # (a namespace still held) is unmounted before its folder is removed.
  grep -o " ${DATA}/[^ ]*\| ${RUNDIR}/[^ ]*" /proc/mounts | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
  rm -rf "${DATA}" "${RUNDIR}" /run/chexnet-node[1-9].sock "${STATE}"
  log "swarm nodes removed"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  start) start "${2:?node number}" ;;
  join) check_node "${2:?node number}"; join "$2" "${3:?manager or worker}" ;;
  kill) kill_node "${2:?node number}" ;;
  crash) check_node "${2:?node number}"; crash "$2" "${3:?container}" ;;
  down) down ;;
  *) sed -n '8,14p' "$0"; exit 2 ;;
esac
