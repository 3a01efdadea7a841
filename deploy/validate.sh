#!/usr/bin/env bash
# Checks the deployment files on this machine, with no docker, kubectl, cluster or Slurm needed:
#   - shellcheck on every deploy/**/*.sh and on deploy/slurm/site.sbatch
#   - yamllint on every YAML file under deploy/ (config: deploy/.yamllint)
#   - systemd-analyze verify on deploy/systemd/*.service (skipped without systemd-analyze)
#   - site.sbatch's argument handling: errors, --help, --dry-run
#   - consistency: the k8s ConfigMap holds configs/brown-gpt.yaml; the Job's completions, parallelism
#     and LOWBAND_WORKERS agree; the Dockerfile's COPY sources exist
#   - kubectl kustomize deploy/k8s, only when kubectl is installed (offline; no cluster)
# Prints one line per check and exits non-zero if any failed. Needs the Debian packages shellcheck
# and yamllint (python3-yaml comes with yamllint).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

failed=()
ok() { echo "ok    $*"; }
skip() { echo "skip  $*"; }
fail() { # fail NAME WHY [OUTPUT]
  echo "FAIL  $1: $2"
  [ -n "${3:-}" ] && printf '%s\n' "$3" | sed 's/^/      /'
  failed+=("$1")
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---- shellcheck
mapfile -t scripts < <(find deploy -type f \( -name '*.sh' -o -name '*.sbatch' \) | sort)
if ! command -v shellcheck >/dev/null 2>&1; then
  fail shellcheck "shellcheck is not installed (apt-get install shellcheck)"
elif out=$(shellcheck "${scripts[@]}" 2>&1); then
  ok "shellcheck: ${#scripts[@]} scripts (${scripts[*]})"
else
  fail shellcheck "findings" "$out"
fi

# ---- yamllint
mapfile -t yamls < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if ! command -v yamllint >/dev/null 2>&1; then
  fail yamllint "yamllint is not installed (apt-get install yamllint)"
elif out=$(yamllint --strict -f parsable -c deploy/.yamllint deploy/.yamllint "${yamls[@]}" 2>&1); then
  ok "yamllint: ${#yamls[@]} files + deploy/.yamllint"
else
  fail yamllint "findings" "$out"
fi

# ---- systemd units. verify checks that ExecStart's binary exists: where lowband is not installed
# at /usr/local/bin/lowband, /bin/true stands in for it. A template is verified as instance @0.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  skip "systemd: systemd-analyze not found (it comes with systemd)"
else
  note=""
  units=()
  for f in deploy/systemd/*.service; do
    name=$(basename "$f")
    case "$name" in *@.service) name="${name%@.service}@0.service" ;; esac
    if [ -x /usr/local/bin/lowband ]; then
      cp "$f" "$tmp/$name"
    else
      sed 's#/usr/local/bin/lowband#/bin/true#g' "$f" >"$tmp/$name"
      note=" (lowband not installed: /bin/true in its place)"
    fi
    units+=("$tmp/$name")
  done
  out=$(systemd-analyze verify "${units[@]}" 2>&1)
  rc=$?
  # verify also loads the units' dependencies; report only what concerns ours.
  mine=$(printf '%s\n' "$out" | grep -e lowband -e "$tmp" || true)
  if [ $rc -eq 0 ] && [ -z "$mine" ]; then
    ok "systemd: systemd-analyze verify ${#units[@]} units$note"
  else
    fail systemd "systemd-analyze verify (exit $rc)" "${mine:-$out}"
  fi
fi

# ---- site.sbatch argument handling, outside Slurm
sbatch_run() { # sbatch_run OUTFILE ARGS...: exit status of site.sbatch, its stdout+stderr in OUTFILE
  local outfile=$1
  shift
  env -u SLURM_JOB_ID -u LOWBAND_COORDINATOR -u LOWBAND_WORKER_ID -u LOWBAND_WORKERS -u LOWBAND_OUT \
    bash deploy/slurm/site.sbatch "$@" >"$outfile" 2>&1
}
slurm_check() { # slurm_check WHAT EXPECTED_STATUS(0|nonzero) PATTERN ARGS...
  local what=$1 want=$2 pattern=$3 rc
  shift 3
  sbatch_run "$tmp/sbatch.out" "$@"
  rc=$?
  if { [ "$want" = 0 ] && [ $rc -ne 0 ]; } || { [ "$want" = nonzero ] && [ $rc -eq 0 ]; }; then
    fail slurm "$what: exit $rc, expected $want" "$(cat "$tmp/sbatch.out")"
  elif ! grep -q -e "$pattern" "$tmp/sbatch.out"; then
    fail slurm "$what: output lacks '$pattern'" "$(cat "$tmp/sbatch.out")"
  else
    ok "slurm: $what"
  fi
}
slurm_check "no coordinator -> error" nonzero "no coordinator" --worker-id 0 --workers 2
slurm_check "bad HOST:PORT -> error" nonzero "must be HOST:PORT" --coordinator host --worker-id 0 --workers 2
slurm_check "--worker-id >= --workers -> error" nonzero "outside 0..1" --coordinator h:7000 --worker-id 2 --workers 2
slurm_check "--help -> usage, exit 0" 0 "--coordinator HOST:PORT" --help
# shellcheck disable=SC2016  # the literal $SLURM_PROCID that each task expands
slurm_check "--dry-run -> srun line with --rank" 0 '^srun .*--rank "\$SLURM_PROCID".* --worker-id 1 --workers 2 --ranks 1 --site-store ' \
  --dry-run --coordinator coord.example.org:50051 --worker-id 1 --workers 2

# ---- consistency between files
if out=$(python3 - <<'EOF' 2>&1
import sys, yaml
problems = []
cm = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
if cm["data"]["run.yaml"] != open("configs/brown-gpt.yaml").read():
    problems.append("deploy/k8s/configmap.yaml's run.yaml differs from configs/brown-gpt.yaml: copy it again")
job = yaml.safe_load(open("deploy/k8s/workers-job.yaml"))
env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
counts = {job["spec"]["completions"], job["spec"]["parallelism"], int(env["LOWBAND_WORKERS"])}
if len(counts) != 1:
    problems.append("workers-job.yaml: completions, parallelism and LOWBAND_WORKERS differ")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
); then
  ok "consistency: k8s ConfigMap = configs/brown-gpt.yaml; Job counts agree"
else
  fail consistency "k8s files" "$out"
fi
missing=()
while read -r -a words; do
  [ "${words[0]:-}" = COPY ] || continue
  case "${words[1]}" in --*) continue ;; esac # COPY --from=build: not from the context
  for src in "${words[@]:1:${#words[@]}-2}"; do [ -e "$src" ] || missing+=("$src"); done
done <deploy/docker/Dockerfile
if [ ${#missing[@]} -eq 0 ]; then
  ok "consistency: every COPY source of deploy/docker/Dockerfile exists"
else
  fail consistency "deploy/docker/Dockerfile copies what does not exist: ${missing[*]}"
fi

# ---- kustomize render (optional): a throwaway token stands in for deploy/k8s/secrets/run.env
if ! command -v kubectl >/dev/null 2>&1; then
  skip "kustomize: kubectl not found"
else
  cp -r deploy/k8s "$tmp/k8s"
  mkdir -p "$tmp/k8s/secrets"
  echo "token=validate-only" >"$tmp/k8s/secrets/run.env"
  if out=$(kubectl kustomize "$tmp/k8s" 2>&1); then
    ok "kustomize: kubectl kustomize deploy/k8s renders $(grep -c '^kind:' <<<"$out") objects"
  else
    fail kustomize "kubectl kustomize" "$out"
  fi
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "validate: FAILED: ${failed[*]}"
  exit 1
fi
echo "validate: all checks passed"
