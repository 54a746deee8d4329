package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The run's network lives in namespaces the suite creates and removes: a bridge in a namespace
// of its own, and one namespace per node and one for the controller (the clients, the fake
// upstream and redis-server), each joined to the bridge by a veth pair. Addresses come from
// TEST-NET-2 and exist only inside those namespaces: nothing is routed anywhere else.
const (
	nsPrefix  = "hchaos-"         // every namespace of every run starts with it
	subnet    = "198.51.100."     // TEST-NET-2 (RFC 5737)
	ctlHost   = subnet + "1"      // the controller's address
	firstNode = 11                // n1 is 198.51.100.11
	netmask   = "/24"             // the bridge's subnet
	netnsDir  = "/var/run/netns/" // where ip netns keeps its names
	etcNetns  = "/etc/netns/"     // ip netns exec bind-mounts /etc/netns/<name>/* over /etc/*
)

// Net is one run's network.
type Net struct {
	prefix string // nsPrefix + pid + "-" + 4 hex digits + "-": names of this run
	Bridge string // namespace holding the bridge
	Ctl    string // the controller's namespace
	nodes  map[string]string

	madeEtcNetns bool // WriteHosts created /etc/netns itself: Close removes it when empty
}

// NodeAddr is node i's address (i from 1).
func NodeAddr(i int) string { return subnet + strconv.Itoa(firstNode+i-1) }

// NS is the namespace of a node.
func (n *Net) NS(node string) string { return n.nodes[node] }

// ip runs ip(8) and returns its error with its output.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNS runs args inside namespace ns (ip netns exec).
func inNS(ctx context.Context, ns string, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NewNet creates the namespaces for nodes (named n1..nN) and the bridge between them. On
// error everything made so far is removed.
func NewNet(ctx context.Context, nodes []string) (_ *Net, err error) {
	// The pid lets a later run tell whether this one is still alive; the random part keeps two
	// runs of one process apart.
	n := &Net{prefix: nsPrefix + strconv.Itoa(os.Getpid()) + "-" + randomHex(2) + "-", nodes: make(map[string]string)}
	n.Bridge, n.Ctl = n.prefix+"br", n.prefix+"ctl"
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := ip(ctx, "netns", "add", n.Bridge); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", n.Bridge, "link", "add", "br0", "type", "bridge"},
		{"-n", n.Bridge, "link", "set", "br0", "up"},
		{"-n", n.Bridge, "link", "set", "lo", "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return nil, err
		}
	}
	if err := n.attach(ctx, n.Ctl, "ctl", ctlHost); err != nil {
		return nil, err
	}
	for i, name := range nodes {
		ns := n.prefix + name
		n.nodes[name] = ns
		if err := n.attach(ctx, ns, name, NodeAddr(i+1)); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// attach creates namespace ns with eth0 at addr, plugged into the bridge as port v-<port>.
func (n *Net) attach(ctx context.Context, ns, port, addr string) error {
	if err := ip(ctx, "netns", "add", ns); err != nil {
		return err
	}
	peer := "v-" + port
	for _, args := range [][]string{
		{"link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", n.Bridge},
		{"-n", n.Bridge, "link", "set", peer, "master", "br0", "up"},
		{"-n", ns, "addr", "add", addr + netmask, "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// WriteHosts gives the controller's and every node's namespace an /etc/hosts where each of
// names resolves to its address, as a container network's DNS resolves service names: ip netns
// exec bind-mounts /etc/netns/<namespace>/hosts over /etc/hosts for what it starts there
// (processes started otherwise, and the root namespace, keep the machine's). Close removes the
// files, and CleanStale those of a run that could not.
func (n *Net) WriteHosts(names map[string]string) error {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, name := range slices.Sorted(maps.Keys(names)) {
		if net.ParseIP(names[name]) == nil || strings.ContainsAny(name, " \t\n#") {
			return fmt.Errorf("hosts entry %q -> %q: want a name and an IP address", name, names[name])
		}
		fmt.Fprintf(&b, "%s\t%s\n", names[name], name)
	}
	if _, err := os.Stat(etcNetns); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(etcNetns, 0o755); err != nil {
			return err
		}
		n.madeEtcNetns = true
	}
	for _, ns := range append([]string{n.Ctl}, slices.Collect(maps.Values(n.nodes))...) {
		if err := os.MkdirAll(etcNetns+ns, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(etcNetns+ns+"/hosts", []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Close kills whatever still runs in the run's namespaces and deletes them, with their
// /etc/netns directories.
func (n *Net) Close() error {
	err := removeNamespaces(func(name string) bool { return strings.HasPrefix(name, n.prefix) })
	if n.madeEtcNetns {
		_ = os.Remove(etcNetns) // only while empty: another run may have put its own there since
	}
	return err
}

var nsName = regexp.MustCompile(`^` + nsPrefix + `(\d+)-`)

// CleanStale removes the namespaces (and what runs in them) of earlier runs whose herd-chaos
// process is gone: a run that crashed leaves them, the next one removes them.
func CleanStale() error {
	return removeNamespaces(func(name string) bool {
		m := nsName.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		return pid != os.Getpid() && !alive(pid)
	})
}

// alive reports whether a process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// removeNamespaces deletes every namespace that match selects, killing its processes first
// (a paused process is killed too: SIGKILL needs no SIGCONT), and every /etc/netns directory
// that match selects, whether its namespace is still there or not.
func removeNamespaces(match func(string) bool) error {
	var errs []error
	if dirs, err := os.ReadDir(etcNetns); err == nil {
		for _, e := range dirs {
			if match(e.Name()) {
				errs = append(errs, os.RemoveAll(etcNetns+e.Name()))
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	names, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return errors.Join(errs...)
	}
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, e := range names {
		name := e.Name()
		if !match(name) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, f := range strings.Fields(string(out)) {
				// Never ourselves: a thread of ours may be inside the namespace (withNS).
				if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		// Deleting a namespace also deletes its end of every veth pair.
		if err := ip(context.Background(), "netns", "delete", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// withNS runs fn on an OS thread that is inside namespace ns: sockets fn creates belong to ns
// for their whole life, while the rest of the process stays where it was. If the thread
// cannot be put back, it is left locked so that the runtime discards it.
func withNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(self)
	target, err := unix.Open(netnsDir+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	ferr := fn()
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// ListenIn listens on addr inside namespace ns.
func ListenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := withNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// DialerIn returns a DialContext that opens connections from inside namespace ns.
func DialerIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := withNS(ns, func() (err error) {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
