//go:build !race

package datastore

const raceEnabled = false
