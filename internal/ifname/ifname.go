// Package ifname derives the names of the interfaces Membrane creates, so that
// the component wiring a workload (the lab, or a CNI plugin) and the agent that
// enforces policy on it agree without talking to each other.
package ifname

import (
	"crypto/sha256"
	"encoding/hex"
)

// HostPrefix starts the name of every host-side workload veth.
const HostPrefix = "mbr"

// Host returns the name of the host-side veth of the pod namespace/name:
// "mbr" followed by 11 hex digits of a SHA-256 over "namespace/name". It is
// 14 characters long, within the kernel's 15-character limit.
func Host(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return HostPrefix + hex.EncodeToString(sum[:])[:11]
}
