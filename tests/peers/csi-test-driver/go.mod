// Test-bed peer: csi-test-driver, our own small CSI driver with the SnapshotMetadata service
// (the upstream CSI hostpath driver is refused by the Go module proxy). See main.go.
// grpc, protobuf, genproto and golang.org/x/* are required at tests/peers/kube's versions and
// the CSI spec at the sidecars' v1.12.0, so their compiled packages come from the shared
// Go build cache.
module cbt.toolkit/tests/peers/csi-test-driver

go 1.26.0

require (
	github.com/container-storage-interface/spec v1.12.0
	google.golang.org/grpc v1.82.1
)

require (
	go.opentelemetry.io/otel v1.44.0 // indirect
	go.opentelemetry.io/otel/sdk/metric v1.44.0 // indirect
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
)
