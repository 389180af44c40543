#!/usr/bin/env bash
# Runs every deploy/ file through the tool that consumes it, offline:
#
#   helm lint --strict and helm template of each example values file, each
#     render validated by kubernetes-validate --strict against the Kubernetes
#     1.30 (the chart's kubeVersion floor) and 1.37 schemas, as are
#     kubernetes/*.yaml (kubectl's --dry-run=client needs a cluster to map
#     kinds, so it is not used);
#   promtool check rules and promtool test rules of prometheus/; the Grafana
#     dashboard's queries through promtool's PromQL parser ($job and
#     $__rate_interval filled in);
#   docker-compose config of each Compose file (v1, which needs no engine),
#     check-jsonschema of each against the Compose specification (bundled
#     with check-jsonschema), and of compose/ha.yaml's resolved config that
#     it is the documented HA setup (advertise URLs, /readyz health, shared
#     backends, nginx waiting for healthy instances);
#   hadolint of docker/Dockerfile; yamllint of every YAML file here.
#
# The tools come from .ci/deploy-tools.sh (sourced when helm is missing).
# Prints one line per check and a timing; exits non-zero on the first failure.
set -euo pipefail

deploy=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$deploy")
if ! command -v helm >/dev/null || ! command -v promtool >/dev/null; then
    # shellcheck source=../.ci/deploy-tools.sh
    source "$repo/.ci/deploy-tools.sh"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$SECONDS
step() { echo "== $*"; }

# Helm.
chart=$deploy/helm/ncps
step "helm lint --strict (each values file)"
for values in "$chart"/values*.yaml; do
    helm lint --strict "$chart" -f "$values" | sed 's/^/   /'
done
for values in "$chart"/values*.yaml; do
    name=$(basename "$values" .yaml)
    helm template ncps "$chart" -f "$values" --namespace nix >"$out/$name.yaml"
    for k in 1.30 1.37; do
        step "kubernetes-validate --strict -k $k: helm template -f $(basename "$values")"
        # The ServiceMonitor is a CRD: no schema here, warned and skipped.
        kubernetes-validate --strict --quiet -k "$k" "$out/$name.yaml" 2>&1 | sed 's/^/   /'
        [ "${PIPESTATUS[0]}" = 0 ]
    done
done
for m in "$deploy"/kubernetes/*.yaml; do
    for k in 1.30 1.37; do
        step "kubernetes-validate --strict -k $k: kubernetes/$(basename "$m")"
        kubernetes-validate --strict --quiet -k "$k" "$m" | sed 's/^/   /'
        [ "${PIPESTATUS[0]}" = 0 ]
    done
done

# Prometheus and Grafana.
step "promtool check rules prometheus/ncps-alerts.yaml"
promtool check rules "$deploy/prometheus/ncps-alerts.yaml" | sed 's/^/   /'
step "promtool test rules prometheus/ncps-alerts.test.yaml"
(cd "$deploy/prometheus" && promtool test rules ncps-alerts.test.yaml) | sed 's/^/   /'
step "promtool check rules: every query of grafana/ncps-dashboard.json"
python3 - "$deploy/grafana/ncps-dashboard.json" >"$out/dashboard-rules.yaml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
exprs += [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    # label_values() is Grafana's, not PromQL: check its metric selector.
    if e.startswith("label_values("):
        e = e[len("label_values("):].split(",")[0]
    e = e.replace("$__rate_interval", "5m").replace("$job", ".*")
    print(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules "$out/dashboard-rules.yaml" | sed 's/^/   /'

# Compose. v1 predates the Compose specification's top-level `name:`: it
# reads a copy without that line (beside the original, for relative paths);
# check-jsonschema checks the originals against the specification's schema.
for f in "$deploy"/compose/*.yaml; do
    base=$(basename "$f" .yaml)
    step "check-jsonschema --builtin-schema vendor.compose-spec: compose/$base.yaml"
    check-jsonschema --builtin-schema vendor.compose-spec "$f" | sed 's/^/   /'
    step "docker-compose config: compose/$base.yaml"
    v1=$deploy/compose/.$base.v1.yaml
    grep -v '^name:' "$f" >"$v1"
    if (cd "$deploy/compose" && docker-compose -f "$(basename "$v1")" config) >"$out/compose-$base.yaml"; then
        rm -f "$v1"
    else
        rm -f "$v1"
        exit 1
    fi
    echo "   valid"
done
step "compose/ha.yaml is the documented HA setup (docs/high-availability.md)"
python3 - "$out/compose-ha.yaml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))["services"]
ncps = sorted(n for n, s in c.items() if s.get("image", "").startswith("ncps-rs"))
assert len(ncps) >= 2, f"not several instances: {ncps}"
shared = ["CACHE_DATABASE_URL", "CACHE_STORAGE_S3_BUCKET", "CACHE_REDIS_ADDRS", "CACHE_HOSTNAME"]
first = c[ncps[0]]["environment"]
for n in ncps:
    s = c[n]
    env = s["environment"]
    # Each instance advertises the name its peers reach it by.
    assert env.get("CACHE_ADVERTISE_URL") == f"http://{n}:8501", (n, env.get("CACHE_ADVERTISE_URL"))
    for k in shared:
        assert env.get(k) and env.get(k) == first.get(k), (n, k)
    # Healthy means ready: /readyz, not the image's /healthz.
    test = s["healthcheck"]["test"]
    assert any("/readyz" in t for t in test), (n, test)
lb = c["nginx"]["depends_on"]
for n in ncps:
    assert lb[n]["condition"] == "service_healthy", (n, lb.get(n))
print(f"   {len(ncps)} instances ({', '.join(ncps)}): advertise URLs by service name, shared database, bucket and Redis, healthcheck on /readyz, nginx waits for them healthy")
PY

# Dockerfile and YAML style.
step "hadolint docker/Dockerfile"
hadolint "$deploy/docker/Dockerfile"
echo "   clean"
step "yamllint (deploy/.yamllint)"
# From deploy/: the config's ignore patterns are relative paths.
(cd "$deploy" && yamllint -c .yamllint .)
echo "   clean"

echo "== deploy/check.sh: all passed in $((SECONDS - start)) s"
