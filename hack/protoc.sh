#!/usr/bin/env bash
# Generates Go code for Membrane's .proto files under proto/: protoc from
# apt (protobuf-compiler), protoc-gen-go at the version go.mod pins. Each
# file's go_package says where its Go code goes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v protoc >/dev/null || { echo "protoc.sh: protoc not found: apt-get install protobuf-compiler (make deps)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
go build -o "$tmp/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
mapfile -t files < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd proto && protoc --plugin=protoc-gen-go="$tmp/protoc-gen-go" -I . \
  --go_out=module=github.com/membrane-mesh/membrane:"$root" "${files[@]}")
