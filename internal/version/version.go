// Package version holds Membrane's version string, set at build time with
// -ldflags "-X github.com/membrane-mesh/membrane/internal/version.Version=…".
package version

// Version of this build.
var Version = "dev"
