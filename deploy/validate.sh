#!/usr/bin/env bash
# Checks the deployment files on this machine, with no docker, kubectl, cluster or Slurm needed:
#   - shellcheck on every deploy/**/*.sh and on deploy/slurm/site.sbatch
#   - yamllint on every YAML file under deploy/ (config: deploy/.yamllint)
#   - systemd-analyze verify on deploy/systemd/*.service (skipped without systemd-analyze)
#   - site.sbatch's argument handling: errors, --help, --dry-run
#   - deploy/make-certs.sh: its error exits; a run's CA, server and client certificates verify
#   - consistency: the k8s ConfigMap holds configs/brown-gpt.yaml; the Job's completions, parallelism
#     and LOWBAND_WORKERS agree; every coordinator command checkpoints and every Compose/k8s command
#     uses --tls-dir; the TLS Secrets name make-certs.sh's files; the Dockerfile's COPY sources exist
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

# ---- make-certs.sh: its error exits, then a run's files checked with openssl
certs_check() { # certs_check WHAT PATTERN ARGS...: expects exit 2 and PATTERN in the output
  local what=$1 pattern=$2 rc
  shift 2
  bash deploy/make-certs.sh "$@" >"$tmp/certs.out" 2>&1
  rc=$?
  if [ $rc -ne 2 ] || ! grep -q -e "$pattern" "$tmp/certs.out"; then
    fail make-certs "$what: exit $rc, expected 2 and '$pattern'" "$(cat "$tmp/certs.out")"
  else
    ok "make-certs: $what"
  fi
}
certs_check "no output directory -> error" "missing the output directory" --server-name a
certs_check "no --server-name -> error" "missing --server-name" "$tmp/certs-none"
certs_check "bad --days -> error" "positive number of days" "$tmp/certs-none" --server-name a --days x
if ! command -v openssl >/dev/null 2>&1; then
  fail make-certs "openssl is not installed (apt-get install openssl)"
elif ! out=$(bash deploy/make-certs.sh "$tmp/certs" --server-name lowband-coordinator --server-name 10.0.0.7 2>&1); then
  fail make-certs "a run's certificates" "$out"
else
  c="$tmp/certs"
  problems=""
  openssl verify -CAfile "$c/ca.crt" "$c/coordinator/tls.crt" "$c/worker/tls.crt" >/dev/null 2>&1 ||
    problems+="the certificates do not verify against ca.crt; "
  san=$(openssl x509 -in "$c/coordinator/tls.crt" -noout -ext subjectAltName 2>&1)
  grep -q "DNS:lowband-coordinator, IP Address:10.0.0.7" <<<"$san" || problems+="server SAN is '$san'; "
  for f in ca.key coordinator/tls.key worker/tls.key; do
    [ "$(stat -c %a "$c/$f")" = 600 ] || problems+="$f is not mode 0600; "
  done
  for f in coordinator/ca.crt worker/ca.crt; do cmp -s "$c/ca.crt" "$c/$f" || problems+="$f is not the CA; "; done
  certs_check "existing CA -> refused" "already holds a run's CA" "$c" --server-name a
  if ! bash deploy/make-certs.sh "$tmp/certs-tls" --server-name a --no-mutual >/dev/null 2>&1 ||
    [ -e "$tmp/certs-tls/worker/tls.crt" ] || [ -e "$tmp/certs-tls/coordinator/ca.crt" ]; then
    problems+="--no-mutual still makes client certificates (or failed); "
  fi
  if [ -z "$problems" ]; then
    ok "make-certs: CA, server (SAN DNS+IP) and client certificates verify; keys 0600; --no-mutual"
  else
    fail make-certs "${problems%; }"
  fi
fi

# ---- consistency between files
if out=$(python3 - "$tmp/certs" <<'EOF' 2>&1
import os, sys, yaml
problems = []
cm = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
if cm["data"]["run.yaml"] != open("configs/brown-gpt.yaml").read():
    problems.append("deploy/k8s/configmap.yaml's run.yaml differs from configs/brown-gpt.yaml: copy it again")
job = yaml.safe_load(open("deploy/k8s/workers-job.yaml"))
env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
counts = {job["spec"]["completions"], job["spec"]["parallelism"], int(env["LOWBAND_WORKERS"])}
if len(counts) != 1:
    problems.append("workers-job.yaml: completions, parallelism and LOWBAND_WORKERS differ")
# Every coordinator command checkpoints; every lowband process of Compose and Kubernetes serves or
# dials TLS from --tls-dir; systemd and Slurm take LOWBAND_TLS_DIR from their environment.
for f in ["deploy/docker/compose.yaml", "deploy/k8s/coordinator.yaml", "deploy/systemd/lowband-coordinator.service"]:
    if "--checkpoint-dir" not in open(f).read():
        problems.append(f + ": the coordinator command lacks --checkpoint-dir")
for f in ["deploy/docker/compose.yaml", "deploy/k8s/coordinator.yaml", "deploy/k8s/workers-job.yaml"]:
    text = open(f).read()
    if text.count("exec lowband ") != text.count("--tls-dir /etc/lowband/tls"):
        problems.append(f + ": a lowband command without --tls-dir /etc/lowband/tls")
if "LOWBAND_TLS_DIR=" not in open("deploy/systemd/lowband.env.example").read():
    problems.append("deploy/systemd/lowband.env.example lacks LOWBAND_TLS_DIR")
# The TLS Secrets name the files make-certs.sh writes.
kust = yaml.safe_load(open("deploy/k8s/kustomization.yaml"))
certs = sys.argv[1]
for gen in kust["secretGenerator"]:
    for entry in gen.get("files", []):
        path = entry.split("=", 1)[-1]
        if path.startswith("secrets/tls/") and not os.path.isfile(os.path.join(certs, path[len("secrets/tls/"):])):
            problems.append("kustomization.yaml: " + gen["name"] + " takes " + path + ", which make-certs.sh does not write")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
); then
  ok "consistency: k8s ConfigMap = configs/brown-gpt.yaml; Job counts agree; coordinators checkpoint; TLS everywhere"
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
  cp -r "$tmp/certs" "$tmp/k8s/secrets/tls"
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
