package xds

import (
	"errors"
	"io"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
)

// accessLogService receives the proxy's access logs
// (envoy.service.accesslog.v3.AccessLogService). The stream is the
// client's: it sends until it closes, and the server answers once, at the
// end.
type accessLogService struct {
	alsv3.UnimplementedAccessLogServiceServer
	s *Server
}

func (a accessLogService) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	s := a.s
	id := s.alsOpened()
	defer s.alsClosed(id)
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			if stream.Context().Err() != nil {
				return nil // the client went away, or the server is stopping
			}
			return err
		}
		if ident := msg.GetIdentifier(); ident != nil {
			s.alsIdentified(id, ident.GetNode().GetId(), ident.GetLogName())
		}
		entries := msg.GetHttpLogs().GetLogEntry()
		if s.o.OnAccessLog != nil {
			for _, e := range entries {
				if e != nil {
					s.o.OnAccessLog(e)
				}
			}
		}
		s.alsReceived(id, entries, len(msg.GetTcpLogs().GetLogEntry()))
	}
}

func (s *Server) alsOpened() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.alsNext++
	s.st.als[s.st.alsNext] = &alsStream{since: time.Now()}
	return s.st.alsNext
}

func (s *Server) alsClosed(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.st.als[id]; a != nil {
		s.log.Debug("access log stream closed", "node", a.node, "log", a.logName, "entries", a.entries)
	}
	delete(s.st.als, id)
}

func (s *Server) alsIdentified(id uint64, node, logName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.st.als[id]
	if a == nil || (a.node == node && a.logName == logName) {
		return
	}
	a.node, a.logName = node, logName
	if node != s.o.Node {
		// Only root can reach the socket, and entries are observations,
		// not configuration: keep them, but say so.
		s.log.Warn("access log stream from another node ID", "node", node, "want", s.o.Node, "log", logName)
	} else {
		s.log.Debug("access log stream", "node", node, "log", logName)
	}
}

// entryVerdict is the verdict membrane-proxy writes in an entry's
// metadata (filter "membrane", key "verdict"): FORWARDED, DENIED or ERROR;
// "" for an entry without one (another proxy's).
func entryVerdict(e *accesslogdatav3.HTTPAccessLogEntry) string {
	return e.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()["verdict"].GetStringValue()
}

// alsReceived counts a message's HTTP entries, by verdict too, and its
// TCP ones (ignored).
func (s *Server) alsReceived(id uint64, entries []*accesslogdatav3.HTTPAccessLogEntry, tcp int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	http := 0
	for _, e := range entries {
		if e == nil {
			continue
		}
		http++
		if v := entryVerdict(e); v != "" {
			s.st.alsVerdicts[v]++
		}
	}
	s.st.alsEntries += uint64(http)
	if a := s.st.als[id]; a != nil {
		a.entries += uint64(http)
	}
	if tcp > 0 {
		s.log.Debug("ignored TCP access log entries", "count", tcp)
	}
}
