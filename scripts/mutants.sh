#!/usr/bin/env bash
# make mutants: cargo-mutants over the modules that guard security and data,
# one module at a time, against the unit tests of the crate (`cargo test
# --lib`, set in .cargo/mutants.toml); prints caught / missed / unviable /
# timeouts per module. docs/mutants.md has the figures and the exclusions.
#
#   scripts/mutants.sh                 every module
#   scripts/mutants.sh cursor budget   only these (names below)
#   MUTANTS_ITERATE=1 scripts/mutants.sh budget
#                                      only what the last run of budget did
#                                      not catch (cargo mutants --iterate)
#   MUTANTS_ARGS="--baseline=skip --timeout 40" scripts/mutants.sh verify
#                                      more cargo-mutants options (here: no
#                                      unmutated baseline run, fixed timeout)
#
# Every run builds in one target directory kept between runs
# (target/mutants), so only the first run builds the dependencies; cargo
# locks it, hence one job at a time (MUTANTS_JOBS to change).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${MUTANTS_OUT:-target/mutants.out}
JOBS=${MUTANTS_JOBS:-1}
export CARGO_TARGET_DIR=${MUTANTS_TARGET_DIR:-$PWD/target/mutants}

# The row mapping of the SQLite store, not the store itself.
SQLITE_ROWS='(row_to_event|row_to_key|decode_position|from_ms|ms|id_bytes|lease_bytes)'

ALL=(key budget verify admin cursor ratelimit domain fingerprint dynamodb-item sqlite-rows extract)

# Sets `args` to the cargo-mutants filter of module $1.
filter() {
    case "$1" in
    key) args=(-f src/auth/key.rs) ;;
    budget) args=(-f src/auth/budget.rs) ;;
    verify) args=(-f src/auth/verify.rs) ;;
    admin) args=(-f src/auth/admin.rs) ;;
    cursor) args=(-f src/http/cursor.rs) ;;
    ratelimit) args=(-f src/http/ratelimit.rs) ;;
    domain) args=(-f src/domain/mod.rs) ;;
    fingerprint) args=(-f src/domain/fingerprint.rs) ;;
    dynamodb-item) args=(-f src/store/dynamodb/item.rs) ;;
    sqlite-rows) args=(-f src/store/sqlite.rs --re " (replace|in) ${SQLITE_ROWS}( |\$)") ;;
    extract) args=(-f src/http/extract.rs) ;;
    *) return 1 ;;
    esac
}

count() { [ -f "$1" ] && wc -l <"$1" | tr -d ' ' || echo 0; }

modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=("${ALL[@]}")
for m in "${modules[@]}"; do
    filter "$m" || { echo "unknown module: $m (one of: ${ALL[*]})" >&2; exit 2; }
done

mkdir -p "$OUT"
status=0
start_all=$SECONDS
for m in "${modules[@]}"; do
    filter "$m"
    iterate=()
    [ "${MUTANTS_ITERATE:-0}" = 1 ] && iterate=(--iterate)
    echo "== $m: cargo mutants --no-shuffle -j $JOBS ${iterate[*]} ${MUTANTS_ARGS:-} ${args[*]}"
    start=$SECONDS
    # shellcheck disable=SC2086 # MUTANTS_ARGS is split into options
    cargo mutants --no-shuffle -j "$JOBS" "${iterate[@]}" ${MUTANTS_ARGS:-} "${args[@]}" --output "$OUT/$m"
    rc=$?
    # 0: all caught; 2: some missed; 3: some timed out; anything else: broken.
    case $rc in 0) ;; 2 | 3) status=1 ;; *) echo "cargo mutants failed ($rc)" >&2; exit $rc ;; esac
    echo "== $m done in $((SECONDS - start)) s"
done

printf '\n%-14s %7s %7s %7s %9s %9s %8s %8s\n' module viable caught missed unviable timeouts caught% earlier
for m in "${modules[@]}"; do
    d="$OUT/$m/mutants.out"
    c=$(count "$d/caught.txt") mi=$(count "$d/missed.txt")
    u=$(count "$d/unviable.txt") t=$(count "$d/timeout.txt")
    v=$((c + mi + t))
    pct=$([ "$v" -gt 0 ] && awk "BEGIN{printf \"%.1f\", 100*$c/$v}" || echo -)
    e=$(count "$d/previously_caught.txt")
    printf '%-14s %7d %7d %7d %9d %9d %8s %8d\n' "$m" "$v" "$c" "$mi" "$u" "$t" "$pct" "$e"
done
echo "(viable = caught + missed + timeouts; earlier = caught or unviable in the"
echo " runs an --iterate run skipped; $((SECONDS - start_all)) s in all)"
for m in "${modules[@]}"; do
    f="$OUT/$m/mutants.out/missed.txt"
    [ -s "$f" ] && { echo "missed in $m:"; sed 's/^/  /' "$f"; }
done
exit $status
