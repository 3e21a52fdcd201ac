#!/usr/bin/env bash
# The kgateway frontend mTLS guide, served by the bundled reference gateway on this
# machine: run it in an empty directory, then use the guide's curl commands for
# `kubectl port-forward` (https://localhost:8443/get --resolve example.com:8443:127.0.0.1
# -H "Host: example.com", with and without --cert client-cert.pem --key client-key.pem
# --cacert ca-cert.pem). Ctrl-C stops it.
#
#   bash examples/kgateway-frontend-mtls/run.sh
#
# Needs openssl and free ports 8000, 8443, 8444 on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

# The guide's certificates, made with the guide's openssl commands (kept if present).
if [ ! -f client-cert.pem ]; then
  openssl genrsa -out ca-key.pem 2048 2>/dev/null
  openssl req -new -x509 -days 365 -key ca-key.pem -out ca-cert.pem -subj "/CN=Test CA/O=Test Org"
  openssl genrsa -out server-key.pem 2048 2>/dev/null
  openssl req -new -key server-key.pem -out server.csr -subj "/CN=example.com/O=Test Org"
  openssl x509 -req -days 365 -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out server-cert.pem -extensions v3_req \
    -extfile <(echo "[v3_req]"; echo "subjectAltName=DNS:example.com,DNS:*.example.com") 2>/dev/null
  openssl genrsa -out client-key.pem 2048 2>/dev/null
  openssl req -new -key client-key.pem -out client.csr -subj "/CN=client.example.com/O=Test Org"
  openssl x509 -req -days 365 -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out client-cert.pem -extensions v3_req \
    -extfile <(echo "[v3_req]"; echo "subjectAltName=DNS:example.com,DNS:*.example.com") 2>/dev/null
fi

# kubectl create secret tls https-cert / kubectl create configmap ca-cert, as files.
mkdir -p config state
cp "$here/gateway.yaml" config/gateway.yaml
b64() { base64 -w 0 "$1"; }
cat > config/certs.yaml <<YAML
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: https-cert, namespace: kgateway-system}
data: {tls.crt: $(b64 server-cert.pem), tls.key: $(b64 server-key.pem)}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ca-cert, namespace: kgateway-system}
data:
  ca.crt: |
$(sed 's/^/    /' ca-cert.pem)
YAML

"$python" -m mtls_conformance.echo --port 8000 --service httpbin --namespace httpbin &
echo_pid=$!
"$python" -m refgateway --config-dir config --state-dir state --listen-on-listener-ports &
gateway_pid=$!
# Ctrl-C or a kill of this script stops both servers (a signal ends the wait below).
trap 'kill "$echo_pid" "$gateway_pid" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
wait "$gateway_pid"
