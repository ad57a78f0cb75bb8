//go:build race

package datastore

// raceEnabled tells timing tests that the race detector slows everything.
const raceEnabled = true
