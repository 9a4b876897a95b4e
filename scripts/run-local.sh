#!/usr/bin/env bash
# `make run`: tokenbank on SQLite, with the built-in Stripe emulator beside it, wired
# together and the catalog synced, so a purchase works offline end to end.
# With STRIPE_SECRET_KEY already set (real Stripe test keys), no emulator is started.
set -euo pipefail
BIN="${BIN:-.venv/bin}"
PORT="${PORT:-8000}"
EMULATOR_PORT="${EMULATOR_PORT:-12111}"
export TOKENBANK_PUBLIC_URL="${TOKENBANK_PUBLIC_URL:-http://127.0.0.1:$PORT}"

mkdir -p var
"$BIN/tokenbank" db upgrade

if [ -z "${STRIPE_SECRET_KEY:-}" ]; then
    export STRIPE_SECRET_KEY="sk_test_local_emulator"
    export STRIPE_PUBLISHABLE_KEY="pk_test_local_emulator"
    export STRIPE_WEBHOOK_SECRET="whsec_local_emulator"
    export STRIPE_API_BASE="http://127.0.0.1:$EMULATOR_PORT"
    "$BIN/tokenbank" stripe-emulator --port "$EMULATOR_PORT" \
        --webhook-url "http://127.0.0.1:$PORT/webhooks/stripe" >var/stripe-emulator.log 2>&1 &
    emulator=$!
    trap 'kill "$emulator" 2>/dev/null || true' EXIT INT TERM
    for _ in $(seq 100); do
        "$BIN/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "$STRIPE_API_BASE/_emulator/health" 2>/dev/null && break
        kill -0 "$emulator" 2>/dev/null || { echo "the Stripe emulator did not start" >&2; exit 1; }
        sleep 0.1
    done
    stripe_note="the built-in Stripe emulator at $STRIPE_API_BASE (test card 4242 4242 4242 4242)"
else
    stripe_note="Stripe with your STRIPE_SECRET_KEY"
fi
"$BIN/tokenbank" packages sync >/dev/null

cat <<TXT

tokenbank is starting at $TOKENBANK_PUBLIC_URL  (API docs: $TOKENBANK_PUBLIC_URL/docs)
Payments go to $stripe_note.
  Buy tokens in the browser: $TOKENBANK_PUBLIC_URL/register, confirm the address from
  the mail at $TOKENBANK_PUBLIC_URL/_dev/mail, sign in, then Buy tokens.
  Create an API key for your app:  $BIN/tokenbank apikeys create --name my-app --scope admin
Stop with Ctrl-C.

TXT
"$BIN/tokenbank" serve --host 127.0.0.1 --port "$PORT"
