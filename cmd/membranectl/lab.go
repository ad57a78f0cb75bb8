package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/lab"
)

func init() { commands = append(commands, newLabCommand) }

func newLabCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a Membrane test bed of network namespaces on this machine",
		Long: `A lab turns Kubernetes-style YAML (Namespace, Pod, NetworkPolicy and an
optional membrane.dev/v1alpha1 Lab) into nodes and pods made of network
namespaces, with each pod's containers running as processes and one
membrane-agent per node. Nothing touches the host's own network namespace.`,
	}
	cmd.AddCommand(newLabUpCommand(), newLabDownCommand(), newLabStatusCommand(), newLabRestartAgentsCommand(),
		newLabLogsCommand(), newLabExecCommand(), newLabProbeCommand(), newLabMatrixCommand(),
		newLabHTTPCommand(), newLabGRPCCommand())
	for _, name := range []string{lab.HelperResponder, lab.HelperSupervise} {
		cmd.AddCommand(&cobra.Command{
			Use:                name,
			Short:              "internal: run the lab's " + name,
			Hidden:             true,
			DisableFlagParsing: true,
			RunE: func(_ *cobra.Command, args []string) error {
				if code := lab.RunHelper(append([]string{name}, args...)); code != 0 {
					return &exitError{code: code}
				}
				return nil
			},
		})
	}
	return cmd
}

// openLabPort opens lab name (the only one if empty) and parses a port
// argument; errors exit with status 2, as the probing commands promise.
func openLabPort(name, portArg string) (*lab.Lab, int, error) {
	l, err := lab.OpenOnly(name)
	if err != nil {
		return nil, 0, &exitError{code: 2, err: err}
	}
	port, err := strconv.Atoi(portArg)
	if err != nil {
		return nil, 0, &exitError{code: 2, err: fmt.Errorf("port %q: %w", portArg, err)}
	}
	return l, port, nil
}

func addNameFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVar(name, "name", "", "the lab (default: the only lab on this machine)")
}

func newLabUpCommand() *cobra.Command {
	var opts lab.Options
	cmd := &cobra.Command{
		Use:   "up -f FILE_OR_DIR",
		Short: "Create a lab from YAML and wait until it is ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.Logger = logger(cmd)
			start := time.Now()
			l, err := lab.Up(cmd.Context(), opts)
			if err != nil {
				return err
			}
			mode := "with agents"
			if l.NoAgent() {
				mode = "without agents (plain routing)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up %s: %d nodes, %d pods in %s\n",
				l.Name(), mode, len(l.Nodes()), len(l.Pods()), time.Since(start).Round(time.Millisecond))
			fmt.Fprintf(cmd.OutOrStdout(), "try: membranectl lab matrix --name %s; membranectl lab down --name %s\n", l.Name(), l.Name())
			return nil
		},
	}
	cmd.Flags().StringVarP(&opts.Path, "filename", "f", "", "YAML file or directory with the lab's objects")
	cmd.MarkFlagRequired("filename")
	cmd.Flags().StringVar(&opts.Name, "name", "", `lab name (default: the Lab object's metadata.name, else "`+lab.DefaultName+`")`)
	cmd.Flags().BoolVar(&opts.NoAgent, "no-agent", false, "run without agents: plain routing, no datapath")
	cmd.Flags().StringArrayVar(&opts.AgentArgs, "agent-arg", nil, "extra flag for every agent, e.g. --agent-arg=--log-level=debug (repeatable)")
	cmd.Flags().StringVar(&opts.AgentBinary, "agent-binary", "", "membrane-agent executable (default: next to membranectl, else in $PATH)")
	cmd.Flags().BoolVar(&opts.NoProxy, "no-proxy", false, "run no L7 proxy on the nodes (connections that L7 policy redirects then fail closed)")
	cmd.Flags().StringArrayVar(&opts.ProxyArgs, "proxy-arg", nil, "extra flag for every proxy, e.g. --proxy-arg=--log-level=debug (repeatable)")
	cmd.Flags().StringVar(&opts.ProxyBinary, "proxy-binary", "", "membrane-proxy executable (default: next to membranectl or the agent, else in $PATH)")
	timeoutFlag(cmd.Flags(), &opts.ReadyTimeout, lab.DefaultReadyTimeout, "how long to wait for each agent")
	return cmd
}

func newLabRestartAgentsCommand() *cobra.Command {
	var name string
	var args []string
	cmd := &cobra.Command{
		Use:   "restart-agents [--agent-arg=FLAG ...]",
		Short: "Restart every agent, with new flags if given; enforcement and connections carry on",
		Long: `Stops every node's agent and starts it again, as an operator upgrading it or
changing a setting would, and waits until each has applied the datastore.
Programs and maps stay pinned meanwhile: enforcement continues and open
connections are kept. --agent-arg flags replace those given at lab up;
without any the agents get the flags they had. A map size flag
(--agent-arg=--map-size-conntrack=N) resizes that map and keeps its
entries.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.OpenOnly(name)
			if err != nil {
				return err
			}
			l.SetLogger(logger(cmd))
			if !cmd.Flags().Changed("agent-arg") {
				args = l.State().AgentArgs
			}
			start := time.Now()
			if err := l.RestartAgents(cmd.Context(), args); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s: %d agents restarted and applied in %s\n", l.Name(), len(l.Nodes()), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringArrayVar(&args, "agent-arg", nil, "extra flag for every agent, replacing those of lab up (repeatable)")
	return cmd
}

func newLabDownCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab and everything it created (also after a crash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				names, err := lab.List()
				if err != nil {
					return err
				}
				switch len(names) {
				case 0:
					fmt.Fprintln(cmd.OutOrStdout(), "no lab to remove")
					return nil
				case 1:
					name = names[0]
				default:
					return fmt.Errorf("several labs exist (%s): choose one with --name", strings.Join(names, ", "))
				}
			}
			l, err := lab.Open(name)
			if err == nil {
				l.SetLogger(logger(cmd))
				err = l.Down(cmd.Context())
			} else {
				err = lab.Down(cmd.Context(), name)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is down\n", name)
			return nil
		},
	}
	addNameFlag(cmd, &name)
	return cmd
}

func newLabStatusCommand() *cobra.Command {
	var name, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a lab's nodes, agents and pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			l, err := lab.OpenOnly(name)
			if err != nil {
				return err
			}
			st, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			agents := "with agents"
			if st.NoAgent {
				agents = "without agents"
			}
			fmt.Fprintf(out, "lab %s: %s, %s, datastore revision %d\n\n", st.Name, st.Phase, agents, st.Revision)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tUNDERLAY\tPOD CIDRS\tAGENT\tPID\tAPPLIED\tPROXY\tPID\tPROBLEM")
			for _, n := range st.Nodes {
				agent, pid, applied := "-", "-", "-"
				if !st.NoAgent {
					agent, pid, applied = n.Agent, strconv.Itoa(n.AgentPID), strconv.FormatInt(n.AppliedRevision, 10)
				}
				proxy, ppid := "-", "-"
				if n.Proxy != "" {
					proxy, ppid = n.Proxy, strconv.Itoa(n.ProxyPID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, strings.Join(n.Underlay, ","), strings.Join(n.PodCIDRs, ","), agent, pid, applied, proxy, ppid, n.Problem)
			}
			fmt.Fprintln(tw)
			if w := st.World; w != nil {
				fmt.Fprintln(tw, "WORLD\tUNDERLAY\tADDRESSES\tRESPONDER\tPORTS")
				ports := make([]string, len(w.Ports))
				for i, p := range w.Ports {
					ports[i] = strconv.Itoa(p)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", lab.WorldName, strings.Join(w.Underlay, ","), strings.Join(w.Addrs, ","), w.Responder, strings.Join(ports, ","))
				fmt.Fprintln(tw)
			}
			fmt.Fprintln(tw, "POD\tNODE\tIPS\tSTATE\tENDPOINT")
			for _, p := range st.Pods {
				ep := p.Endpoint
				if ep == "" {
					ep = "-"
				}
				fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Node, strings.Join(p.IPs, ","), p.State, ep)
			}
			return tw.Flush()
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newLabLogsCommand() *cobra.Command {
	var name string
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [node/NAME | node/NAME/proxy | node/NAME/responder | world | NAMESPACE/POD]",
		Short: "Print an agent's, a proxy's, a responder's or a pod's logs (all logs without an argument)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.OpenOnly(name)
			if err != nil {
				return err
			}
			target := ""
			if len(args) == 1 {
				target = args[0]
			}
			files, err := l.LogFiles(target)
			if err != nil {
				return err
			}
			return lab.CopyLogs(cmd.Context(), cmd.OutOrStdout(), files, follow)
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	return cmd
}

func newLabExecCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "exec NAMESPACE/POD|world|node/NODE -- COMMAND [ARG…]",
		Short: "Run a command inside the network namespace of a pod, the world host or a node",
		Args: func(cmd *cobra.Command, args []string) error {
			switch len(args) {
			case 0:
				return errors.New("lab exec: name where to run (NAMESPACE/POD, world or node/NODE) and the command: lab exec NAMESPACE/POD -- COMMAND [ARG…]")
			case 1:
				return fmt.Errorf("lab exec %s: no command to run: give it after --, as in lab exec %s -- ip addr", args[0], args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.OpenOnly(name)
			if err != nil {
				return err
			}
			code, err := l.Exec(cmd.Context(), args[0], args[1:], lab.Stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	addNameFlag(cmd, &name)
	return cmd
}

func newLabProbeCommand() *cobra.Command {
	var name string
	var spec lab.ProbeSpec
	cmd := &cobra.Command{
		Use:   "probe FROM TO PORT",
		Short: "Probe TO from FROM: prints allowed (exit 0) or denied (exit 1)",
		Long: `Probe connects from one endpoint to another's built-in responder and
prints "allowed" (exit status 0) if it answered, or "denied" (exit status 1)
if nothing came back in time, or the connection was refused (the datapath
drops silently, so a refusal means that the network let the probe through
and nothing listens there: a note on stderr says so). Other errors exit with
status 2, among them an answer from someone other than TO's responder.

On a port that TO's responder does not serve (a pod's command listens there,
or nothing does) the probe cannot expect the responder's answer: TCP is
allowed once the connection opens (the probe sends nothing), UDP once any
datagram comes back. --verbose then logs connectOnly=true. Where L7 policy
applies, the node proxy accepts the connection itself and answers the probe:
the probe is allowed (the connection was allowed and redirected), and a note
on stderr says that L7 rules decide each request: test those with lab http,
lab grpc or a real client (lab exec FROM -- curl …).

FROM and TO are each one of:
  NAMESPACE/NAME   a pod
  world            the world host (the internet), at 203.0.113.10 or
                   2001:db8:ffff::10, as source and as destination
  world:ADDRESS    the world host at one of its addresses (203.0.113.10,
                   203.0.113.20, 198.51.100.10, 2001:db8:ffff::10,
                   2001:db8:ffff::20, or its underlay 192.0.2.254,
                   2001:db8:0:ff::fe): probes from it leave from ADDRESS
  node/NODE        a node itself, at its underlay address; probes from it
                   leave from the address the kernel picks (169.254.1.1
                   toward its own pods, its underlay address otherwise)

With --verbose, the address the responder saw the probe come from is
logged.`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, port, err := openLabPort(name, args[2])
			if err != nil {
				return err
			}
			spec.From, spec.To, spec.Port = args[0], args[1], port
			res, err := l.Probe(cmd.Context(), spec)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			fmt.Fprintln(cmd.OutOrStdout(), res)
			kv := []any{"result", res.String(), "target", res.Target, "elapsed", res.Elapsed}
			if res.Detail != "" {
				kv = append(kv, "detail", res.Detail)
			}
			if res.Source.IsValid() {
				kv = append(kv, "source", res.Source)
			}
			if res.ConnectOnly {
				kv = append(kv, "connectOnly", true)
			}
			logger(cmd).Info("probe", kv...)
			switch {
			case res.Proxy:
				fmt.Fprintf(cmd.ErrOrStderr(), "note: the node proxy answered for %s: L7 policy decides each request on port %d (lab http, lab grpc)\n", args[1], port)
			case res.Refused:
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s refused the connection: the network let it through, but nothing listens on %s/%d\n", args[1], spec.Protocol, port)
			}
			if !res.Allowed {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVar(&spec.Protocol, "protocol", "tcp", "tcp or udp")
	timeoutFlag(cmd.Flags(), &spec.Timeout, lab.DefaultProbeTimeout, "how long to wait for an answer")
	cmd.Flags().IntVar(&spec.Family, "family", 0, "IP family: 4 or 6 (default 4, or that of a world:ADDRESS)")
	return cmd
}

func newLabMatrixCommand() *cobra.Command {
	var name, output string
	var spec lab.MatrixSpec
	cmd := &cobra.Command{
		Use:   "matrix",
		Short: "Probe every ordered pair of pods (and nodes, world) and print the reachability matrix",
		Long: `Matrix probes every ordered pair of distinct pods (and nodes and the world
host, if asked) on every protocol and port, in parallel, as lab probe does,
and prints the results.

The table has one grid per protocol and port, a row per source and a column
per destination: "." allowed, "X" denied, "-" not probed (a pod and itself),
"P" allowed to the node proxy, which answered (L7 policy decides each request
on that port: test those with lab http or lab grpc), and "R" refused by the
destination (the network let the probe through, nothing listens there; a
denial in the counts). tsv prints FROM, TO, PROTOCOL, PORT and allowed or
denied per line; json adds "note": "proxy" or "refused" where they apply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "tsv", "json"); err != nil {
				return err
			}
			l, err := lab.OpenOnly(name)
			if err != nil {
				return err
			}
			m, err := l.Matrix(cmd.Context(), spec)
			if err != nil {
				return err
			}
			switch output {
			case "table":
				return m.WriteTable(cmd.OutOrStdout())
			case "tsv":
				return m.WriteTSV(cmd.OutOrStdout())
			default:
				return m.WriteJSON(cmd.OutOrStdout())
			}
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().IntSliceVar(&spec.Ports, "ports", nil, "ports to probe (default: every declared containerPort)")
	cmd.Flags().StringSliceVar(&spec.Protocols, "protocols", []string{"tcp", "udp"}, "protocols to probe")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, tsv or json")
	timeoutFlag(cmd.Flags(), &spec.Timeout, lab.DefaultProbeTimeout, "how long each probe waits for an answer")
	cmd.Flags().IntVar(&spec.Family, "family", 0, "IP family: 4 or 6 (default 4; 6 in a lab whose pods have IPv6 addresses alone)")
	cmd.Flags().IntVar(&spec.Concurrency, "concurrency", lab.DefaultMatrixConcurrency, "probes in flight at once")
	cmd.Flags().BoolVar(&spec.World, "world", false, `add the world host ("world") as a source and a destination`)
	cmd.Flags().BoolVar(&spec.Nodes, "nodes", false, `add every node ("node/NAME") as a source and a destination`)
	return cmd
}
