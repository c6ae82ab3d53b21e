#!/usr/bin/env bash
# Runs the SDK's tests against a real local Custos deployment: starts
# `custos-testnet up` (the control plane and three signer nodes, each a
# process on loopback) in a temporary folder, hands its URL and root
# credentials to the tests, checks that src/generated/openapi.ts matches the
# server's OpenAPI document, runs `node --test`, and always stops the
# testnet.
#
# Environment:
#   CUSTOS_BIN_DIR      folder with custos-testnet, custos and custos-signer
#                       (default: ../target/debug relative to sdk-ts)
#   CUSTOS_DEV_PRIMES   pregenerated Paillier primes for the nodes, so ECDSA
#                       aux info takes seconds (default:
#                       ../protocol/testdata/primes.json; tests only)
#   CUSTOS_NO_ECDSA=1   start without the ECDSA committee (EVM tests skip)
#   CUSTOS_SKIP_TYPES_CHECK=1  do not compare the generated types
#   CUSTOS_UPDATE_TYPES=1      regenerate src/generated/openapi.ts from the
#                              testnet instead of comparing (then review and
#                              commit the diff)
#   CUSTOS_KEEP_TESTNET=1      keep the testnet folder (logs) afterwards
#   CUSTOS_TEST_FILES   test files to run (default: every .test.js, in order)
set -euo pipefail
cd "$(dirname "$0")/.."
sdk_dir="$(pwd)"
repo_root="$(cd .. && pwd)"

step() { printf '\n==> sdk-ts: %s\n' "$*" >&2; }

bin_dir="${CUSTOS_BIN_DIR:-$repo_root/target/debug}"
for binary in custos-testnet custos custos-signer; do
    if [ ! -x "$bin_dir/$binary" ]; then
        echo "sdk-ts: $bin_dir/$binary is missing: build the binaries (cargo build --bins) or set CUSTOS_BIN_DIR" >&2
        exit 1
    fi
done
bin_dir="$(cd "$bin_dir" && pwd)"
dev_primes="${CUSTOS_DEV_PRIMES:-$repo_root/protocol/testdata/primes.json}"

step "build (tsup) and compile the tests (tsc)"
npx --no-install tsup >/dev/null
rm -rf .test-build
npx --no-install tsc -p tsconfig.test.json

testnet_dir="$(mktemp -d "${TMPDIR:-/tmp}/custos-sdk-testnet.XXXXXX")"
up_pid=""
cleanup() {
    local status=$?
    if [ -f "$testnet_dir/testnet.json" ]; then
        "$bin_dir/custos-testnet" --dir "$testnet_dir" down >/dev/null 2>&1 || true
    fi
    if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
        kill "$up_pid" 2>/dev/null || true
    fi
    if [ -n "$up_pid" ]; then
        wait "$up_pid" 2>/dev/null || true
    fi
    if [ "${CUSTOS_KEEP_TESTNET:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        echo "sdk-ts: the testnet's folder (logs in logs/) stays in $testnet_dir" >&2
    else
        rm -rf "$testnet_dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

up_args=(--dir "$testnet_dir" up --nodes 3 --prime-pool-target 0)
if [ -f "$dev_primes" ]; then
    up_args+=(--dev-primes "$dev_primes")
fi
if [ "${CUSTOS_NO_ECDSA:-0}" = 1 ]; then
    up_args+=(--no-ecdsa)
fi
step "start a testnet in $testnet_dir (${bin_dir}/custos-testnet ${up_args[*]:2})"
started=$(date +%s.%N)
RUST_LOG="${RUST_LOG:-info,libp2p=warn}" "$bin_dir/custos-testnet" "${up_args[@]}" \
    >"$testnet_dir/up.log" 2>&1 </dev/null &
up_pid=$!
deadline=$(( $(date +%s) + 900 ))
until grep -q "Custos testnet is up" "$testnet_dir/up.log" 2>/dev/null; do
    if ! kill -0 "$up_pid" 2>/dev/null; then
        echo "sdk-ts: custos-testnet exited before it was up:" >&2
        cat "$testnet_dir/up.log" >&2
        exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "sdk-ts: the testnet was not up after 15 minutes:" >&2
        tail -n 40 "$testnet_dir/up.log" >&2
        exit 1
    fi
    sleep 0.2
done
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
step "testnet up in ${elapsed} s"

state="$testnet_dir/testnet.json"
field() { node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(s[process.argv[2]] ?? "")' "$state" "$1"; }
CUSTOS_URL="$(field url)"
CUSTOS_CLIENT_ID="$(field clientId)"
CUSTOS_CLIENT_SECRET="$(field clientSecret)"
CUSTOS_TESTNET_DIR="$testnet_dir"
CUSTOS_TESTNET_ECDSA="$(field ecdsaCommittee)"
export CUSTOS_URL CUSTOS_CLIENT_ID CUSTOS_CLIENT_SECRET CUSTOS_TESTNET_DIR CUSTOS_TESTNET_ECDSA

failed=0
if [ "${CUSTOS_SKIP_TYPES_CHECK:-0}" = 1 ]; then
    step "types check skipped (CUSTOS_SKIP_TYPES_CHECK=1)"
elif [ "${CUSTOS_UPDATE_TYPES:-0}" = 1 ]; then
    step "regenerating src/generated/openapi.ts from $CUSTOS_URL (CUSTOS_UPDATE_TYPES=1)"
    node scripts/openapi-types.mjs write
    # The SDK is compiled against the generated types: check it still is.
    npx --no-install tsc --noEmit -p tsconfig.json || failed=1
else
    step "types check: src/generated/openapi.ts against $CUSTOS_URL/api/v1/openapi.json"
    node scripts/openapi-types.mjs check || failed=1
fi

# Files run one at a time in name order: the last one stops the control plane.
if [ -n "${CUSTOS_TEST_FILES:-}" ]; then
    read -r -a files <<<"$CUSTOS_TEST_FILES"
else
    mapfile -t files < <(ls .test-build/*.test.js | sort)
fi
step "node --test (${#files[@]} files)"
node --test --test-concurrency=1 "${files[@]}" || failed=1

exit "$failed"
