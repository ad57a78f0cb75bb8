package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/lab"
)

func init() {
	commands = append(commands, newStatusCommand, newPolicyCommand, newVersionCommand)
}

// agentTarget picks the agents a command talks to: those of a lab, or one
// agent by its socket.
type agentTarget struct {
	lab    string
	socket string
}

func (t *agentTarget) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.lab, "lab", "", "the lab whose agents to ask (default: the only lab on this machine)")
	cmd.Flags().StringVar(&t.socket, "agent-socket", "", "ask the agent listening on this unix socket instead of a lab")
	cmd.MarkFlagsMutuallyExclusive("lab", "agent-socket")
}

type namedAgent struct {
	node   string
	client *api.Client
}

func (t *agentTarget) agents() ([]namedAgent, *lab.Lab, error) {
	if t.socket != "" {
		return []namedAgent{{node: t.socket, client: api.NewClient(t.socket)}}, nil, nil
	}
	l, err := lab.OpenOnly(t.lab)
	if err != nil {
		return nil, nil, err
	}
	if l.NoAgent() {
		return nil, nil, fmt.Errorf("lab %s runs without agents (--no-agent)", l.Name())
	}
	var out []namedAgent
	for _, n := range l.Nodes() {
		out = append(out, namedAgent{node: n.Name, client: l.Agent(n.Name)})
	}
	return out, l, nil
}

func newStatusCommand() *cobra.Command {
	var t agentTarget
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each agent's health, datapath, maps and drop counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			agents, _, err := t.agents()
			if err != nil {
				return err
			}
			var all []*api.Status
			unhealthy := false
			for _, a := range agents {
				s, err := a.client.Status(cmd.Context())
				if err != nil {
					unhealthy = true
					fmt.Fprintf(cmd.ErrOrStderr(), "node %s: agent not reachable: %v\n", a.node, err)
					continue
				}
				if !s.Healthy {
					unhealthy = true
				}
				all = append(all, s)
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(all); err != nil {
					return err
				}
			} else {
				out := &checkedWriter{w: cmd.OutOrStdout()}
				for _, s := range all {
					printStatus(out, s)
				}
				if out.err != nil {
					return out.err
				}
			}
			if unhealthy {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	t.addFlags(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func printStatus(w io.Writer, s *api.Status) {
	health := "healthy"
	if !s.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(w, "Node %s: %s (agent pid %d, %s, datapath %s)\n", s.Node, health, s.PID, s.Version, s.Datapath)
	fmt.Fprintf(w, "  datastore revision %d, applied %d; last regeneration %s\n", s.DatastoreRevision, s.AppliedRevision, s.LastRegeneration)
	fmt.Fprintf(w, "  endpoints %d, identities %d, policies %d\n", s.Endpoints, s.Identities, s.Policies)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MAP\tENTRIES\tCAPACITY\tFILL\tREFUSED (FULL)\tPAST ITS INDEX")
	var tallied []api.MapStats
	for _, m := range s.Maps {
		fill := 0.0
		if m.MaxEntries > 0 {
			fill = 100 * float64(m.Entries) / float64(m.MaxEntries)
		}
		past := "-"
		if m.Indexed {
			past = strconv.Itoa(m.Overflowing)
		}
		entries := strconv.Itoa(m.Entries)
		if !m.CountedAt.IsZero() {
			entries = "≤" + entries
			tallied = append(tallied, m)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%.1f%%\t%d\t%s\n", m.Name, entries, m.MaxEntries, fill, m.Full, past)
	}
	tw.Flush()
	for _, m := range tallied {
		fmt.Fprintf(w, "  ≤ %s: counted %s ago, plus the connections recorded since; those that ended since are counted until the next collection\n",
			m.Name, time.Since(m.CountedAt).Round(time.Second))
	}
	if len(s.Drops) > 0 {
		fmt.Fprintln(w, "  drops:")
		for _, k := range slices.Sorted(maps.Keys(s.Drops)) {
			fmt.Fprintf(w, "    %-40s %d\n", k, s.Drops[k])
		}
	}
	fmt.Fprintf(w, "  lost events: %d\n", s.LostEvents)
	if s.ConntrackEvicted > 0 {
		fmt.Fprintf(w, "  conntrack evictions: %d (connections forgotten to make room: raise --map-size-conntrack if this grows)\n", s.ConntrackEvicted)
	}
	if f := s.Flows; f != nil {
		fmt.Fprintf(w, "  flows since start: %s; lost: %d in the datapath (ring buffer or flow log full), %d by followers that fell behind\n",
			formatVerdictCounts(f.ByVerdict), f.LostDatapath, f.LostFollowers)
	}
	if x := s.XDS; x != nil {
		printXDS(w, x)
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	for _, r := range s.Rejected {
		fmt.Fprintf(w, "  rejected: %s\n", r)
	}
}

// printXDS shows the xDS server and the proxy it configures.
func printXDS(w io.Writer, x *api.XDSStatus) {
	proxy := "not connected (connections L7 policy redirects fail closed)"
	if x.ProxyConnected {
		var parts []string
		if x.ProxyAckedPolicy {
			parts = append(parts, "has the current L7 policy")
		} else {
			parts = append(parts, "has NOT accepted the current L7 policy")
		}
		if x.ProxyAckedListeners {
			parts = append(parts, "listening")
		} else {
			parts = append(parts, "listeners not bound")
		}
		proxy = "connected, " + strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "  L7 proxy: %s\n", proxy)
	fmt.Fprintf(w, "    xds %s: policy version %s (%d endpoint policies), %d access-log entries%s\n", x.Socket, x.PolicyVersion, x.EndpointPolicies, x.AccessLog.Entries, verdictCounts(x.AccessLog.Verdicts))
	for _, st := range x.Streams {
		fmt.Fprintf(w, "    stream %s from %s since %s\n", st.Mode, st.Node, st.ConnectedSince.Local().Format(time.TimeOnly))
		for _, t := range st.Types {
			fmt.Fprintf(w, "      %-40s sent %s, acked %s, nacks %d%s\n", t.Type, orDash(t.LastSentVersion), orDash(t.LastAckedVersion), t.NACKs, resumedNote(t.LastSentVersion, t.ResumedResources))
		}
	}
	if x.NACKs > 0 {
		fmt.Fprintf(w, "    NACKs: %d", x.NACKs)
		if n := x.LastNACK; n != nil {
			fmt.Fprintf(w, "; last at %s: %s version %s: %s", n.Time.Local().Format(time.TimeOnly), n.Type, n.Version, n.Message)
		}
		fmt.Fprintln(w)
	}
	if x.LastUpdateError != "" {
		fmt.Fprintf(w, "    not published: %s\n", x.LastUpdateError)
	}
	if x.RejectedStreams > 0 {
		fmt.Fprintf(w, "    refused streams: %d; last: %s\n", x.RejectedStreams, x.LastRejected)
	}
}

// resumedNote explains a type the server sent nothing of on a stream
// whose proxy subscribed with resources it already had: they are current,
// so there was nothing to send (delta xDS).
func resumedNote(sent string, resumed int) string {
	if sent != "" || resumed == 0 {
		return ""
	}
	if resumed == 1 {
		return " (the proxy resubscribed with the 1 resource it had, which is current)"
	}
	return fmt.Sprintf(" (the proxy resubscribed with the %d resources it had, which are current)", resumed)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Inspect computed policy",
	}
	var t agentTarget
	var output string
	get := &cobra.Command{
		Use:   "get NAMESPACE/POD",
		Short: "Print an endpoint's computed policy: peers (with their identities), ports, verdicts and the rule behind each",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			ns, pod, ok := strings.Cut(args[0], "/")
			if !ok || ns == "" || pod == "" {
				return fmt.Errorf("want NAMESPACE/POD, got %q", args[0])
			}
			agents, l, err := t.agents()
			if err != nil {
				return err
			}
			client := agents[0].client
			if l != nil {
				p, err := l.Pod(args[0])
				if err != nil {
					return err
				}
				client = l.Agent(p.Node)
			}
			pol, err := client.Policy(cmd.Context(), ns, pod)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(pol)
			}
			out := &checkedWriter{w: cmd.OutOrStdout()}
			printPolicy(out, pol)
			return out.err
		},
	}
	t.addFlags(get)
	get.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.AddCommand(get)
	for _, c := range explainCommands {
		cmd.AddCommand(c())
	}
	return cmd
}

func printPolicy(w io.Writer, p *api.EndpointPolicy) {
	e := p.Endpoint
	fmt.Fprintf(w, "Endpoint %s/%s: id %d, identity %d, addresses %s, interface %s, %s\n",
		e.Namespace, e.Pod, e.ID, e.Identity, strings.Join(e.IPs, " "), e.Interface, e.State)
	fmt.Fprintf(w, "  ingress %s, egress %s; %d map entries\n\n", enforced(e.IngressEnforced), enforced(e.EgressEnforced), e.PolicyEntries)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTION\tREMOTE\tPROTOCOL\tPORTS\tVERDICT\tPOLICY")
	for _, en := range p.Entries {
		verdict := en.Verdict
		if en.ProxyPort != 0 {
			verdict = fmt.Sprintf("%s (proxy :%d)", verdict, en.ProxyPort)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", en.Direction, en.Remote, en.Protocol, en.Ports, verdict, en.Policy)
		if len(en.Requires) > 0 {
			field := "fromRequires"
			if en.Direction == "egress" {
				field = "toRequires"
			}
			fmt.Fprintf(tw, "\t  requiring %s\t\t\t\t  %s of %s\n", strings.Join(en.Requires, " and "), field, strings.Join(en.RequiredBy, ", "))
			if len(en.RemoteIdentities) == 0 {
				fmt.Fprintf(tw, "\t  no identity qualifies now\t\t\t\t\n")
			}
		}
		for _, id := range en.RemoteIdentities {
			fmt.Fprintf(tw, "\t  identity %d %s\t\t\t\t\n", id.ID, compactLabels(id.Labels))
		}
		for _, h := range en.HTTP {
			fmt.Fprintf(tw, "\t\t\t\t  http: %s\t\n", h)
		}
	}
	tw.Flush()
}

// compactLabels shows an identity as people think of it: namespace and pod
// labels, without the labels derived from the namespace's own labels, the
// cluster, or a default service account (-o json has them all).
func compactLabels(labels []string) string {
	var ns string
	var rest []string
	for _, l := range labels {
		switch {
		case strings.HasPrefix(l, "io.kubernetes.pod.namespace="):
			ns = strings.TrimPrefix(l, "io.kubernetes.pod.namespace=")
		case strings.HasPrefix(l, "io.cilium.k8s.namespace.labels."),
			strings.HasPrefix(l, "io.cilium.k8s.policy.cluster="),
			l == "io.cilium.k8s.policy.serviceaccount=default":
		default:
			rest = append(rest, l)
		}
	}
	if ns == "" {
		return "[" + strings.Join(rest, " ") + "]"
	}
	return "[" + ns + ": " + strings.Join(rest, " ") + "]"
}

func enforced(b bool) string {
	if b {
		return "default deny"
	}
	return "open"
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "membranectl %s\n", version.Version)
		},
	}
}

// formatVerdictCounts renders flow counts by verdict as "14 forwarded, 8
// dropped", most common first.
func formatVerdictCounts(by map[string]uint64) string {
	if len(by) == 0 {
		return "none"
	}
	verdicts := slices.Collect(maps.Keys(by))
	slices.SortFunc(verdicts, func(a, b string) int {
		if c := cmp.Compare(by[b], by[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(verdicts))
	for i, v := range verdicts {
		parts[i] = fmt.Sprintf("%d %s", by[v], strings.ToLower(v))
	}
	return strings.Join(parts, ", ")
}

// verdictCounts says how many L7 requests the proxy forwarded, denied and
// failed (its access log's verdicts), or "" when it logged none.
func verdictCounts(v map[string]uint64) string {
	var parts []string
	for _, k := range []string{"FORWARDED", "DENIED", "ERROR"} {
		if v[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", v[k], strings.ToLower(k)))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (requests " + strings.Join(parts, ", ") + ")"
}
