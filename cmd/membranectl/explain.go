package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

func init() { explainCommands = append(explainCommands, newExplainCommand) }

// explainCommands are added under `policy` by policyCommand.
var explainCommands []func() *cobra.Command

func newExplainCommand() *cobra.Command {
	var t agentTarget
	var protocol, output string
	var family int
	cmd := &cobra.Command{
		Use:   "explain FROM TO PORT",
		Short: "Say whether FROM may reach TO on PORT, and exactly which policy and rule decide it",
		Long: `Explain asks the agents that own each side: the source's node decides
its egress policy, the destination's node its ingress policy. FROM and TO
are lab endpoints as for "lab probe" (namespace/pod, world, world:ADDRESS,
node/NAME) or IP addresses. The answer comes from the state that programs
the BPF maps, so it is what the datapath does.

For ICMP (--protocol icmp or icmpv6), PORT is the ICMP type: a number
0-255 or a name as in CiliumNetworkPolicy (EchoRequest).`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			protocol = strings.ToLower(protocol)
			fam, err := explainFamily(family, cmd.Flags().Changed("family"), protocol, args[0], args[1])
			if err != nil {
				return err
			}
			port, err := explainPort(args[2], protocol, fam)
			if err != nil {
				return err
			}
			agents, l, err := t.agents()
			if err != nil {
				return err
			}
			src, err := resolveEnd(l, args[0], fam)
			if err != nil {
				return err
			}
			dst, err := resolveEnd(l, args[1], fam)
			if err != nil {
				return err
			}
			var clients []*api.Client
			for _, a := range agents {
				clients = append(clients, a.client)
			}
			x, err := api.ExplainAcross(cmd.Context(), clients, src, dst, protocol, port)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(x); err != nil {
					return err
				}
			} else {
				out := &checkedWriter{w: cmd.OutOrStdout()}
				printExplanation(out, x)
				if out.err != nil {
					return out.err
				}
			}
			if x.Verdict != "allowed" {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	t.addFlags(cmd)
	cmd.Flags().StringVar(&protocol, "protocol", "tcp", "tcp, udp, sctp, icmp or icmpv6")
	cmd.Flags().IntVar(&family, "family", 4, "IP family: 4 or 6 (default 4, or that of the addresses given)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// literalAddr is the address ref names outright (an IP, or world:IP), or
// the zero Addr.
func literalAddr(ref string) netip.Addr {
	a, err := netip.ParseAddr(strings.TrimPrefix(ref, lab.WorldName+":"))
	if err != nil {
		return netip.Addr{}
	}
	return a
}

// explainFamily is the IP family of the connection explained: the one
// asked for (--family, given says whether it was), else that of an
// address given outright, else 4. The ends and the protocol must agree.
func explainFamily(family int, given bool, protocol string, refs ...string) (int, error) {
	if family != 4 && family != 6 {
		return 0, fmt.Errorf("--family %d: want 4 or 6", family)
	}
	fam := 0
	if given {
		fam = family
	}
	for _, ref := range refs {
		a := literalAddr(ref)
		if !a.IsValid() {
			continue
		}
		f := 4
		if a.Is6() && !a.Is4In6() {
			f = 6
		}
		if fam != 0 && f != fam {
			return 0, fmt.Errorf("%s is an IPv%d address, but the connection is IPv%d (the other end or --family)", ref, f, fam)
		}
		fam = f
	}
	if fam == 0 {
		fam = 4
	}
	switch {
	case protocol == "icmp" && fam == 6:
		return 0, fmt.Errorf("--protocol icmp is ICMP for IPv4: between IPv6 addresses use --protocol icmpv6")
	case protocol == "icmpv6" && fam == 4:
		return 0, fmt.Errorf("--protocol icmpv6 is ICMP for IPv6: between IPv4 addresses use --protocol icmp, or --family 6")
	}
	return fam, nil
}

// explainPort parses PORT: a port 0-65535, or for ICMP a type 0-255 or
// its name in the family.
func explainPort(arg, protocol string, family int) (int, error) {
	if protocol == "icmp" || protocol == "icmpv6" {
		fam := datastore.ICMPFamilyIPv4
		if family == 6 {
			fam = datastore.ICMPFamilyIPv6
		}
		if t, ok := datastore.ICMPTypeNumber(fam, arg); ok {
			return int(t), nil
		}
		return 0, fmt.Errorf("ICMP type %q: want a number 0-255 or an %s type name such as EchoRequest", arg, fam)
	}
	port, err := strconv.Atoi(arg)
	if err != nil || port < 0 || port > 65535 {
		return 0, fmt.Errorf("PORT must be a number 0-65535, got %q", arg)
	}
	return port, nil
}

// resolveEnd turns a lab endpoint reference or an address into an
// address of the family.
func resolveEnd(l *lab.Lab, ref string, family int) (string, error) {
	if a, err := netip.ParseAddr(ref); err == nil {
		return a.String(), nil
	}
	if l == nil {
		return "", fmt.Errorf("%q: with --agent-socket, give an IP address", ref)
	}
	a, err := l.Address(ref, family)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

func printExplanation(w io.Writer, x *api.Explanation) {
	end := func(p api.Peer) string {
		name := p.IP
		if p.Pod != "" {
			name = p.Pod + " (" + p.IP + ")"
		}
		return fmt.Sprintf("%s, identity %d %s", name, p.Identity, compactLabels(p.Labels))
	}
	fmt.Fprintf(w, "%s %d\n  from %s\n  to   %s\n", x.Protocol, x.Port, end(x.Src), end(x.Dst))
	side := func(name string, d *api.Decision) {
		if d == nil {
			fmt.Fprintf(w, "  %-8s not a workload of any node asked: no %s policy applies\n", name+":", name)
			return
		}
		fmt.Fprintf(w, "  %-8s %s at %s (node %s): %s\n", name+":", strings.ToUpper(d.Verdict), d.Endpoint, d.Node, d.Reason)
	}
	side("egress", x.Egress)
	side("ingress", x.Ingress)
	fmt.Fprintf(w, "verdict: %s\n", strings.ToUpper(x.Verdict))
}
