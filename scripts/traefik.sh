#!/usr/bin/env bash
# Prints the path of a Traefik v3 binary, building it from the Go module proxy when none is found.
# Order: $TRAEFIK_BIN, `traefik` on PATH, the cache (~/.cache/hatch-proxy/traefik/<version>/traefik),
# else a build of $TRAEFIK_VERSION into that cache. Progress goes to stderr, the path to stdout.
set -euo pipefail
version="${TRAEFIK_VERSION:-v3.6.12}"
cache_root="${HATCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hatch-proxy}/traefik"
out="$cache_root/$version/traefik"
say() { echo "traefik.sh: $*" >&2; }

if [ -n "${TRAEFIK_BIN:-}" ]; then
  [ -x "$TRAEFIK_BIN" ] || { say "TRAEFIK_BIN=$TRAEFIK_BIN is not an executable file"; exit 1; }
  echo "$TRAEFIK_BIN"; exit 0
fi
if [ "${1:-}" != "--build" ] && command -v traefik >/dev/null 2>&1; then command -v traefik; exit 0; fi
if [ -x "$out" ]; then echo "$out"; exit 0; fi
if [ "${1:-}" = "--find" ]; then say "no Traefik binary found (TRAEFIK_BIN, PATH, $out)"; exit 1; fi

go=$(command -v go || echo /usr/local/go/bin/go)
[ -x "$go" ] || { say "Go is needed to build Traefik ($go not found)"; exit 1; }
mkdir -p "$cache_root/$version"
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod
say "downloading github.com/traefik/traefik/v3@$version source (module proxy)"
dir=$(cd "$work" && "$go" mod download -json "github.com/traefik/traefik/v3@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] && [ -d "$dir" ] || { say "module download failed"; exit 1; }
cp -r "$dir" "$work/src" && chmod -R u+w "$work/src"
say "downloading dependencies (about 480 modules; first time only)"
(cd "$work/src" && "$go" mod download -x 2>&1 | grep -c '^# get' >&2 || true)
say "building (CGO_ENABLED=0; a few minutes on 2 cores)"
(cd "$work/src" && CGO_ENABLED=0 "$go" build -trimpath -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$version" -o "$work/traefik" ./cmd/traefik)
mv "$work/traefik" "$out"
say "built $out"
echo "$out"
