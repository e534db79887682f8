#!/bin/sh
# Refuses to start the stack with a secret that is empty, short or a known placeholder.
# Compose runs it first (service check-secrets); every other service waits for it to succeed.
#   sh infra/check-secrets.sh   (reads the variables from its environment)
# Names checked: BRAINTL_SECRETS (space-separated), by default every secret infra/.env holds.
set -u
names="${BRAINTL_SECRETS:-AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY POSTGRES_PASSWORD RAY_AUTH_TOKEN PREFECT_AUTH_STRING}"
bad=0
for name in $names; do
  case "$name" in *[!A-Z0-9_]*|"") echo "check-secrets: bad variable name $name" >&2; exit 2 ;; esac
  eval "value=\${$name:-}"
  lower=$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')
  case "$lower" in
    "") why="is empty" ;;
    *change-me*|*changeme*|*change_me*|*placeholder*|*example*|*replace*|*your-*|*xxxx*|*secret123*|*password123*|admin:admin|minioadmin*)
      why="is a placeholder value" ;;
    *) why="" ;;
  esac
  if [ -z "$why" ] && [ "${#value}" -lt 16 ]; then
    why="is ${#value} characters long, under 16"
  fi
  case "$value" in
    *[!A-Za-z0-9:._-]*) [ -z "$why" ] && why="holds characters outside A-Z a-z 0-9 : . _ - (URLs and JSON embed it)" ;;
  esac
  if [ -n "$why" ]; then
    echo "refusing to start: $name $why. Set it in infra/.env to a random value," \
      "e.g. \$(openssl rand -hex 24) (PREFECT_AUTH_STRING: admin:\$(openssl rand -hex 24))." >&2
    bad=1
  fi
done
exit "$bad"
