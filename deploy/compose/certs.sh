#!/bin/sh
# Makes the compose stack's private CA and Mailpit's certificate (for the name `mailpit`) in the
# `certs` volume, once: Mailpit then requires STARTTLS and AUTH, and Pulse verifies Mailpit's
# certificate against this CA (PULSE_TLS_CA_FILE), as it would a provider's. Development only:
# the key is readable by every container that mounts the volume.
set -eu
cd /certs
[ -s mailpit.pem ] && exit 0
apk add --no-cache openssl >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Pulse dev CA" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=mailpit" \
  -keyout mailpit-key.pem -out mailpit.csr 2>/dev/null
printf 'subjectAltName=DNS:mailpit,DNS:localhost\n' > san.ext
openssl x509 -req -in mailpit.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
  -extfile san.ext -out mailpit.pem 2>/dev/null
chmod 644 mailpit-key.pem ca.pem mailpit.pem
echo "certs: CA and Mailpit certificate made"
