package main

import (
	"time"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// settle waits until the kernel has finished tearing down what a section
// left behind. Deleting a namespace with a thousand interfaces and their
// tcx links goes on for tens of seconds after the section returns, with
// the kernel's namespace and RTNL locks held and hundreds of tasks waiting
// on them; the next section would measure that instead of Membrane. It
// creates and deletes a network namespace (which takes those locks) until
// that is quick twice in a row, and returns how long it waited.
func settle() time.Duration {
	const quick, limit = 50 * time.Millisecond, 3 * time.Minute
	t0 := time.Now()
	for streak := 0; streak < 2 && time.Since(t0) < limit; {
		name := "mbr-" + uniqueName("settle")
		s := time.Now()
		if err := netns.Create(name); err == nil {
			netns.Delete(name)
		}
		if time.Since(s) < quick {
			streak++
		} else {
			streak = 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(t0)
}
