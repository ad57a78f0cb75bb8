package lab

import (
	"fmt"
	"path/filepath"
	"regexp"
)

// DefaultRoot is the directory that holds one directory per lab.
const DefaultRoot = "/run/membrane/labs"

// DefaultName is the name of a lab whose input names none.
const DefaultName = "membrane"

// maxNameLen bounds lab and node names so that every path the lab creates
// (notably the agents' unix sockets, at most 107 bytes) fits.
const maxNameLen = 32

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// checkName validates a lab or node name: a DNS label of at most 32
// characters.
func checkName(what, name string) error {
	if len(name) > maxNameLen || !dnsLabel.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: want lowercase letters, digits and '-', at most %d characters, starting and ending with a letter or digit", what, name, maxNameLen)
	}
	return nil
}

// layout names the files and namespaces of one lab.
type layout struct {
	name string // the lab's name
	dir  string // DefaultRoot/name
}

func newLayout(name string) layout {
	return layout{name: name, dir: filepath.Join(DefaultRoot, name)}
}

func (y layout) statePath() string    { return filepath.Join(y.dir, "state.json") }
func (y layout) lockPath() string     { return filepath.Join(y.dir, "lock") }
func (y layout) datastoreDir() string { return filepath.Join(y.dir, "datastore") }
func (y layout) bpffsDir() string     { return filepath.Join(y.dir, "bpffs") }
func (y layout) nodeBpffs(n string) string {
	return filepath.Join(y.bpffsDir(), n)
}
func (y layout) nodeDir(n string) string     { return filepath.Join(y.dir, "nodes", n) }
func (y layout) agentSocket(n string) string { return filepath.Join(y.nodeDir(n), "agent.sock") }
func (y layout) agentPIDFile(n string) string {
	return filepath.Join(y.nodeDir(n), "agent.pid")
}
func (y layout) agentLog(n string) string         { return filepath.Join(y.nodeDir(n), "agent.log") }
func (y layout) agentStateDir(n string) string    { return filepath.Join(y.nodeDir(n), "state") }
func (y layout) xdsSocket(n string) string        { return filepath.Join(y.nodeDir(n), "xds.sock") }
func (y layout) proxyAdminSocket(n string) string { return filepath.Join(y.nodeDir(n), "proxy.sock") }
func (y layout) proxyLog(n string) string         { return filepath.Join(y.nodeDir(n), "proxy.log") }
func (y layout) proxyPIDFile(n string) string     { return filepath.Join(y.nodeDir(n), "proxy.pid") }
func (y layout) nodeResponderLog(n string) string {
	return filepath.Join(y.nodeDir(n), "responder.log")
}
func (y layout) worldDir() string { return filepath.Join(y.dir, "world") }
func (y layout) worldResponderLog() string {
	return filepath.Join(y.worldDir(), "responder.log")
}
func (y layout) podDir(ns, pod string) string {
	return filepath.Join(y.dir, "pods", ns+"_"+pod)
}
func (y layout) containerLog(ns, pod, container string) string {
	return filepath.Join(y.podDir(ns, pod), container+".log")
}

// netnsPrefix starts the name of every network namespace of the lab. The
// parts of a name are joined by '_', which no lab, node, namespace or pod
// name has: one lab's prefix is never the start of another's (as "mbr-a-"
// was of lab a-b's "mbr-a-b-"), and no two pods of a lab share a name (as
// a-b/c and a/b-c did when joined by '-').
func (y layout) netnsPrefix() string          { return "mbr_" + y.name + "_" }
func (y layout) fabricNetns() string          { return y.netnsPrefix() + "fabric" }
func (y layout) worldNetns() string           { return y.netnsPrefix() + "world" }
func (y layout) nodeNetns(node string) string { return y.netnsPrefix() + "node_" + node }
func (y layout) podNetns(ns, pod string) string {
	return y.netnsPrefix() + "pod_" + ns + "_" + pod
}
