// Package datapath loads Membrane's eBPF programs, attaches them to
// interfaces, and reads and writes their maps with Go types.
//
// Everything the kernel needs to keep enforcing lives in one bpffs
// directory per agent (Options.PinDir): the maps, and the tcx links that
// attach the programs. A restarted agent loads new programs against the same
// pinned maps and swaps them into the pinned links atomically, so packets
// never meet a missing program or an empty map.
//
// Layout of PinDir:
//
//	<map name>                 every map in bpf/include/maps.h, plus "registry"
//	links/<ifname>_<hook>      tcx links (absent when legacy tc is used)
//
// Addresses are 16 bytes everywhere; IPv4 is stored IPv4-mapped.
package datapath
