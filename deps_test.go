package herd_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps the layout's dependency rules (docs/architecture.md): routing is
// pure, state reaches the network only through interfaces it defines (cluster implements them),
// proxy never reaches cluster or storage libraries, and nothing imports cmd/.
func TestImportDirection(t *testing.T) {
	forbidden := map[string][]string{
		"github.com/herd-proxy/herd/routing": {"net/http", "github.com/labstack/echo", "github.com/herd-proxy/herd/cluster", "github.com/herd-proxy/herd/proxy"},
		"github.com/herd-proxy/herd/state":   {"net/http", "github.com/labstack/echo", "github.com/herd-proxy/herd/proxy", "github.com/herd-proxy/herd/cluster", "github.com/hashicorp/memberlist"},
		"github.com/herd-proxy/herd/cluster": {"github.com/herd-proxy/herd/proxy", "github.com/herd-proxy/herd/routing", "github.com/labstack/echo"},
		"github.com/herd-proxy/herd/config":  {"net/http", "github.com/herd-proxy/herd/proxy", "github.com/herd-proxy/herd/routing", "github.com/herd-proxy/herd/state"},
		"github.com/herd-proxy/herd/proxy":   {"github.com/hashicorp/memberlist", "github.com/hashicorp/raft", "github.com/redis/go-redis"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", pkg+"/...").CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if dep == b || strings.HasPrefix(dep, b+"/") {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
			if strings.Contains(dep, "/herd/cmd/") {
				t.Errorf("%s depends on %s: nothing imports cmd/", pkg, dep)
			}
		}
	}
}

// TestHerdShipsNoTestCode: the herd binary carries none of the chaos suite, the fake upstream
// or the test helpers; only their own commands and tests use them. Nor does it carry Helm or
// the Kubernetes API types, which only deploy/helm's chart test renders and decodes with.
func TestHerdShipsNoTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./cmd/herd").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, b := range []string{"/internal/chaos", "/internal/fakeupstream", "/internal/redistest", "/state/statetest"} {
			if strings.HasSuffix(dep, "/herd"+b) {
				t.Errorf("cmd/herd depends on %s", dep)
			}
		}
		for _, b := range []string{"helm.sh/", "k8s.io/", "sigs.k8s.io/"} {
			if strings.HasPrefix(dep, b) {
				t.Errorf("cmd/herd depends on %s: only the chart test may", dep)
			}
		}
	}
}
