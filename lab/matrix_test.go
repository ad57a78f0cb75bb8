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

// TestMatrixTableNotes: proxy and refused results get cells of their own
// and a line saying what they mean; the counts stay allowed and denied.
func TestMatrixTableNotes(t *testing.T) {
	m := &Matrix{Pods: []string{"x/a", "x/b"}, Protocols: []string{"tcp"}, Ports: []int{80}, Family: 4,
		Results: []MatrixResult{
			{From: "x/a", To: "x/b", Protocol: "tcp", Port: 80, Result: "allowed", Note: NoteProxy},
			{From: "x/b", To: "x/a", Protocol: "tcp", Port: 80, Result: "denied", Note: NoteRefused},
		}}
	var b bytes.Buffer
	if err := m.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"x/a     -   P\n", "x/b     R   -\n",
		"tcp/80: 1 allowed, 1 denied",
		"\nP: allowed to the node proxy", "\nR: denied, but by the destination",
	} {
		if !bytes.Contains(b.Bytes(), []byte(want)) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	m.WriteJSON(&b)
	if !bytes.Contains(b.Bytes(), []byte(`"note": "proxy"`)) {
		t.Errorf("json lacks the note:\n%s", b.String())
	}
}
