#!/usr/bin/env bash
# `make run`: tokenbank on SQLite, with the built-in Stripe emulator beside it, wired
# together and the catalog synced, so a purchase works offline end to end.
# With STRIPE_SECRET_KEY already set (real Stripe test keys, in the environment or ./.env),
# no emulator is started.
#
# The built-in model emulator (`tokenbank llm-emulator`) runs beside it too, unless
# TOKENBANK_LLM_EMULATOR_URL names another upstream: the models file (catalogs/models.toml)
# points the gateway's models at it, so /v1/chat/completions works offline.
#
# `tokenbank worker` runs beside the service (timed jobs: expiring holds and grants,
# reconcile, sweep; and mail), its log in $VAR/worker-$PORT.log.
#
# Both ports are checked before anything is written: a second `make run` beside a running
# one stops at once and touches none of its files. The service, the emulator and the worker
# stop with this script, and this script with its parent (`make`): Ctrl-C or a signal to
# make stops everything.
set -euo pipefail
BIN="${BIN:-.venv/bin}"
PORT="${PORT:-8000}"
EMULATOR_PORT="${EMULATOR_PORT:-12111}"
LLM_EMULATOR_PORT="${LLM_EMULATOR_PORT:-12112}"
VAR="${TOKENBANK_VAR_DIR:-var}"
export TOKENBANK_PUBLIC_URL="${TOKENBANK_PUBLIC_URL:-http://127.0.0.1:$PORT}"

in_use() {
    "$BIN/python" - "$1" <<'PY'
import socket, sys
with socket.socket() as probe:
    # As the servers bind: a port left in TIME_WAIT by an instance just stopped is free.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(0)  # in use
sys.exit(1)
PY
}

# A Stripe key of your own (in the environment, or in ./.env, which tokenbank reads too)
# means real Stripe: no emulator, and nothing of Stripe's written to var/.env.
own_stripe="${STRIPE_SECRET_KEY:-}"
if [ -z "$own_stripe" ] && [ -z "${TOKENBANK_ENV_FILE+set}" ] && [ -f .env ] &&
    grep -Eq '^[[:space:]]*(export[[:space:]]+)?STRIPE_SECRET_KEY=.' .env; then
    own_stripe="from ./.env"
fi

ports=("$PORT")
[ -z "$own_stripe" ] && ports+=("$EMULATOR_PORT")
[ -z "${TOKENBANK_LLM_EMULATOR_URL:-}" ] && ports+=("$LLM_EMULATOR_PORT")
for port in "${ports[@]}"; do
    if in_use "$port"; then
        cat >&2 <<TXT
Port $port is in use: is tokenbank already running (another make run)?
Stop it (Ctrl-C in its terminal), or start this one on other ports:
    make run PORT=8001 EMULATOR_PORT=12121 LLM_EMULATOR_PORT=12122
TXT
        exit 1
    fi
done

children=()
stop() {
    trap - EXIT INT TERM
    [ "${#children[@]}" -gt 0 ] && kill "${children[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
# make does not pass a signal on to its recipe: stop when the parent is gone.
parent=$PPID
( while kill -0 "$parent" 2>/dev/null; do sleep 1; done; kill -TERM $$ 2>/dev/null ) &
children+=($!)

mkdir -p "$VAR"
"$BIN/tokenbank" db upgrade

if [ -z "$own_stripe" ]; then
    export STRIPE_SECRET_KEY="sk_test_local_emulator"
    export STRIPE_PUBLISHABLE_KEY="pk_test_local_emulator"
    export STRIPE_WEBHOOK_SECRET="whsec_local_emulator"
    export STRIPE_API_BASE="http://127.0.0.1:$EMULATOR_PORT"
    # One log per emulator port: an instance on other ports keeps its own.
    emulator_log="$VAR/stripe-emulator-$EMULATOR_PORT.log"
    "$BIN/tokenbank" stripe-emulator --port "$EMULATOR_PORT" \
        --state "$VAR/stripe-emulator-$EMULATOR_PORT.json" \
        --webhook-url "http://127.0.0.1:$PORT/webhooks/stripe" >"$emulator_log" 2>&1 &
    emulator=$!
    children+=("$emulator")
    for _ in $(seq 100); do
        kill -0 "$emulator" 2>/dev/null || {
            echo "the Stripe emulator did not start; its log, $emulator_log:" >&2
            tail -20 "$emulator_log" >&2
            exit 1
        }
        "$BIN/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "$STRIPE_API_BASE/_emulator/health" 2>/dev/null && break
        sleep 0.1
    done
    stripe_note="the built-in Stripe emulator at $STRIPE_API_BASE (test card 4242 4242 4242 4242)"
else
    stripe_note="Stripe with your STRIPE_SECRET_KEY ($([ -n "${STRIPE_SECRET_KEY:-}" ] && echo environment || echo ./.env))"
fi
if [ -z "${TOKENBANK_LLM_EMULATOR_URL:-}" ]; then
    export TOKENBANK_LLM_EMULATOR_URL="http://127.0.0.1:$LLM_EMULATOR_PORT/v1"
    llm_log="$VAR/llm-emulator-$LLM_EMULATOR_PORT.log"
    "$BIN/tokenbank" llm-emulator --port "$LLM_EMULATOR_PORT" --token-ms 20 >"$llm_log" 2>&1 &
    llm_emulator=$!
    children+=("$llm_emulator")
    for _ in $(seq 100); do
        kill -0 "$llm_emulator" 2>/dev/null || {
            echo "the model emulator did not start; its log, $llm_log:" >&2
            tail -20 "$llm_log" >&2
            exit 1
        }
        "$BIN/python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
            "http://127.0.0.1:$LLM_EMULATOR_PORT/_emulator/health" 2>/dev/null && break
        sleep 0.1
    done
fi
# The settings of this instance, for commands run from another terminal (reconcile,
# refund, ...): the CLI reads $VAR/.env (a ./.env of yours, or the environment, wins).
# Real Stripe keys are never written here: they stay in your environment.
{
    echo "# Written by make run for the instance at $TOKENBANK_PUBLIC_URL; rewritten at each start."
    echo "TOKENBANK_PUBLIC_URL=$TOKENBANK_PUBLIC_URL"
    echo "TOKENBANK_LLM_EMULATOR_URL=$TOKENBANK_LLM_EMULATOR_URL"
    if [ -n "${emulator:-}" ]; then
        echo "STRIPE_SECRET_KEY=$STRIPE_SECRET_KEY"
        echo "STRIPE_PUBLISHABLE_KEY=$STRIPE_PUBLISHABLE_KEY"
        echo "STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET"
        echo "STRIPE_API_BASE=$STRIPE_API_BASE"
    fi
} >"$VAR/.env.$$" && mv "$VAR/.env.$$" "$VAR/.env"
"$BIN/tokenbank" packages sync >/dev/null
# The timed jobs (docs/worker.md). One log per port, as the emulator's.
worker_log="$VAR/worker-$PORT.log"
"$BIN/tokenbank" worker >"$worker_log" 2>&1 &
children+=($!)

cat <<TXT

tokenbank is starting at $TOKENBANK_PUBLIC_URL  (API docs: $TOKENBANK_PUBLIC_URL/docs)
Payments go to $stripe_note.
Models (GET /v1/models) answer from $TOKENBANK_LLM_EMULATOR_URL (catalogs/models.toml).
  Buy tokens in the browser: $TOKENBANK_PUBLIC_URL/register, confirm the address from
  the mail at $TOKENBANK_PUBLIC_URL/_dev/mail, sign in, then Buy tokens.
  Create an API key for your app:  $BIN/tokenbank apikeys create --name my-app --scope admin
The worker (expiring holds and grants, reconcile, sweep, mail) logs to $worker_log.
Stop with Ctrl-C.

TXT
"$BIN/tokenbank" serve --host 127.0.0.1 --port "$PORT" &
children+=($!)
wait "$!"
