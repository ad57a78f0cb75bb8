package main

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/lab"
)

func newLabHTTPCommand() *cobra.Command {
	var name string
	var spec lab.HTTPSpec
	var headers []string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "http FROM TO PORT [PATH]",
		Short: "Send one HTTP request from FROM to TO's responder: prints the status (exit 0 for 2xx/3xx, 1 otherwise)",
		Long: `Send one HTTP request from FROM to TO (endpoints as for "lab probe") and
print the response's status line and body. Exit status: 0 for a 2xx or 3xx
response, 1 for any other response, 2 when no response came at all
(refused, timed out, reset) or on other errors.

Every lab responder answers HTTP/1.1 and h2c (--http2) on each of its
ports with 200 and its name; when L7 policy applies, the node proxy may
answer 403 "Access denied" instead. With -v, the response headers are
printed too: X-Membrane-Source is the address the responder saw,
X-Membrane-Host the Host it got (set it with --host or -H 'Host: NAME'),
and X-Echo-NAME echoes each other request header it received.`,
		Example: `  membranectl lab http shop/frontend shop/web 80 /public/index.html
  membranectl lab http shop/frontend shop/web 80 /admin -X DELETE
  membranectl lab http shop/frontend shop/web 80 /api/orders -X POST -H 'X-Token: s3cret' -v`,
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, port, err := openLabPort(name, args[2])
			if err != nil {
				return err
			}
			spec.From, spec.To, spec.Port = args[0], args[1], port
			if len(args) == 4 {
				spec.Path = args[3]
			}
			spec.Header = http.Header{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok || strings.TrimSpace(k) == "" {
					return &exitError{code: 2, err: fmt.Errorf("header %q: want 'Name: value'", h)}
				}
				spec.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
			res, err := l.HTTP(cmd.Context(), spec)
			if ie := (*lab.InputError)(nil); errors.As(err, &ie) {
				return &exitError{code: 2, err: err}
			}
			if err != nil {
				fmt.Fprintln(cmd.OutOrStdout(), "no response:", err)
				return &exitError{code: 2}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, res.StatusLine())
			if verbose {
				keys := make([]string, 0, len(res.Header))
				for k := range res.Header {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					for _, v := range res.Header[k] {
						fmt.Fprintf(out, "%s: %s\n", k, v)
					}
				}
				fmt.Fprintln(out)
			}
			fmt.Fprint(out, res.Body)
			if !strings.HasSuffix(res.Body, "\n") && res.Body != "" {
				fmt.Fprintln(out)
			}
			if res.Status >= 400 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&spec.Method, "request", "X", "GET", "HTTP `METHOD`")
	cmd.Flags().StringArrayVarP(&headers, "header", "H", nil, "request header `'Name: value'` (repeatable; 'Host: NAME' is the same as --host NAME)")
	cmd.Flags().StringVar(&spec.Host, "host", "", "Host header (default: the destination address)")
	cmd.Flags().StringVarP(&spec.Body, "data", "d", "", "request body")
	cmd.Flags().BoolVar(&spec.HTTP2, "http2", false, "speak HTTP/2 without TLS (h2c, prior knowledge)")
	cmd.Flags().IntVar(&spec.Family, "family", 0, "IP family: 4 or 6 (default 4, or that of a world:ADDRESS)")
	timeoutFlag(cmd.Flags(), &spec.Timeout, 5*time.Second, "how long to wait for the response")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print the response headers")
	return cmd
}

func newLabGRPCCommand() *cobra.Command {
	var name string
	var spec lab.GRPCSpec
	cmd := &cobra.Command{
		Use:   "grpc FROM TO PORT",
		Short: "Call gRPC's health service on TO from FROM: prints the result (exit 0 for OK, 1 otherwise)",
		Long: `Call grpc.health.v1.Health/Check (or, with --watch, the server-streaming
/grpc.health.v1.Health/Watch) on TO's responder from FROM (endpoints as for
"lab probe"), over h2c. Prints "OK SERVING", or the gRPC status code and
message, e.g. "PermissionDenied: Access denied" when L7 policy refuses the
method. gRPC methods are matched by CiliumNetworkPolicy HTTP rules as paths:
path: "/grpc.health.v1.Health/Check".

Exit status: 0 for OK, 1 for any other gRPC status, 2 on errors.`,
		Example: `  membranectl lab grpc shop/frontend shop/web 80
  membranectl lab grpc shop/frontend shop/web 80 --watch`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, port, err := openLabPort(name, args[2])
			if err != nil {
				return err
			}
			spec.From, spec.To, spec.Port = args[0], args[1], port
			res, err := l.GRPC(cmd.Context(), spec)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", res.Method, res)
			if res.Code != "OK" {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVar(&spec.Service, "service", "", "health service name to ask about (default: the server)")
	cmd.Flags().BoolVar(&spec.Watch, "watch", false, "call the streaming Watch method instead of Check")
	cmd.Flags().IntVar(&spec.Family, "family", 0, "IP family: 4 or 6 (default 4, or that of a world:ADDRESS)")
	timeoutFlag(cmd.Flags(), &spec.Timeout, 5*time.Second, "how long to wait")
	return cmd
}
