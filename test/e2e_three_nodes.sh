# shellcheck shell=bash disable=SC2153  # VERSION, WORK, KEYS and the rest are test/e2e.sh's
# Step 5b of test/e2e.sh (sourced there: its functions guide, issue, log, die and settings): the field guide's
# "Regional centre" section, word for word, on three Swarm nodes, with a closed-loop load spread over the
# nodes' addresses (as a hospital's load balancer or DNS round robin would) through everything below.
#
# The nodes are three Docker daemons on this machine (test/swarm_nodes.sh: each in its own network, UTS and
# PID namespace, address 10.231.0.1N, hostname chexnet-nN, its own images and state). The engineer's work on
# node N is the guide's commands in node N's own folder with that node's Docker (DOCKER_HOST): its own
# product UUID file (the guide's route for a server without SMBIOS), the Linux section's steps 1-2, the
# Regional centre's step 1 (swarm-node.sh). Node 1 is the first manager: it makes the swarm (step 2),
# nodes 2 and 3 join as managers (the command 'docker swarm join-token manager' prints), and it deploys
# (step 3) with one cluster token for the three nodes' product_uuids. Events, each a phase of the load:
#   crash       SIGKILL of an API task's process: Swarm replaces it
#   node-lost   a whole node SIGKILLed (daemon, containerd, tasks): marked down, its API task started elsewhere
#   node-back   its daemon started again: it rejoins, runs nginx again and its address answers again
#   upgrade     the guide's upgrade with a second version: step 1 on every node, step 3 on the manager
#   rollback    the same with a broken third version: Swarm rolls it back
#   fourth-node a fourth node, prepared by step 1 but not in the token, joins: step 3 refuses to deploy, and
#               an API task Swarm puts there stays not ready, saying which line of the node list is missing
# Requests may fail only while a node is lost (those in flight on it: at most one per client); the failover
# times and each phase's counts are printed as a table and kept in ${WORK}/three-nodes.json.

NODES_SH="${ROOT}/test/swarm_nodes.sh"
CLIENTS=3
node_socket() { echo "unix:///run/chexnet-node$1.sock"; }
node_url() { echo "https://10.231.0.1$1:18443"; }
manager() { DOCKER_HOST="$(node_socket 1)" "$@"; }
on_node() { local n="$1"; shift; DOCKER_HOST="$(node_socket "$n")" "$@"; }
wait_for() { manager "${PYTHON}" "${ROOT}/test/waiting.py" "$@"; }
phase() { echo "$1" > "${WORK}/load/phase"; log "phase: $1"; }
SWARM="Regional centre (Docker Swarm)"
DEPLOY="--hostname localhost --https-port 18443 --http-port 18080"

# prepare_node N VERSION: the engineer on node N with the package VERSION: carried into node N's folder (the
# same folder for every version, so that nodes.txt gathers there), its UUID file made once, the Linux
# section's steps 1-2 and the Regional centre's step 1, which appends the node's line to ../nodes.txt.
prepare_node() {
  local n="$1" version="$2" folder="${WORK}/node$1"
  mkdir -p "${folder}"
  cp "${ROOT}/dist/chexnet-offline-${version}-cpu.tar.gz" "${ROOT}/dist/chexnet-offline-${version}-cpu.tar.gz.sig" \
    "${KEYS}/vendor_package.crt" "${folder}/"
  [[ -s "${folder}/site-uuid.txt" ]] || "${PYTHON}" -c 'import uuid; print(uuid.uuid4())' > "${folder}/site-uuid.txt"
  DOCKER_HOST="$(node_socket "$n")" UUID_FILE_ARG=../site-uuid.txt guide "${version}" "${folder}" 0 1
  DOCKER_HOST="$(node_socket "$n")" UUID_FILE_ARG=../site-uuid.txt SECTION="${SWARM}" \
    guide "${version}" "${folder}/chexnet-offline-${version}-cpu" 0
}
# deploy VERSION: the guide's step 3 on the first manager.
deploy() {
  DOCKER_HOST="$(node_socket 1)" SECTION="${SWARM}" SITE_OPTIONS="" DEPLOY_OPTIONS="${DEPLOY}" \
    guide "$1" "${WORK}/node1/chexnet-offline-$1-cpu" 2
}
# The nodes of the API tasks that run (healthy: Swarm holds a task in Starting until its health check passes).
api_nodes() {
  manager docker service ps chexnet_api --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' \
    | awk '$2 == "Running" { print $1 }' | sort
}

log "5b/6 the guide's Regional centre section on three Swarm nodes (three Docker daemons on this machine), under load"
if ! { ip netns add chexnet-probe && ip netns del chexnet-probe; } 2>/dev/null; then
  die "this kernel refuses a network namespace (ip netns add), which each of the three nodes needs."
fi
echo nodes >> "${OWNER}"  # from here the teardown removes the nodes (daemons, namespaces, bridge, data)
"${NODES_SH}" up 1 2 3
for n in 1 2 3; do prepare_node "$n" "${VERSION}"; done
# Every node's line into one nodes.txt on the first manager; the vendor's one token for all of them beside it.
cat "${WORK}/node2/nodes.txt" "${WORK}/node3/nodes.txt" >> "${WORK}/node1/nodes.txt"
[[ "$(wc -l < "${WORK}/node1/nodes.txt")" -eq 3 ]] || die "the node list does not have the three nodes' lines: $(cat "${WORK}/node1/nodes.txt")"
issue --product-uuid "$(cat "${WORK}/node1/site-uuid.txt")" --product-uuid "$(cat "${WORK}/node2/site-uuid.txt")" \
  --product-uuid "$(cat "${WORK}/node3/site-uuid.txt")" --subject region > "${WORK}/node1/token.txt"
DOCKER_HOST="$(node_socket 1)" SECTION="${SWARM}" MANAGER_ADDRESS=10.231.0.11 guide "${VERSION}" "${WORK}/node1/chexnet-offline-${VERSION}-cpu" 1
"${NODES_SH}" join 2 manager
"${NODES_SH}" join 3 manager
deploy "${VERSION}"
[[ "$(manager docker service ls --filter name=chexnet_nginx --format '{{.Replicas}}')" == 3/3 ]] || die "nginx does not run on each of the 3 nodes."
[[ "$(api_nodes | uniq | wc -l)" -eq 2 ]] || die "the 2 API tasks do not run on 2 different nodes: $(api_nodes | tr '\n' ' ')"

mkdir -p "${WORK}/load"
phase deployed
"${PYTHON}" "${ROOT}/test/closed_loop.py" --url "$(node_url 1)" --url "$(node_url 2)" --url "$(node_url 3)" \
  --token-file "${WORK}/node1/token.txt" --image "${SAMPLES}/nih/00000075_000.png" --clients "${CLIENTS}" \
  --stop-file "${WORK}/load/stop" --phase-file "${WORK}/load/phase" --out "${WORK}/load/progress.json" &
echo $! > "${WORK}/load/pid"
# load_ok N [URL]: wait until the load has N more answered predictions (from URL) than when called.
load_ok() {
  local start
  start="$("${PYTHON}" "${ROOT}/test/waiting.py" load-ok "${WORK}/load/progress.json" 0 ${2:+"$2"})"
  "${PYTHON}" "${ROOT}/test/waiting.py" load-ok "${WORK}/load/progress.json" "$((start + $1))" ${2:+"$2"} >/dev/null
}
load_ok 20

phase crash
read -r node task < <(manager docker service ps chexnet_api --filter desired-state=running --no-trunc --format '{{.Node}} {{.ID}}' | head -n 1)
"${NODES_SH}" crash "${node#chexnet-n}" "$(on_node "${node#chexnet-n}" docker ps -q --filter "label=com.docker.swarm.task.id=${task}")"
wait_for replaced chexnet_api "${task}" >/dev/null
load_ok 20

phase node-lost
lost="$(api_nodes | grep -vx chexnet-n1 | head -n 1)" || die "no API task runs on node 2 or 3: $(api_nodes | tr '\n' ' ')"
lost="${lost#chexnet-n}"
started="$(date +%s.%N)"
"${NODES_SH}" kill "${lost}"
down_s="$(wait_for node-status "chexnet-n${lost}" Down "${started}")"
moved_s="$(wait_for moved chexnet_api "chexnet-n${lost}" "${started}")"
log "node ${lost} lost: marked Down after ${down_s} s, its API task running on another node after ${moved_s} s"
load_ok 20

phase node-back
started="$(date +%s.%N)"
"${NODES_SH}" start "${lost}"
ready_s="$(wait_for node-status "chexnet-n${lost}" Ready "${started}")"
nginx_s="$(wait_for task-on chexnet_nginx "chexnet-n${lost}" "${started}")"
load_ok 10 "$(node_url "${lost}")"
answers_s="$("${PYTHON}" -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "${started}")"
log "node ${lost} back: Ready after ${ready_s} s, its nginx running after ${nginx_s} s, its address answering by ${answers_s} s"

phase upgrade
for n in 1 2 3; do prepare_node "$n" "${V2}"; done
deploy "${V2}"
for service in chexnet_api chexnet_nginx; do
  [[ "$(manager docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${service}")" == *":${V2}" ]] || die "${service} does not run ${V2}."
done
load_ok 20

phase rollback
for n in 1 2 3; do prepare_node "$n" "${V3}"; done
if deploy "${V3}" 2> "${WORK}/nodes-broken.log"; then die "the broken version deployed on three nodes without complaint"; fi
grep -q "rolled the stack back to ${V2}" "${WORK}/nodes-broken.log" || { cat "${WORK}/nodes-broken.log" >&2; die "swarm-deploy did not say it rolled back"; }
wait_for image chexnet_api "${V2}" >/dev/null
wait_for image chexnet_nginx "${V2}" >/dev/null
load_ok 20

phase fourth-node
"${NODES_SH}" up 4
prepare_node 4 "${V2}"
"${NODES_SH}" join 4 worker
if deploy "${V2}" 2> "${WORK}/fourth-node.log"; then die "step 3 deployed with a node that is not in the node list"; fi
grep -q "node chexnet-n4 is in the swarm but not in" "${WORK}/fourth-node.log" \
  || { cat "${WORK}/fourth-node.log" >&2; die "step 3 did not name the node missing from the node list"; }
# Swarm itself does not ask the node list: an API task it places on node 4 (4 replicas spread over 4 nodes)
# must stay not ready and say why, and nginx must send it nothing.
manager docker service scale --detach chexnet_api=4 >/dev/null
said="$(on_node 4 "${PYTHON}" "${ROOT}/test/waiting.py" health-says chexnet_api "has no line for node 'chexnet-n4'")"
log "the API task on node 4 (not in the token's node list): ${said}"
[[ "$(api_nodes | grep -cx chexnet-n4 || true)" -eq 0 ]] || die "an API task on node 4 turned healthy without a line in the node list."
load_ok 20
on_node 4 docker swarm leave --force >/dev/null
wait_for node-status chexnet-n4 Down "$(date +%s)" >/dev/null
manager docker node rm --force chexnet-n4 >/dev/null
"${NODES_SH}" kill 4
manager docker service scale --detach chexnet_api=2 >/dev/null
wait_for image chexnet_api "${V2}" >/dev/null
load_ok 20

phase end
touch "${WORK}/load/stop"
wait "$(cat "${WORK}/load/pid")"
# Each answered prediction has its audit record on the node whose API task answered it (chexnet_audit there).
audited=0
for n in 1 2 3; do
  count="$(on_node "$n" docker run --rm --network none -v chexnet_audit:/audit:ro "chexnet-api-cpu:${V2}" \
    sh -c 'cat /audit/audit-*.jsonl 2>/dev/null | grep -c input_sha256 || true')"
  log "node $n: ${count} audit records of predictions in its chexnet_audit volume"
  audited=$((audited + count))
done
"${PYTHON}" - "${WORK}/load/progress.json" "${WORK}/three-nodes.json" "${CLIENTS}" "${audited}" "${lost}" \
  "${down_s}" "${moved_s}" "${ready_s}" "${nginx_s}" "${answers_s}" <<'PY'
import json, sys
progress, out, clients, audited, lost = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
load = json.load(open(progress))
times = dict(zip(["down_s", "moved_s", "ready_s", "nginx_s", "answers_s"], map(float, sys.argv[6:11])))
json.dump({"load": load, "node_lost": lost, "times": times, "audited": audited}, open(out, "w"), indent=1)
print("| phase | answered | retried 503 | retried connect | failed | failures within | slowest answer |")
print("|---|---|---|---|---|---|---|")
for name, row in load["phases"].items():
    span = f"{row['last_failure'] - row['first_failure']:.1f} s" if row["failed"] else "-"
    print(f"| {name} | {row['ok']} | {row['retried_503']} | {row['retried_connect']} | {row['failed']} | {span} | {row['slowest_s']} s |")
print(f"node {lost} lost: Down {times['down_s']} s, API task elsewhere {times['moved_s']} s; back: Ready "
      f"{times['ready_s']} s, nginx {times['nginx_s']} s, answering {times['answers_s']} s; answers per address "
      f"{load['ok_by_url']}; audit records {audited}; failures {load['failures']}")
problems = [f"{name}: {row['failed']} failed" for name, row in load["phases"].items()
            if row["failed"] > (clients if name == "node-lost" else 0)]
problems += [f"{url} answered nothing" for url in load["ok_by_url"] if not load["ok_by_url"][url]]
if len(load["ok_by_url"]) != 3:
    problems.append(f"not every node's address answered: {load['ok_by_url']}")
if audited < load["ok"]:
    problems.append(f"{load['ok']} answered predictions but only {audited} audit records on the nodes")
if load["ok"] < 200:
    problems.append(f"only {load['ok']} answered predictions")
if problems:
    sys.exit("; ".join(problems))
PY
