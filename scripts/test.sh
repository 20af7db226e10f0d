#!/usr/bin/env bash
# The body of `make test`, run under scripts/with-services.sh: every test,
# verbose, into .cache/test.log as well as the terminal; then no test may
# have skipped (KTSINK_INTEGRATION=1 says every integration test must run);
# then the mutants, all but those marked slow (make mutants runs every one).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
log=.cache/test.log
"${GO:-go}" test -count=1 -v -timeout "${TEST_TIMEOUT:-40m}" ./... 2>&1 | tee "$log"
skipped=$(grep -- '--- SKIP' "$log" || true)
if [ "${KTSINK_CHAOS:-}" != 1 ]; then # make test TEST_CHAOS=0 leaves the soak out on purpose
  skipped=$(grep -v -e '--- SKIP: TestChaos ' <<<"$skipped" || true)
fi
if [ -n "$skipped" ]; then
  echo "$skipped"
  echo "test: the tests above skipped although KTSINK_INTEGRATION=$KTSINK_INTEGRATION says every test must run"
  exit 1
fi
echo "test: no test skipped ($(grep -c -- '--- PASS' "$log") passed)"
MUTANTS_FAST=1 scripts/mutants.sh
