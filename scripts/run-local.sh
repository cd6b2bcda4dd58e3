#!/usr/bin/env bash
# `make run`: migrate the embedded SQLite database, make sure a demo login exists,
# then start the Procfile's web and worker processes together (honcho).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export PORT="${1:-${PORT:-5000}}"
mkdir -p instance
if [ -z "${SECRET_KEY:-}" ]; then
  # A key for this machine only, kept so sessions survive restarts.
  [ -s instance/secret_key ] || python -c 'import secrets; print(secrets.token_hex(32))' > instance/secret_key
  chmod 600 instance/secret_key
  SECRET_KEY="$(cat instance/secret_key)"
  export SECRET_KEY
fi
export ALLOW_PRIVATE_CALLBACK_URLS="${ALLOW_PRIVATE_CALLBACK_URLS:-true}"
flask --app app db upgrade
flask --app app demo-login
echo "Open http://localhost:${PORT}/ (Ctrl-C stops the web and worker processes)"
exec honcho start -f Procfile web worker
