package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
)

// startRedis starts a throwaway redis-server on a free loopback port, with no persistence, for
// the herd-redis target. It is stopped like every other child.
func startRedis(ctx context.Context, path string) (*child, error) {
	bin, err := exec.LookPath(path)
	if err != nil {
		return nil, fmt.Errorf("the herd-redis target needs redis-server (apt-get install -y redis-server): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return startChild(ctx, "redis-server", bin,
		[]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"},
		func(line string) (string, bool) { return addr, strings.Contains(line, "Ready to accept connections") },
		readyTimeout)
}
