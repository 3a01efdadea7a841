#!/usr/bin/env bash
# The kernel-shaped bandwidth lab: one network namespace per host (a coordinator and M workers),
# joined by veth pairs through a bridge, with a `tc tbf` rate limit on every host's link in both
# directions; runs one `lowband launch` job inside it, then tears everything down, also when the
# job fails or the script is interrupted.
#
#   deploy/netns-lab.sh [--workers M] [--rate R] [--prefix P] [--keep] -- LAUNCH_ARGS...
#   deploy/netns-lab.sh --check          # exit 0 if this machine can build the lab, 77 if not (and why)
#
#   --workers M   hosts besides the coordinator (default 4); passed on to `lowband launch`
#   --rate R      tbf rate of every worker's link, each direction, in tc's units (100mbit, 1gbit, 500kbit;
#                 mbps = megabytes/s); "none" leaves the links unshaped (default none)
#   --coordinator-rate R  the coordinator's own link (default none: a datacenter uplink that is not
#                 the bottleneck, as the simulator assumes; give a rate to make it one)
#   --queue B     tbf's queue limit in bytes on every shaped link (default: 100 ms of traffic, at least
#                 256 KiB, so slow links pace rather than drop; a small queue keeps TCP's acknowledgements
#                 from waiting behind bulk data, at the price of drops)
#   --prefix P    namespace names: P-hub (the bridge), P-coord (10.77.0.1), P-w<i> (10.77.0.<10+i>)
#   --keep        leave the namespaces up after the job (inspect with `ip netns exec P-w0 tc -s qdisc`)
#
# The kernel here has tbf but no netem, so latency is not added by the lab; for latency add
# --link-latency 20ms to LAUNCH_ARGS (a `lowband link` shaper per worker, run in the coordinator's
# namespace). ddp works too: the ranks' Gloo connections cross the shaped veths (GLOO_SOCKET_IFNAME=eth0).
# Needs root or CAP_NET_ADMIN + CAP_SYS_ADMIN (ip netns); refuses clearly otherwise.
# Environment: LOWBAND=path/to/lowband (default build/tools/lowband).
#
# Example (docs/bandwidth-lab.md):
#   deploy/netns-lab.sh --workers 4 --rate 10mbit -- --config configs/lab-gpt.yaml --algo ddp --out runs/lab/ddp-10mbit
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=4
RATE=none
COORD_RATE=none
QUEUE=auto
PREFIX=lb
KEEP=0
CHECK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=${2:?--workers needs a number}; shift 2 ;;
    --rate) RATE=${2:?--rate needs a value like 100mbit}; shift 2 ;;
    --coordinator-rate) COORD_RATE=${2:?--coordinator-rate needs a value like 1gbit}; shift 2 ;;
    --queue) QUEUE=${2:?--queue needs a byte count}; shift 2 ;;
    --prefix) PREFIX=${2:?--prefix needs a name}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "netns-lab: unknown option '$1' (see --help; lowband launch's options go after --)" >&2; exit 2 ;;
  esac
done
case "$QUEUE" in auto) ;; ''|*[!0-9]*) echo "netns-lab: --queue must be a byte count, got '$QUEUE'" >&2; exit 2 ;; esac
case "$WORKERS" in ''|*[!0-9]*) echo "netns-lab: --workers must be a positive number, got '$WORKERS'" >&2; exit 2 ;; esac
if [ "$WORKERS" -lt 1 ] || [ "$WORKERS" -gt 200 ]; then
  echo "netns-lab: --workers must be 1..200, got $WORKERS" >&2; exit 2
fi
for r in "$RATE" "$COORD_RATE"; do
  if [ "$r" != none ] && ! [[ "$r" =~ ^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$ ]]; then
    echo "netns-lab: a rate must look like 100mbit, 500kbit, 1gbit or 10mbps (tc units), got '$r'" >&2; exit 2
  fi
done
if [ ${#PREFIX} -gt 8 ] || ! [[ "$PREFIX" =~ ^[a-z][a-z0-9]*$ ]]; then
  echo "netns-lab: --prefix must be 1-8 lowercase letters/digits starting with a letter, got '$PREFIX'" >&2; exit 2
fi

# Can we build namespaces and shape links here?
probe="${PREFIX}-probe$$"
why=""
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
  why="ip/tc not found (apt-get install iproute2, or run deploy/install-deps.sh)"
elif ! ip netns add "$probe" 2>/dev/null; then
  why="cannot create a network namespace (needs root or CAP_SYS_ADMIN + CAP_NET_ADMIN; in a container, run it with --cap-add NET_ADMIN --cap-add SYS_ADMIN or --privileged)"
else
  if ! ip netns exec "$probe" tc qdisc add dev lo root tbf rate 10mbit burst 32kb limit 64kb 2>/dev/null; then
    why="the kernel refuses a tc tbf qdisc (module sch_tbf missing?)"
  fi
  ip netns del "$probe" 2>/dev/null || true
fi
if [ -n "$why" ]; then
  echo "netns-lab: this machine cannot run the lab: $why" >&2
  exit 77
fi
if [ "$CHECK" = 1 ]; then
  echo "netns-lab: this machine can run the lab (ip netns + tc tbf work)"
  exit 0
fi
[ $# -gt 0 ] || { echo "netns-lab: nothing to run: give lowband launch's options after -- (see --help)" >&2; exit 2; }

BIN=${LOWBAND:-build/tools/lowband}
[ -x "$BIN" ] || { echo "netns-lab: $BIN not found: build first (cmake -S . -B build -G Ninja && cmake --build build)" >&2; exit 1; }
BIN=$(readlink -f "$BIN")

HOSTS=(coord)
for ((i = 0; i < WORKERS; i++)); do HOSTS+=("w$i"); done

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ]; then
    echo "netns-lab: --keep: namespaces ${PREFIX}-* left up (remove: for n in \$(ip netns list | awk '/^${PREFIX}-/{print \$1}'); do ip netns del \$n; done)"
    return "$rc"
  fi
  for h in hub "${HOSTS[@]}"; do ip netns del "${PREFIX}-$h" 2>/dev/null || true; done
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of an earlier run that was killed with SIGKILL.
for h in hub "${HOSTS[@]}"; do ip netns del "${PREFIX}-$h" 2>/dev/null || true; done

# tbf parameters for a rate: the bucket holds 2 ms of traffic, at least two full frames (a deeper
# bucket lets a small message through at line speed: 64 KiB would carry a 50 kB payload at 1 Mbit/s
# in no time; tbf segments GSO packets larger than the bucket itself), the queue 100 ms (at least
# 256 KiB, so slow links pace rather than drop) unless --queue gives its bytes.
tbf_args() {
  python3 - "$1" "$QUEUE" <<'EOF'
import re, sys
m = re.fullmatch(r"([0-9.]+)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)", sys.argv[1])
v, u = float(m.group(1)), m.group(2)
bits = v * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}[u]
burst = max(3028, int(bits / 8 * 0.002))
limit = max(262144, int(bits / 8 * 0.1)) if sys.argv[2] == "auto" else max(3028, int(sys.argv[2]))
print(f"rate {int(bits)}bit burst {burst} limit {limit}")
EOF
}

ip netns add "${PREFIX}-hub"
ip -n "${PREFIX}-hub" link add br0 type bridge
ip -n "${PREFIX}-hub" link set br0 up
ip -n "${PREFIX}-hub" link set lo up
for idx in "${!HOSTS[@]}"; do
  h=${HOSTS[$idx]}
  ns="${PREFIX}-$h"
  if [ "$h" = coord ]; then addr=10.77.0.1; else addr="10.77.0.$((10 + idx - 1))"; fi
  ip netns add "$ns"
  ip link add "${PREFIX}t$h" type veth peer name "${PREFIX}p$h"
  ip link set "${PREFIX}t$h" netns "$ns"
  ip -n "$ns" link set "${PREFIX}t$h" name eth0
  ip link set "${PREFIX}p$h" netns "${PREFIX}-hub"
  ip -n "${PREFIX}-hub" link set "${PREFIX}p$h" master br0 up
  ip -n "$ns" addr add "$addr/16" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  rate=$RATE
  [ "$h" = coord ] && rate=$COORD_RATE
  if [ "$rate" != none ]; then
    # upload: the host's own egress; download: the bridge port's egress towards the host
    # shellcheck disable=SC2046
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf $(tbf_args "$rate")
    # shellcheck disable=SC2046
    ip netns exec "${PREFIX}-hub" tc qdisc add dev "${PREFIX}p$h" root tbf $(tbf_args "$rate")
  fi
done
echo "netns-lab: ${#HOSTS[@]} hosts (${PREFIX}-coord 10.77.0.1, ${PREFIX}-w0..w$((WORKERS - 1)) 10.77.0.10..), worker links: ${RATE} each way, coordinator link: ${COORD_RATE}"

rate_flag=()
[ "$RATE" != none ] && rate_flag=(--netns-rate "$RATE")
set +e
"$BIN" launch --workers "$WORKERS" --netns "$PREFIX" "${rate_flag[@]}" "$@"
rc=$?
set -e
if [ "$RATE" != none ]; then
  echo "netns-lab: tbf counters (sent bytes / dropped packets) on worker 0's link:"
  ip netns exec "${PREFIX}-w0" tc -s qdisc show dev eth0 | sed -n '2p' | sed 's/^/  /'
fi
exit $rc
