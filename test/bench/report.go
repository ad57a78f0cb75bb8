package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// figure is one reported number with its target.
type figure struct {
	name   string
	value  float64
	unit   string
	target string // human form, e.g. "≤ 120 ns"
	ok     bool
	hasTgt bool
	err    error
}

// report collects sections of text and the summary figures.
type report struct {
	started  time.Time
	sections []string
	figures  []figure
}

func (r *report) section(title string, body string) {
	r.sections = append(r.sections, title+"\n"+strings.Repeat("-", len(title))+"\n"+body)
}

// check adds a figure compared against a limit: below (≤) or above (≥).
func (r *report) check(name string, value float64, unit string, limit float64, atMost bool) {
	f := figure{name: name, value: value, unit: unit, hasTgt: true}
	if atMost {
		f.target = fmt.Sprintf("≤ %s %s", num(limit), unit)
		f.ok = value <= limit
	} else {
		f.target = fmt.Sprintf("≥ %s %s", num(limit), unit)
		f.ok = value >= limit
	}
	r.figures = append(r.figures, f)
}

// info adds a figure without a target.
func (r *report) info(name string, value float64, unit string) {
	r.figures = append(r.figures, figure{name: name, value: value, unit: unit})
}

// failed records a figure that could not be measured: it counts as
// missing, never as met.
func (r *report) failed(name, target string, err error) {
	r.figures = append(r.figures, figure{name: name, target: target, hasTgt: true, err: err})
}

func num(v float64) string {
	switch {
	case v == float64(int64(v)):
		return fmt.Sprintf("%d", int64(v))
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func (r *report) write(w io.Writer, env string) {
	fmt.Fprintf(w, "Membrane benchmark results\n%s\n", env)
	fmt.Fprintf(w, "started %s, took %s\n\n", r.started.UTC().Format(time.RFC3339), time.Since(r.started).Round(time.Second))
	fmt.Fprintln(w, "SUMMARY (a figure that misses its target is marked MISSING)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\ttarget\tstatus")
	for _, f := range r.figures {
		status := ""
		switch {
		case f.err != nil:
			status = "MISSING (not measured: " + f.err.Error() + ")"
		case !f.hasTgt:
			status = "(info)"
		case f.ok:
			status = "ok"
		default:
			status = "MISSING"
		}
		val := "-"
		if f.err == nil {
			val = num(f.value) + " " + f.unit
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.name, val, f.target, status)
	}
	tw.Flush()
	for _, s := range r.sections {
		fmt.Fprintf(w, "\n%s\n", s)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// quartiles returns the first and third quartiles of v (the middle half of
// the samples lies between them).
func quartiles(v []float64) (float64, float64) {
	if len(v) == 0 {
		return 0, 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	at := func(q float64) float64 {
		x := q * float64(len(s)-1)
		i := int(x)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (x-float64(i))*(s[i+1]-s[i])
	}
	return at(0.25), at(0.75)
}

// roundRatios returns num[i]/den[i] for each round i, less off from each:
// two configurations measured in the same interleaved round share that
// round's machine, so their ratio is steadier than a ratio of medians.
func roundRatios(num, den []float64, off float64) []float64 {
	out := make([]float64, min(len(num), len(den)))
	for i := range out {
		out[i] = (num[i] - off) / (den[i] - off)
	}
	return out
}

// roundDiffs is, per round, (a - b) / n: a cost per operation of
// programs doing n of it, less their floor.
func roundDiffs(a, b []float64, n float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = max(0, (a[i]-b[i])/n)
	}
	return out
}

func fmtList(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = num(x)
	}
	return strings.Join(parts, " ")
}
