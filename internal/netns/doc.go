// Package netns creates, enters and removes named network namespaces.
//
// A named namespace is pinned by a bind mount at /run/netns/NAME, the place
// and layout iproute2 uses, so `ip netns list` and `ip -n NAME …` see the
// namespaces Membrane creates and the other way round.
//
// Nothing in this package changes the network namespace of the calling
// goroutine's thread: work that must run inside a namespace runs on a fresh,
// locked OS thread that is restored (or, if restoring fails, discarded)
// afterwards.
package netns
