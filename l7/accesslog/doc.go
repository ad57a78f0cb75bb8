// Package accesslog streams membrane-proxy's access log to the agent: one
// envoy.data.accesslog.v3.HTTPAccessLogEntry per request, sent with the
// AccessLogService's StreamAccessLogs to the cluster the listener's
// http_grpc access logger names (docs/L7.md, "Access log entries").
//
// The request path hands a Record to Client.Log, which never blocks: the
// record goes into a bounded queue, or, when the queue is full (the agent
// is away or slow), it is dropped and counted. One goroutine (Run) turns
// records into entries, batches them, and sends them; the first message of
// every stream carries the identifier (node and log name). When the stream
// breaks it reconnects with backoff, resending the batch it was holding.
package accesslog
