#!/bin/sh
# The `pki` job of compose.yaml: a federation CA and one certificate per party, each
# written into that party's own volume. Idempotent: a rerun issues only what is
# missing and refreshes the server's copy of the revocation list (run it again after
# `consortium ca revoke`). It runs as root with CAP_CHOWN and CAP_DAC_OVERRIDE alone,
# to hand each volume to the image's user (uid 10001) and read it again on a rerun;
# ca.key stays root-owned in the `ca` volume, which no long-running service mounts.
#
# Every `consortium` line is checked against the CLI by tests/deploy_files.
set -eu
umask 077

test -e /var/lib/consortium/ca/ca.crt || consortium ca init --dir /var/lib/consortium/ca

test -e /pki/server/credentials/server.crt || consortium ca issue --dir /var/lib/consortium/ca --server server --dns localhost --out /pki/server/credentials
test -e /pki/cleveland/credentials/cleveland.crt || consortium ca issue --dir /var/lib/consortium/ca --node cleveland --out /pki/cleveland/credentials
test -e /pki/hungarian/credentials/hungarian.crt || consortium ca issue --dir /var/lib/consortium/ca --node hungarian --out /pki/hungarian/credentials
test -e /pki/switzerland/credentials/switzerland.crt || consortium ca issue --dir /var/lib/consortium/ca --node switzerland --out /pki/switzerland/credentials
test -e /pki/va/credentials/va.crt || consortium ca issue --dir /var/lib/consortium/ca --node va --out /pki/va/credentials
test -e /pki/coordinator/credentials/coordinator.crt || consortium ca issue --dir /var/lib/consortium/ca --admin coordinator --out /pki/coordinator/credentials

# the server gets the CA's certificate and revocation list, never ca.key;
# written beside and renamed, so a running server never reads half a file
mkdir -p /pki/server/ca
for file in ca.crt crl.pem; do
    cp /var/lib/consortium/ca/$file /pki/server/ca/.$file.new
    mv /pki/server/ca/.$file.new /pki/server/ca/$file
done

# only the image's user (each party's container) reads its volume
chmod -R u=rwX,go= /pki
chown -R 10001:10001 /pki
echo "certificates ready:" && ls /pki/*/credentials
