// Package l7pb holds Membrane's own xDS resource types
// (proto/membrane/l7/v1/l7.proto): the per-endpoint L7 policy the agent
// publishes and membrane-proxy enforces, and the configuration of the
// proxy's HTTP policy filter. l7.pb.go is generated and committed;
// validate.go is written by hand.
package l7pb

//go:generate ../../hack/protoc.sh
