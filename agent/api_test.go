package agent

import (
	"testing"

	"github.com/membrane-mesh/membrane/policy"
)

func TestPortsStringNamedPortProtocol(t *testing.T) {
	ep := &policy.Endpoint{Pod: policy.Pod{NamedPorts: []policy.NamedPort{
		{Name: "serve-80", Proto: policy.ProtoTCP, Number: 80},
		{Name: "dns", Proto: policy.ProtoUDP, Number: 53},
		{Name: "dns", Proto: policy.ProtoTCP, Number: 53},
	}}}
	for _, c := range []struct {
		pr   policy.PortRange
		d    policy.Dir
		want string
	}{
		{policy.PortRange{Proto: policy.ProtoTCP, Name: "serve-80"}, policy.Ingress, "serve-80 (=80)"},
		{policy.PortRange{Proto: policy.ProtoUDP, Name: "serve-80"}, policy.Ingress, "serve-80 (declared for TCP, not UDP: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoSCTP, Name: "dns"}, policy.Ingress, "dns (declared for UDP and TCP, not SCTP: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoTCP, Name: "metrics"}, policy.Ingress, "metrics (not declared by this pod: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoUDP, Name: "serve-80"}, policy.Egress, "serve-80 (resolved per destination)"},
	} {
		if got := portsString(c.pr, ep, c.d); got != c.want {
			t.Errorf("portsString(%v, %s) = %q, want %q", c.pr, c.d, got, c.want)
		}
	}
}
