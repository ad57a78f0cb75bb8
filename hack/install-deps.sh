#!/usr/bin/env bash
# Installs what building, testing and running Membrane needs on Debian or
# Ubuntu, from apt. Does nothing for packages already installed. Go itself
# must be on PATH (Go modules come from the module proxy).
set -euo pipefail

pkgs=(
  clang llvm libbpf-dev gcc-multilib   # compile the eBPF programs (make generate)
  protobuf-compiler                    # protoc for Membrane's .proto files (make generate)
  bpftool                              # inspect maps and programs
  iproute2 nftables                    # network namespaces, veths, rules
  iperf3 wrk                           # benchmarks
  curl                                 # L7 tests use a real HTTP client too
  procps psmisc                        # ps, for humans debugging a lab
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "install-deps: Go is not on PATH (need Go 1.26+)" >&2; exit 1; }

# bpffs: the agents pin their maps below /sys/fs/bpf (labs use their own mount).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi
