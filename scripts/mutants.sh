#!/usr/bin/env bash
# Applies each deliberate break of an invariant in testdata/mutants/*.patch
# to a copy of the tree and runs the tests its header names; fails unless
# every mutant is caught (those tests fail with it) and every named test
# passes without it.
#
#   scripts/mutants.sh                  every mutant
#   MUTANTS='resume-* fence-*' scripts/mutants.sh   those whose names match
#   MUTANTS_FAST=1 scripts/mutants.sh   all but the slow ones (make test)
#
# A patch's header says what it breaks and what catches it:
#   # breaks: invariant 4, bounded memory: ...
#   # killed-by: ./coordinator TestA|TestB
#   # slow: yes       (optional: its tests take long, so make test leaves
#                      it to make mutants; their clean run is left out too)
# The integration tests need the services: run it as `make mutants`.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree="$root/.cache/mutants/tree" # one copy, reused, so the build cache serves it
logs="$root/.cache/mutants/logs"
mkdir -p "$tree" "$logs"
# the copy lies inside this repository's ignored .cache: without a ceiling,
# git apply would find the repository above and skip, silently, every patch
# in `git diff` form ("Skipped patch"), as paths outside the current folder
export GIT_CEILING_DIRECTORIES="$root/.cache/mutants"
only=${MUTANTS:-*}
read -ra pats <<<"$only" # split, never expanded against files

# the tracked files as they are in the working tree (same paths and
# contents every time, so the build cache serves what did not change)
sync_tree() {
  rm -rf "$tree" && mkdir -p "$tree"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null --no-recursion -T - -cf - 2>/dev/null) |
    tar -xf - -C "$tree"
}

header() { sed -n "s/^# $2: //p" "$1"; }

patches=()
slow=0
for p in "$root"/testdata/mutants/*.patch; do
  name=$(basename "$p" .patch)
  for pat in "${pats[@]}"; do
    # shellcheck disable=SC2053
    [[ $name == $pat ]] || continue
    if [ "${MUTANTS_FAST:-}" = 1 ] && [ "$(header "$p" slow)" = yes ]; then
      slow=$((slow + 1))
    else
      patches+=("$p")
    fi
    break
  done
done
[ $slow -eq 0 ] || echo "mutants: $slow slow ones left out (MUTANTS_FAST=1; make mutants runs them)"
[ ${#patches[@]} -gt 0 ] || { echo "mutants: none matches '$only'"; exit 2; }

sync_tree
# every named test must pass on the tree as it is: a test that fails anyway
# catches nothing
declare -A runs
for p in "${patches[@]}"; do
  k=$(header "$p" killed-by); pkg=${k%% *}; run=${k#* }
  runs[$pkg]="${runs[$pkg]:+${runs[$pkg]}|}$run"
done
for pkg in "${!runs[@]}"; do
  if ! (cd "$tree" && go test -count=1 -run "^(${runs[$pkg]})\$" "$pkg" >"$logs/clean.log" 2>&1); then
    echo "mutants: the tests that catch the mutants fail without them ($pkg):"
    tail -30 "$logs/clean.log"
    exit 1
  fi
done

caught=0 survived=0 broken=0
for p in "${patches[@]}"; do
  name=$(basename "$p" .patch)
  k=$(header "$p" killed-by); pkg=${k%% *}; run=${k#* }
  if ! (cd "$tree" && git apply -p1 "$p" >"$logs/$name.log" 2>&1); then
    echo "BROKEN   $name: the patch no longer applies"; broken=$((broken + 1)); sync_tree; continue
  fi
  start=$SECONDS
  (cd "$tree" && go test -count=1 -run "^($run)\$" "$pkg" >>"$logs/$name.log" 2>&1)
  status=$?
  (cd "$tree" && git apply -R -p1 "$p" >/dev/null 2>&1) || sync_tree
  if grep -q -e '\[build failed\]' -e '\[setup failed\]' "$logs/$name.log"; then
    echo "BROKEN   $name: does not build (see $logs/$name.log)"; broken=$((broken + 1))
  elif [ $status -eq 0 ]; then
    echo "SURVIVED $name: $pkg $run passed with it ($(header "$p" breaks))"; survived=$((survived + 1))
  else
    failed=$(grep -o -e '--- FAIL: [A-Za-z0-9_]*' "$logs/$name.log" | sed 's/--- FAIL: //' | sort -u | paste -sd, -)
    echo "caught   $name by ${failed:-$run} ($pkg, $((SECONDS - start))s)"; caught=$((caught + 1))
  fi
done
echo "mutants: $caught caught, $survived survived, $broken broken"
[ $survived -eq 0 ] && [ $broken -eq 0 ]
