package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// crashMarks are what the Go runtime writes when a process dies of a bug (or the race detector
// finds one); any of them in a node's log fails the run.
var crashMarks = []string{"panic:", "fatal error:", "WARNING: DATA RACE"}

// CheckCrashes checks that no node exited on its own and that no node's log shows a panic, a
// fatal runtime error or a data race.
func CheckCrashes(r *Run) CheckResult {
	var probs problemList
	exits := 0
	for _, op := range r.History {
		if op.Process == NemesisProcess && op.F == FExit {
			exits++
			probs.addf("node %s exited on its own: %s at %s", orUnknown(op.Node), op.Value.Exit, fmtHistoryTime(op.Time))
		}
	}
	crashed, missing := 0, 0
	for _, n := range r.Info.Nodes {
		line, err := firstCrashLine(r.NodeLog(n.Name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing++
			probs.addf("node %s: no log at %s", n.Name, r.NodeLog(n.Name))
		case err != nil:
			missing++
			probs.addf("node %s: reading its log: %v", n.Name, err)
		case line != "":
			crashed++
			probs.addf("node %s's log: %s", n.Name, line)
		}
	}
	res := CheckResult{
		Valid:    True,
		Problems: probs.list(),
		Figures:  map[string]any{"exits": exits, "crashed_logs": crashed, "missing_logs": missing},
	}
	switch {
	case exits > 0 || crashed > 0:
		res.Valid = False
		res.Summary = fmt.Sprintf("%d unexpected exits and %d nodes whose log shows a panic, fatal error or data race.", exits, crashed)
	case missing > 0:
		res.Valid = Unknown
		res.Summary = fmt.Sprintf("No crash seen, but %d node logs could not be read.", missing)
	default:
		res.Summary = fmt.Sprintf("No node exited on its own, and none of the %d node logs shows a panic, fatal error or data race.", len(r.Info.Nodes))
	}
	return res
}

// firstCrashLine is the first line of the log at path holding a crash mark ("" if none). It
// reads line by line, so a log of any size or line length is fine.
func firstCrashLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	for {
		line, err := br.ReadString('\n')
		text := strings.TrimSpace(line)
		for _, m := range crashMarks {
			if i := strings.Index(text, m); i >= 0 {
				return around(text, i), nil
			}
		}
		if err == io.EOF {
			return "", nil
		}
		if err != nil {
			return "", err
		}
	}
}

// around shortens a long line to the part that matters: from a little before the mark at i.
func around(line string, i int) string {
	const before, most = 60, 300
	if len(line) <= most {
		return line
	}
	from := max(0, i-before)
	out := line[from:min(len(line), from+most)]
	if from > 0 {
		out = "..." + out
	}
	if from+most < len(line) {
		out += "..."
	}
	return out
}
