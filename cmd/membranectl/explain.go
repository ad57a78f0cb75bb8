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
are lab pods (namespace/pod) or IP addresses. The answer comes from the
state that programs the BPF maps, so it is what the datapath does.

For ICMP (--protocol icmp or icmpv6), PORT is the ICMP type.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			port, err := strconv.Atoi(args[2])
			if err != nil || port < 0 || port > 65535 {
				return fmt.Errorf("PORT must be a number 0-65535, got %q", args[2])
			}
			agents, l, err := t.agents()
			if err != nil {
				return err
			}
			src, err := resolveEnd(l, args[0], family)
			if err != nil {
				return err
			}
			dst, err := resolveEnd(l, args[1], family)
			if err != nil {
				return err
			}
			var clients []*api.Client
			for _, a := range agents {
				clients = append(clients, a.client)
			}
			x, err := api.ExplainAcross(cmd.Context(), clients, src, dst, strings.ToLower(protocol), port)
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
	cmd.Flags().IntVar(&family, "family", 4, "address family of lab pods: 4 or 6")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// resolveEnd turns a lab pod reference or an address into an address.
func resolveEnd(l *lab.Lab, ref string, family int) (string, error) {
	if a, err := netip.ParseAddr(ref); err == nil {
		return a.String(), nil
	}
	if l == nil {
		return "", fmt.Errorf("%q: with --agent-socket, give an IP address", ref)
	}
	p, err := l.Pod(ref)
	if err != nil {
		return "", err
	}
	ip, ok := p.IP(family)
	if !ok {
		return "", fmt.Errorf("pod %s has no IPv%d address", ref, family)
	}
	return ip.String(), nil
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
