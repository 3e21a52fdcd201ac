// Build-only module: upstream's echo-basic backend, at the Gateway API version whose
// CRDs the test tiers install (tools/apiserver/build.sh GATEWAY_API_VERSION). v1.6.3,
// not v1.7.0: v1.7.0 needs Go 1.27 (a toolchain download), v1.6.3 builds with Go 1.26.
module github.com/mtls-conformance/tools/images/echo-basic

go 1.26.0

tool sigs.k8s.io/gateway-api/conformance/echo-basic

require (
	golang.org/x/net v0.55.0 // indirect
	golang.org/x/sys v0.45.0 // indirect
	golang.org/x/text v0.37.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260427160629-7cedc36a6bc4 // indirect
	google.golang.org/grpc v1.81.1 // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
	sigs.k8s.io/gateway-api/conformance v1.6.3 // indirect
)
