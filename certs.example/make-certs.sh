#!/usr/bin/env bash
# Makes a throwaway PKI for local trials of pix-auth-proxy (never for production):
#   ca.pem / ca-key.pem            a test CA
#   server.pem / server-key.pem    a server certificate for localhost and 127.0.0.1
#   client.pem / client-key.pem    a client certificate (PKCS#8 key), like Pagstar's .crt + .key
#   client-pkcs1-key.pem           the same RSA client key as PKCS#1 ("RSA PRIVATE KEY")
#   client-ec.pem / client-ec-key.pem   an ECDSA P-256 client certificate with a SEC1 key
#   client-modern.p12              client identity as PKCS#12, AES-256/PBES2 (password in p12-password)
#   client-legacy-rc2.p12          the same, RC2-40 + 3DES, as older tools and ICP-Brasil A1 files
#   client-legacy-3des.p12         the same, 3DES only
#   client-nopass.p12              the same without a password (like Efí's certificates)
#   client-secret                  a random client secret
# Usage: certs.example/make-certs.sh [OUTPUT_DIR]   (default: ./certs)
set -euo pipefail
out=${1:-certs}
mkdir -p "$out"
cd "$out"
umask 077

days=825
subj_ca="/O=pix-auth-proxy trial/CN=Trial CA"

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 3650 \
    -subj "$subj_ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # name subject extensions keyfile
    local name=$1 subj=$2 ext=$3 key=$4
    openssl req -new -key "$key" -subj "$subj" -out "$name.csr" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$days" -out "$name.pem" -extfile <(printf '%s\n' "$ext") 2>/dev/null
    rm -f "$name.csr"
}

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-key.pem 2>/dev/null
issue server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment" server-key.pem

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out client-key.pem 2>/dev/null
issue client "/O=Loja Exemplo LTDA/CN=loja-exemplo:12345678000199" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature" client-key.pem
openssl pkey -in client-key.pem -traditional -out client-pkcs1-key.pem 2>/dev/null

openssl ecparam -name prime256v1 -genkey -noout -out client-ec-key.pem 2>/dev/null
issue client-ec "/O=Loja Exemplo LTDA/CN=loja-exemplo-ec" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature" client-ec-key.pem

openssl rand -hex 16 > p12-password
openssl rand -hex 24 > client-secret
pass="file:p12-password"
openssl pkcs12 -export -in client.pem -inkey client-key.pem -certfile ca.pem \
    -name client -passout "$pass" -out client-modern.p12
openssl pkcs12 -export -legacy -in client.pem -inkey client-key.pem -certfile ca.pem \
    -name client -passout "$pass" -out client-legacy-rc2.p12 2>/dev/null \
  || openssl pkcs12 -export -in client.pem -inkey client-key.pem -certfile ca.pem -name client \
       -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-RC2-40 -macalg sha1 -passout "$pass" -out client-legacy-rc2.p12
openssl pkcs12 -export -in client.pem -inkey client-key.pem -certfile ca.pem -name client \
    -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 -passout "$pass" -out client-legacy-3des.p12
openssl pkcs12 -export -in client.pem -inkey client-key.pem -certfile ca.pem -name client \
    -keypbe NONE -certpbe NONE -passout pass: -out client-nopass.p12

rm -f ca.srl
echo "wrote $(pwd):"
ls -1
