//go:build ignore

// mtls-validate-config: load and validate a kind cluster configuration with kind's own
// loader and validator (the code `kind create cluster --config` runs), without Docker.
// Those are internal packages of sigs.k8s.io/kind, so tools/kind/build.sh compiles this
// file inside a copy of that module, under its pkg/ tree.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mtls-validate-config KIND_CONFIG")
		os.Exit(2)
	}
	cfg, err := encoding.Load(os.Args[1])
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	fmt.Printf("%s: valid (%d nodes)\n", os.Args[1], len(cfg.Nodes))
}
