# One entry per habit; CI (.ci/run) runs the same test command the README shows.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test race vet bench bench-proxy fuzz clean

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/herd ./cmd/herd
	go build -o bin/fakeupstream ./cmd/fakeupstream

test:            # fast unit tests only
	go test -short ./...

race:            # the whole suite, as CI runs it
	go test -race ./...

vet:
	go vet ./...
	@test -z "$$(gofmt -l .)" || (gofmt -l . && false)

bench:           # in-process hot-path benchmarks with allocations
	go test -run '^$$' -bench . -benchmem ./proxy/ ./routing/ ./state/local/

bench-proxy:     # fixed-rate load: upstream direct vs httputil.ReverseProxy vs herd
	scripts/bench-proxy.sh --rates 1000,3000 --duration 10s --rounds 3 --limits

fuzz:
	go test ./config -run '^$$' -fuzz FuzzParse -fuzztime 30s
	go test ./proxy -run '^$$' -fuzz FuzzRequest -fuzztime 30s

clean:
	rm -rf bin
