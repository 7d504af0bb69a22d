#!/usr/bin/env bash
# Boots systemd in a container of the debootstrapped Debian image ($IMAGE), installs the
# debs given as arguments (agent, coordinator; optionally their next revision) with apt, so
# their maintainer scripts enable and start the units under a real systemd. Then: joins the
# agent to the coordinator as README.md says; checks drover-agent is active and `drover
# nodes` lists it; runs a service whose container must survive an agent stop and restart;
# upgrades (both services restart, the workload does not); removes (both services stop).
# The agent reaches the host's Docker through its socket, mounted in.
#
# Where this machine cannot boot systemd in a container, it prints "SKIPPED: <reason>" and
# exits 0; any other failure prints "FAIL: …" and exits 1.
set -euo pipefail
: "${IMAGE:?IMAGE must name the Debian image with systemd}"
AGENT_DEB=$1
COORDINATOR_DEB=$2
# Optional: the next revision, to upgrade to under systemd.
AGENT_UPGRADE_DEB=${3:-}
COORDINATOR_UPGRADE_DEB=${4:-}
CONTAINER=drover-pkg-boot-$$

fail() {
  echo "FAIL: $*" >&2
  echo "--- journal of the boot container ---" >&2
  docker exec "$CONTAINER" journalctl --no-pager -n 80 -u drover-agent -u drover-coordinator >&2 || true
  exit 1
}
skip() {
  echo "SKIPPED: systemd boot test: $*"
  exit 0
}
cleanup() {
  # The agent's workload runs on the host's engine: remove it with the boot container.
  if [ -n "${NODE:-}" ]; then
    docker ps -aq --filter "label=drover.node=$NODE" | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

in_ct() { docker exec -i -e DEBIAN_FRONTEND=noninteractive "$CONTAINER" /bin/sh -euc "$1"; }

# Waits up to $1 seconds for the shell condition $2 inside the container.
wait_for() {
  local deadline=$((SECONDS + $1))
  until in_ct "$2" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}

# systemd needs to manage cgroups and mount namespaces: --privileged when this machine
# allows it, else every capability this process has (a sandbox may withhold a few).
run_args=(--cgroupns=private --tmpfs /run --tmpfs /run/lock --tmpfs /tmp
  -v /var/run/docker.sock:/run/docker.sock)
if ! docker run --rm --privileged "$IMAGE" true >/dev/null 2>&1; then
  caps=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  names=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
    linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner
    sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice
    sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap
    mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf
    checkpoint_restore)
  run_args+=(--cap-add ALL --security-opt seccomp=unconfined --security-opt apparmor=unconfined)
  for i in "${!names[@]}"; do
    if (((0x$caps >> i & 1) == 0)); then
      run_args+=(--cap-drop "${names[$i]}")
      echo "note: this machine withholds CAP_${names[$i]^^}; the container runs without it"
    fi
  done
else
  run_args+=(--privileged)
fi

if ! err=$(docker run -d --name "$CONTAINER" "${run_args[@]}" "$IMAGE" /sbin/init 2>&1); then
  skip "docker cannot start a container with /sbin/init here: $(echo "$err" | grep -m1 .)"
fi
if ! wait_for 60 'state=$(systemctl is-system-running || true); [ "$state" = running ] || [ "$state" = degraded ]'; then
  skip "systemd did not finish booting in the container within 60s (state: $(in_ct 'systemctl is-system-running' 2>&1 || true))"
fi
echo "systemd $(in_ct 'systemctl --version | head -1 | cut -d" " -f2') booted in the container: $(in_ct 'systemctl is-system-running' || true)"

docker cp "$AGENT_DEB" "$CONTAINER:/root/"
docker cp "$COORDINATOR_DEB" "$CONTAINER:/root/"
in_ct "apt-get install -y -q /root/$(basename "$COORDINATOR_DEB") /root/$(basename "$AGENT_DEB")" >/dev/null ||
  fail "apt install under systemd failed"

wait_for 30 'systemctl is-active -q drover-coordinator' || fail "drover-coordinator is not active after install"
echo "drover-coordinator: $(in_ct 'systemctl is-active drover-coordinator') (started by the package)"

# Join the agent as README.md says (the agent's gossip is on 7403 by default, the
# coordinator's on 7402, so both fit on one host).
# The coordinator came up secure with no step of ours: a CA, an admin token the root shell's
# drover reads, and mTLS on its API. The agent joins with one token in agent.toml.
wait_for 30 'test -s /var/lib/drover/admin.token' || fail "the coordinator wrote no admin token"
TOKEN=$(in_ct 'drover-coordinator token create --role agent --name boot-test 2>/dev/null') ||
  fail "drover-coordinator token create failed: $(in_ct 'drover-coordinator token create --role agent --name boot-test2' 2>&1)"
case $TOKEN in DRV1-*) ;; *) fail "not a join token: $TOKEN" ;; esac
in_ct "cat >>/etc/drover/agent.toml <<EOF

# Joined by packaging/tests/boot.sh.
coordinators = [\"127.0.0.1:7400\"]
gossip_seeds = [\"127.0.0.1:7402\"]
token = \"$TOKEN\"
EOF
systemctl restart drover-agent"
# Without the admin token nothing is answered.
if in_ct 'DROVER_TOKEN_FILE=/dev/null drover nodes' >/dev/null 2>&1; then
  fail "drover nodes answered without a token"
fi
NODE=$(in_ct 'cat /etc/machine-id')
wait_for 60 'systemctl is-active -q drover-agent' || fail "drover-agent is not active"
# Joined: the coordinator lists the node as ready (over its AgentLink) and alive in gossip.
wait_for 60 "drover nodes | grep $NODE | grep ready | grep -v 'not alive' | grep -q 'alive in gossip'" ||
  fail "drover nodes does not list the agent $NODE as ready and alive in gossip: $(in_ct 'drover nodes' 2>&1)"
echo "drover-agent: $(in_ct 'systemctl is-active drover-agent'); drover nodes:"
in_ct 'drover nodes'
in_ct 'for u in drover-agent drover-coordinator; do echo "$u restarts: $(systemctl show -P NRestarts $u)"; done'

# A workload the agent runs on the host's engine (the test image itself, sleeping): stopping
# the agent must leave its container running, and the restarted agent must adopt it. Its
# port makes the agent's proxy listen (on the node's address): the stopped agent hands the
# listener to its keeper, which the unit must let live (KillMode=process) until the next
# agent takes it over.
in_ct "cat >/root/sleeper.yaml <<EOF
apiVersion: drover.dev/v1
kind: Service
metadata:
  name: pkg-boot-sleeper
spec:
  image: $IMAGE
  command: [sleep, infinity]
  replicas: 1
  ports: [{containerPort: 8080, servicePort: 7000}]
EOF
drover apply -f /root/sleeper.yaml" || fail "drover apply failed"
workload() { docker ps -q --no-trunc --filter "label=drover.node=$NODE"; }
deadline=$((SECONDS + 60))
until [ -n "$(workload)" ]; do
  [ $SECONDS -lt $deadline ] || fail "the agent started no container for pkg-boot-sleeper"
  sleep 1
done
CID=$(workload)
STARTED=$(docker inspect -f '{{.State.StartedAt}}' "$CID")
echo "workload container ${CID:0:12} runs, started by the agent"
wait_for 30 'journalctl -u drover-agent | grep -q "service listener started service=pkg-boot-sleeper"' ||
  fail "the agent's proxy does not listen for pkg-boot-sleeper: $(in_ct 'journalctl -u drover-agent | tail -20')"
in_ct 'systemctl stop drover-agent'
[ "$(docker inspect -f '{{.State.Running}}' "$CID")" = true ] || fail "the workload stopped with the agent"
echo "agent stopped: workload ${CID:0:12} still running"
in_ct 'systemctl start drover-agent'
wait_for 30 'systemctl is-active -q drover-agent' || fail "drover-agent did not start again"
wait_for 30 'journalctl -u drover-agent | grep -q "took over the previous agent.s proxy sockets listeners=[1-9]"' ||
  fail "the restarted agent did not take the proxy's listener over from the keeper: $(in_ct 'journalctl -u drover-agent | grep -i -e keep -e hand -e took | tail -20')"
echo "agent restarted: its proxy's listener went through the keeper to the new agent"
wait_for 30 "drover status pkg-boot-sleeper | grep -Eq 'running|healthy'" ||
  fail "the restarted agent does not report the workload"
[ "$(workload)" = "$CID" ] && [ "$(docker inspect -f '{{.State.StartedAt}}' "$CID")" = "$STARTED" ] ||
  fail "the workload was replaced or restarted after the agent's restart"
echo "agent restarted: workload ${CID:0:12} adopted, never restarted"

if [ -n "$AGENT_UPGRADE_DEB" ]; then
  # The upgrade restarts both services (a new main PID) without stopping the workload.
  main_pids() { in_ct 'echo $(systemctl show -P MainPID drover-agent) $(systemctl show -P MainPID drover-coordinator)'; }
  pids=$(main_pids)
  docker cp "$AGENT_UPGRADE_DEB" "$CONTAINER:/root/"
  docker cp "$COORDINATOR_UPGRADE_DEB" "$CONTAINER:/root/"
  in_ct "apt-get install -y -q /root/$(basename "$COORDINATOR_UPGRADE_DEB") /root/$(basename "$AGENT_UPGRADE_DEB")" >/dev/null ||
    fail "apt install of the upgrade under systemd failed"
  wait_for 30 'systemctl is-active -q drover-agent && systemctl is-active -q drover-coordinator' ||
    fail "the services are not active after the upgrade"
  new_pids=$(main_pids)
  for i in 1 2; do
    [ "$(echo "$pids" | cut -d" " -f$i)" != "$(echo "$new_pids" | cut -d" " -f$i)" ] ||
      fail "the upgrade did not restart both services (main PIDs $pids, then $new_pids)"
  done
  [ "$(docker inspect -f '{{.State.StartedAt}}' "$CID")" = "$STARTED" ] ||
    fail "the workload was restarted by the upgrade"
  echo "upgraded under systemd: both services restarted (PIDs $pids -> $new_pids), workload ${CID:0:12} untouched"
fi

in_ct 'drover delete pkg-boot-sleeper' >/dev/null || true
# Removal stops the services.
in_ct 'apt-get remove -y -q drover-agent drover-coordinator' >/dev/null || fail "apt remove under systemd failed"
in_ct '! systemctl is-active -q drover-agent && ! systemctl is-active -q drover-coordinator' ||
  fail "apt remove left a service running"
echo "removed under systemd: both services stopped"
echo "boot test ok: both units active under systemd, agent $NODE joined, its workload survived an agent stop, restart and upgrade"
