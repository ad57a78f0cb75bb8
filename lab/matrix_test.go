package lab

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// sampleMatrix is a matrix as a policy "x/a accepts only from x/*, on TCP
// 80" would produce.
func sampleMatrix() *Matrix {
	m := &Matrix{Pods: []string{"x/a", "x/b", "y/a"}, Protocols: []string{"tcp", "udp"}, Ports: []int{80, 81}, Family: 4}
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if from == to {
				continue
			}
			for _, proto := range m.Protocols {
				for _, port := range m.Ports {
					res := "allowed"
					if to == "x/a" && (from == "y/a" || proto != "tcp" || port != 80) {
						res = "denied"
					}
					m.Results = append(m.Results, MatrixResult{From: from, To: to, Protocol: proto, Port: port, Result: res})
				}
			}
		}
	}
	return m
}

func TestMatrixFormats(t *testing.T) {
	m := sampleMatrix()
	for _, c := range []struct {
		file  string
		write func(*bytes.Buffer) error
	}{
		{"matrix.tsv", func(b *bytes.Buffer) error { return m.WriteTSV(b) }},
		{"matrix.json", func(b *bytes.Buffer) error { return m.WriteJSON(b) }},
		{"matrix.txt", func(b *bytes.Buffer) error { return m.WriteTable(b) }},
	} {
		var b bytes.Buffer
		if err := c.write(&b); err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", c.file)
		if *update {
			os.WriteFile(golden, b.Bytes(), 0o644)
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.Bytes(), want) {
			t.Errorf("%s differs from the golden file:\n%s", c.file, b.String())
		}
	}
	if got := m.Lookup("y/a", "x/a", "tcp", 80); got != "denied" {
		t.Errorf("Lookup = %q", got)
	}
	if got := m.Lookup("x/a", "x/a", "tcp", 80); got != "" {
		t.Errorf("Lookup of a pod and itself = %q", got)
	}
	if a, d := m.Counts(); a != 17 || d != 7 {
		t.Errorf("Counts = %d, %d", a, d)
	}
}
