# One entry per habit; CI (.ci/run) runs the same test command the README shows.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test race vet bench bench-proxy fuzz sim chaos chaos-short clean

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/herd ./cmd/herd
	go build -o bin/fakeupstream ./cmd/fakeupstream
	go build -o bin/herd-chaos ./cmd/herd-chaos

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

sim:             # the cluster simulation in full: 5 and 50 nodes x 500 deployments (CI runs a brief one)
	HERD_SIM=full go test -run '^TestSimulation$$' -v -timeout 30m ./cluster/

chaos-short:     # the chaos run CI does: 3 nodes, 75 s, partition/kill/pause/clock, a random seed (root)
	go run ./cmd/herd-chaos run --nodes 3 --time 75s --nemesis partition,kill,pause,clock

chaos:           # the long chaos runs: 5 nodes, every mode x nemesis, several seeds (root; about 2 hours)
	scripts/chaos-long.sh --modes "fast redis strict" --seeds "1 2" --time 180s --nodes 5

clean:
	rm -rf bin
