package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// LogFile is one log of the lab.
type LogFile struct {
	// Label names the log: "node/NAME" for an agent, "NS/POD/CONTAINER"
	// for a container.
	Label string
	Path  string
}

// LogFiles returns the logs of target: "node/NAME" (the node's agent),
// "node/NAME/proxy" (its L7 proxy), "node/NAME/responder" (the node's
// responder), "world" (the world host's
// responder), "NAMESPACE/POD" (its containers), or "" (every log of the
// lab).
func (l *Lab) LogFiles(target string) ([]LogFile, error) {
	st := l.State()
	var out []LogFile
	agents := func(n NodeState) {
		if !st.NoAgent {
			out = append(out, LogFile{Label: "node/" + n.Name, Path: l.y.agentLog(n.Name)})
		}
	}
	proxies := func(n NodeState) {
		if n.ProxySupervisor != nil {
			out = append(out, LogFile{Label: "node/" + n.Name + "/proxy", Path: l.y.proxyLog(n.Name)})
		}
	}
	nodeResponder := func(n NodeState) {
		if len(n.Responders) > 0 {
			out = append(out, LogFile{Label: "node/" + n.Name + "/responder", Path: l.y.nodeResponderLog(n.Name)})
		}
	}
	world := func() {
		if st.World != nil && len(st.World.Responders) > 0 {
			out = append(out, LogFile{Label: WorldName, Path: l.y.worldResponderLog()})
		}
	}
	containers := func(p PodState) {
		for _, proc := range p.Processes {
			if proc.Log != "" {
				out = append(out, LogFile{Label: p.key() + "/" + proc.Container, Path: proc.Log})
			}
		}
	}
	if target == "" {
		for _, n := range st.Nodes {
			agents(n)
			proxies(n)
			nodeResponder(n)
		}
		world()
		for _, p := range st.Pods {
			containers(p)
		}
		return out, nil
	}
	if target == WorldName {
		if world(); len(out) == 0 {
			return nil, fmt.Errorf("lab %s has no world host", l.y.name)
		}
		return out, nil
	}
	if name, ok := strings.CutSuffix(strings.TrimPrefix(target, "node/"), "/proxy"); ok && strings.HasPrefix(target, "node/") {
		if n := st.node(name); n != nil {
			if proxies(*n); len(out) == 0 {
				return nil, fmt.Errorf("lab %s: node %s runs no proxy", l.y.name, name)
			}
			return out, nil
		}
	}
	if name, ok := strings.CutSuffix(strings.TrimPrefix(target, "node/"), "/responder"); ok && strings.HasPrefix(target, "node/") {
		if n := st.node(name); n != nil {
			if nodeResponder(*n); len(out) == 0 {
				return nil, fmt.Errorf("lab %s: node %s has no responder", l.y.name, name)
			}
			return out, nil
		}
	}
	if name, ok := strings.CutPrefix(target, "node/"); ok {
		if n := st.node(name); n != nil {
			if st.NoAgent {
				return nil, fmt.Errorf("lab %s runs without agents: node %s has no agent log (its responder's is node/%s/responder)", l.y.name, name, name)
			}
			agents(*n)
			return out, nil
		}
	}
	ns, name, _ := strings.Cut(target, "/")
	p := st.pod(ns, name)
	if p == nil {
		return nil, fmt.Errorf("lab %s has no pod %s and no node %s", l.y.name, target, strings.TrimPrefix(target, "node/"))
	}
	containers(*p)
	return out, nil
}

// CopyLogs writes the logs to w, each line prefixed with "[LABEL] " when
// there is more than one log. With follow it then keeps writing what is
// appended, until ctx ends.
func CopyLogs(ctx context.Context, w io.Writer, logs []LogFile, follow bool) error {
	offsets := make([]int64, len(logs))
	partial := make([][]byte, len(logs))
	prefix := len(logs) > 1
	for {
		for i, lf := range logs {
			f, err := os.Open(lf.Path)
			if err != nil {
				continue // not written yet
			}
			f.Seek(offsets[i], io.SeekStart)
			data, err := io.ReadAll(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", lf.Path, err)
			}
			offsets[i] += int64(len(data))
			data = append(partial[i], data...)
			cut := bytes.LastIndexByte(data, '\n') + 1
			if !follow {
				cut = len(data)
			}
			partial[i] = slices.Clone(data[cut:])
			if err := writeLines(w, data[:cut], lf.Label, prefix); err != nil {
				return err
			}
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func writeLines(w io.Writer, data []byte, label string, prefix bool) error {
	if len(data) == 0 {
		return nil
	}
	if !prefix {
		_, err := w.Write(data)
		return err
	}
	var b bytes.Buffer
	for line := range bytes.Lines(data) {
		b.WriteString("[" + label + "] ")
		b.Write(line)
		if !bytes.HasSuffix(line, []byte("\n")) {
			b.WriteByte('\n')
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// logTail returns the last n lines of the file at path, or "".
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 8 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
