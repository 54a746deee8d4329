package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckCrashes(t *testing.T) {
	clean := "time=... level=INFO msg=\"listening\" addr=10.0.0.1:4000\ntime=... level=INFO msg=\"served\" note=\"no panic here\"\n"
	tests := []struct {
		name    string
		logs    map[string]string // node -> log; a node left out has no log file
		exit    bool              // the nemesis saw n2 exit on its own
		want    Valid
		problem string
	}{
		{name: "clean", logs: map[string]string{"n1": clean, "n2": clean, "n3": ""}, want: True},
		{
			name: "a panic",
			logs: map[string]string{"n1": clean, "n2": clean + "panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\n", "n3": clean},
			want: False, problem: "node n2's log: panic: runtime error: index out of range [3] with length 3",
		},
		{
			name: "a fatal error",
			logs: map[string]string{"n1": clean, "n2": clean, "n3": "fatal error: concurrent map writes"},
			want: False, problem: "node n3's log: fatal error: concurrent map writes",
		},
		{
			name: "a data race",
			logs: map[string]string{"n1": "==================\nWARNING: DATA RACE\nWrite at 0x00c000 by goroutine 7:\n", "n2": clean, "n3": clean},
			want: False, problem: "node n1's log: WARNING: DATA RACE",
		},
		{
			name: "an exit the nemesis did not cause",
			logs: map[string]string{"n1": clean, "n2": clean, "n3": clean},
			exit: true, want: False, problem: "node n2 exited on its own: exit status 2 at 31.2 s",
		},
		{
			name: "a missing log",
			logs: map[string]string{"n1": clean, "n3": clean},
			want: Unknown, problem: "node n2: no log at",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := fxRun("fast", 3)
			r.Dir = t.TempDir()
			if err := os.MkdirAll(filepath.Join(r.Dir, NodesDir), 0o755); err != nil {
				t.Fatal(err)
			}
			for node, log := range tc.logs {
				if err := os.WriteFile(r.NodeLog(node), []byte(log), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.exit {
				r.fxOp(Op{Type: Info, F: FExit, Process: NemesisProcess, Node: "n2", Time: fxSec(31.2), Value: Value{Exit: "exit status 2"}})
			}
			res := CheckCrashes(r)
			if res.Valid != tc.want {
				t.Fatalf("valid = %v, want %v; summary %q, problems %q", res.Valid, tc.want, res.Summary, res.Problems)
			}
			if tc.problem != "" && (len(res.Problems) != 1 || !strings.HasPrefix(res.Problems[0], tc.problem)) {
				t.Errorf("problems = %q, want one starting %q", res.Problems, tc.problem)
			}
		})
	}
}

func TestFirstCrashLineLongLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n1.log")
	long := strings.Repeat("x", 1<<20) // longer than a bufio.Scanner's default line
	if err := os.WriteFile(path, []byte(long+"\n"+long+" panic: boom"), 0o644); err != nil {
		t.Fatal(err)
	}
	line, err := firstCrashLine(path)
	if err != nil || !strings.HasPrefix(line, "...") || !strings.HasSuffix(line, " panic: boom") || len(line) > 310 {
		t.Errorf("firstCrashLine = %d bytes ending %q, %v; want the end of the second line, clipped", len(line), line[max(0, len(line)-20):], err)
	}
}
