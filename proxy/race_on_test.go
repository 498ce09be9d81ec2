//go:build race

package proxy

// raceBuild: the race detector's instrumentation makes stack frames larger.
const raceBuild = true
