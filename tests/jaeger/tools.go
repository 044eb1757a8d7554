//go:build tools

// Keeps cmd/jaeger's module in go.mod and go.sum.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
