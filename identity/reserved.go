package identity

import "fmt"

// ID is a numeric security identity.
type ID uint32

// Reserved identities.
const (
	Invalid       ID = 0
	Host          ID = 1 // the local node
	World         ID = 2 // anything outside the cluster
	Unmanaged     ID = 3 // a workload Membrane does not manage
	Health        ID = 4 // health-check endpoints
	Init          ID = 5 // a workload whose identity is not resolved yet
	RemoteNode    ID = 6 // another node of the cluster
	KubeAPIServer ID = 7 // the Kubernetes API server

	// MinCluster is the first identity for workloads.
	MinCluster ID = 256
	// MaxCluster is the last: room for over a billion label sets.
	MaxCluster ID = 1<<30 - 1
	// MinLocal starts identities that only mean something on one node.
	MinLocal ID = 1 << 30
)

var reservedNames = map[ID]string{
	Host:          "host",
	World:         "world",
	Unmanaged:     "unmanaged",
	Health:        "health",
	Init:          "init",
	RemoteNode:    "remote-node",
	KubeAPIServer: "kube-apiserver",
}

// ReservedByName maps "host", "world", … to the identity.
func ReservedByName(name string) (ID, bool) {
	for id, n := range reservedNames {
		if n == name {
			return id, true
		}
	}
	return 0, false
}

// IsReserved reports whether id is in the reserved range.
func (id ID) IsReserved() bool { return id > 0 && id < MinCluster }

// ReservedLabels is the label set of a reserved identity: "reserved:<name>".
func ReservedLabels(id ID) Labels {
	name, ok := reservedNames[id]
	if !ok {
		return NewLabels(nil)
	}
	return NewLabels(map[string]string{ReservedPrefix + name: ""})
}

func (id ID) String() string {
	if n, ok := reservedNames[id]; ok {
		return fmt.Sprintf("%d (reserved:%s)", uint32(id), n)
	}
	return fmt.Sprintf("%d", uint32(id))
}
