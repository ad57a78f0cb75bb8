package datapath

import "testing"

func TestUnderSysFSBPF(t *testing.T) {
	for dir, want := range map[string]bool{
		"/sys/fs/bpf":                 true,
		"/sys/fs/bpf/":                true,
		"/sys/fs/bpf/membrane/node-1": true,
		"/sys/fs/bpf/a/../b":          true,
		"/sys/fs/bpfx":                false,
		"/sys/fs/bpfx/membrane":       false,
		"/sys/fs/bpf/../cgroup":       false,
		"/run/membrane/bpf":           false,
	} {
		if got := underSysFSBPF(dir); got != want {
			t.Errorf("underSysFSBPF(%q) = %v, want %v", dir, got, want)
		}
	}
}
