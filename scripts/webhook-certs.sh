#!/usr/bin/env bash
# Self-signed TLS bootstrap for the token-sidecar admission webhook, for clusters without cert-manager.
#
# The API server calls the webhook over HTTPS and verifies its certificate against the caBundle in the
# MutatingWebhookConfiguration, for the Service DNS name <service>.<namespace>.svc. This script makes:
#   OUT/ca.crt, OUT/ca.key    a private CA (reused on later runs if present: renewing the serving certificate then
#                             leaves the caBundle unchanged, so there is no window where the two disagree)
#   OUT/tls.crt, OUT/tls.key  the serving certificate (EC P-256) for the Service's DNS names, signed by the CA
#   OUT/secret.yaml           the kubernetes.io/tls Secret the webhook Deployment mounts
#   OUT/cabundle.b64          base64 of ca.crt, for webhooks[].clientConfig.caBundle
# and with --apply it applies the Secret and patches the caBundle into the MutatingWebhookConfiguration with kubectl.
# The webhook re-reads its certificate files when the Secret changes, so re-running this script renews in place.
#
# Usage: scripts/webhook-certs.sh [--out DIR] [--namespace NS] [--service NAME] [--secret NAME]
#                                 [--webhook-config NAME] [--days N] [--apply]
# Keep OUT/ca.key secret (or delete it and accept a new CA, and a caBundle change, at the next renewal).
set -euo pipefail

out=./webhook-certs
namespace=token-sidecar-system
service=token-sidecar-webhook
secret=token-sidecar-webhook-tls
webhook_config=token-sidecar
days=365
ca_days=3650
apply=false

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --namespace) namespace=$2; shift ;;
    --service) service=$2; shift ;;
    --secret) secret=$2; shift ;;
    --webhook-config) webhook_config=$2; shift ;;
    --days) days=$2; shift ;;
    --apply) apply=true ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done

command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
mkdir -p "$out"
chmod 700 "$out"
umask 077

if [ -s "$out/ca.key" ] && [ -s "$out/ca.crt" ]; then
  echo "reusing the CA in $out (delete ca.key/ca.crt for a new one)" >&2
else
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days "$ca_days" -sha256 \
    -subj "/CN=token-sidecar-webhook-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made a new CA in $out" >&2
fi

# The API server connects to <service>.<namespace>.svc; the other names cover in-cluster debugging. Go's TLS (the API
# server) ignores the CN, so the SANs are what matter.
sans="DNS:${service},DNS:${service}.${namespace},DNS:${service}.${namespace}.svc,DNS:${service}.${namespace}.svc.cluster.local"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$out/tls.key" -out "$out/tls.csr" -subj "/CN=${service}.${namespace}.svc" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -out "$out/tls.crt" -days "$days" -sha256 -extfile <(printf '%s\n' \
    "subjectAltName=${sans}" \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth") 2>/dev/null
rm -f "$out/tls.csr" "$out/ca.srl"
openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null

b64() { base64 <"$1" | tr -d '\n'; }
b64 "$out/ca.crt" >"$out/cabundle.b64"
cat >"$out/secret.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: ${secret}
  namespace: ${namespace}
  labels:
    app.kubernetes.io/name: token-sidecar-webhook
    app.kubernetes.io/part-of: token-sidecar
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$out/tls.crt")
  tls.key: $(b64 "$out/tls.key")
  ca.crt: $(b64 "$out/ca.crt")
EOF

echo "serving certificate for ${sans//DNS:/} valid until $(openssl x509 -in "$out/tls.crt" -noout -enddate | cut -d= -f2)" >&2

if $apply; then
  command -v kubectl >/dev/null || { echo "kubectl is required for --apply" >&2; exit 1; }
  kubectl apply -f "$out/secret.yaml"
  # JSON Patch `add` replaces an existing caBundle and creates a missing one.
  kubectl patch mutatingwebhookconfiguration "$webhook_config" --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$(cat "$out/cabundle.b64")\"}]"
else
  echo "next: kubectl apply -f $out/secret.yaml, then patch webhooks[0].clientConfig.caBundle of" >&2
  echo "      mutatingwebhookconfiguration/${webhook_config} with the content of $out/cabundle.b64 (or re-run with --apply)" >&2
fi
