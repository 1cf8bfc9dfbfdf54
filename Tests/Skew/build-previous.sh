#!/usr/bin/env bash
# Builds the secretsfs binary of an earlier commit for the version-skew tests (Tests/MountTests/SkewTests.swift):
# .build-prev/secretsfs-<commit>. Reuses the main build: in a private mount namespace the old sources are bound over
# this checkout's path and an overlay of .build (copy-on-write, so the main build is never touched) over its build
# folder, so the packages' objects are reused and only this project's modules compile. Falls back to a build folder of
# its own when overlays are not available.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
commit="${1:?usage: build-previous.sh COMMIT [debug|release]}"
configuration="${2:-debug}"
out="$root/.build-prev"
binary="$out/secretsfs-$commit"
[ "$configuration" = debug ] || binary="$binary-$configuration"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi
git -C "$root" cat-file -e "$commit^{commit}" || { echo "commit $commit is not in this clone (a shallow clone?)" >&2; exit 1; }
rm -rf "$out/src" "$out/upper" "$out/work" "$out/merged"
mkdir -p "$out/src" "$out/upper" "$out/work" "$out/merged"
git -C "$root" archive "$commit" | tar -x -C "$out/src"
cp "$root/Package.resolved" "$out/src/" 2>/dev/null || true
mkdir -p "$out/src/.build"
if [ -d "$root/.build" ] && unshare --mount --propagation private bash -euo pipefail -c '
    root="$1"; out="$2"
    mount -t overlay overlay -o "lowerdir=$root/.build,upperdir=$out/upper,workdir=$out/work" "$out/merged"
    mount --bind "$out/merged" "$out/src/.build"
    mount --rbind "$out/src" "$root"
    cd "$root"
    # From here on "$out" is hidden under the old sources; "$root/.build" is the overlay (its upper layer is
    # "$out/upper" outside the namespace).
    swift build -c "$3" --product secretsfs > "$root/.build/prev-build.log" 2>&1 || { tail -20 "$root/.build/prev-build.log" >&2; exit 1; }
    tail -1 "$root/.build/prev-build.log"
    cp "$root/.build/$3/secretsfs" "$root/.build/prev-binary"
' _ "$root" "$out" "$configuration"; then
    cp "$out/upper/prev-binary" "$binary"
else
    echo "overlay build failed; building $commit in a build folder of its own" >&2
    (cd "$out/src" && swift build -c "$configuration" --product secretsfs --scratch-path "$out/scratch" 2>&1 | tail -3)
    cp "$out/scratch/$configuration/secretsfs" "$binary"
fi
rm -rf "$out/src" "$out/upper" "$out/work" "$out/merged"
[ "$configuration" = debug ] && ln -sf "$(basename "$binary")" "$out/secretsfs-previous"
echo "$binary"
