// Package bpf holds Membrane's eBPF programs (C, in this directory) and the
// Go bindings bpf2go generates from them. The generated files
// (datapath_bpfel.go, datapath_bpfel.o) are committed so that building
// Membrane needs no clang; `make generate` rebuilds them and CI fails if the
// committed copies differ.
//
// Use package datapath to load, attach and program them.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -go-package bpf -type addr -type ipcache_lpm_key -type ipcache_value -type endpoint -type policy_key -type policy_value -type ct_key -type ct_entry -type ct_bucket -type frag_key -type frag_value -type config -type event -type flow_rec -type flowlog_head -type counter -type stats Datapath datapath.c -- -I./include
