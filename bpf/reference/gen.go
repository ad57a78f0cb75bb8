// Package reference holds eBPF programs that `make bench` measures the
// datapath against or with. They are not part of Membrane's datapath:
// conntrack.c shows what one design choice costs on this machine,
// calls.c what a function call and a kernel hash-map lookup cost;
// bypass.c switches the datapath on and off under running traffic. The
// generated files are committed, as in package bpf.
package reference

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -go-package reference Reference conntrack.c -- -I../include
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -go-package reference Bypass bypass.c -- -I../include
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -go-package reference Calls calls.c -- -I../include
