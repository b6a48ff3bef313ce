#!/bin/sh
# Runs once, when the PostgreSQL data volume is empty (docker-entrypoint-initdb.d).
# One database per service, owned by a login role of the same name that can reach
# nothing else. Passwords come from the postgres-credentials Secret
# (<SERVICE>_DB_PASSWORD); DATABASE_URL in <service>-secrets uses the same ones.
set -eu

for svc in checkout stock customer loyalty; do
  var="$(echo "$svc" | tr '[:lower:]' '[:upper:]')_DB_PASSWORD"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v svc="$svc" -v password="$password" <<'SQL'
CREATE ROLE :"svc" LOGIN PASSWORD :'password';
CREATE DATABASE :"svc" OWNER :"svc";
REVOKE ALL ON DATABASE :"svc" FROM PUBLIC;
SQL
done
