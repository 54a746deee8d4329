package main

import (
	"bufio"
	"debug/buildinfo"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// memKB is a process's resident memory from /proc/PID/status.
type memKB struct {
	RSS int64 `json:"vm_rss_kb"`
	HWM int64 `json:"vm_hwm_kb"` // peak RSS over the process's life
}

// readMem reads VmRSS and VmHWM from /proc/PID/status.
func readMem(pid int) (memKB, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memKB{}, err
	}
	return parseStatus(string(b))
}

func parseStatus(s string) (memKB, error) {
	var m memKB
	var seen int
	for line := range strings.Lines(s) {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("%s: unexpected value %q", key, strings.TrimSpace(val))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		if key == "VmRSS" {
			m.RSS = n
		} else {
			m.HWM = n
		}
		seen++
	}
	if seen != 2 {
		return m, fmt.Errorf("VmRSS or VmHWM missing")
	}
	return m, nil
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on every Linux port Go
// runs on (it is fixed by the kernel ABI, not by CONFIG_HZ).
const clockTick = 10 * time.Millisecond

// readProcCPU returns the user+system CPU time a process has used, all threads included.
func readProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

func parseProcStat(s string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may contain spaces: split after it.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat %q", s)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat %q", s)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed stat %q", s)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// cpuTimes is the machine-wide CPU time from /proc/stat, in ticks.
//
// Only idle (and iowait) and steal are used: on a tickless kernel they are kept precisely,
// while user and system are sampled at each tick and miss short bursts of work, so busy time
// is wall time × online CPUs − idle.
type cpuTimes struct {
	idle, steal uint64
	cpus        int // online CPUs (cpuN lines)
}

func readMachineCPU() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseMachineStat(string(b))
}

func parseMachineStat(s string) (cpuTimes, error) {
	var t cpuTimes
	first := true
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			t.cpus++
			continue
		}
		if !first || len(f) < 9 {
			return cpuTimes{}, fmt.Errorf("unexpected /proc/stat line %q", strings.TrimSpace(line))
		}
		first = false
		// cpu user nice system idle iowait irq softirq steal ...
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return cpuTimes{}, fmt.Errorf("unexpected /proc/stat line %q", strings.TrimSpace(line))
			}
			v[i] = n
		}
		t.idle, t.steal = v[3]+v[4], v[7]
	}
	if first || t.cpus == 0 {
		return cpuTimes{}, fmt.Errorf("no cpu lines in /proc/stat")
	}
	return t, nil
}

// busy returns the share of the machine's CPU time (0-100 %) that was busy, and that the
// hypervisor stole, between two readings wall apart.
func (a cpuTimes) busy(b cpuTimes, wall time.Duration) (busyPct, stealPct float64) {
	avail := wall.Seconds() * float64(b.cpus) / clockTick.Seconds() // in ticks
	if avail <= 0 {
		return 0, 0
	}
	idle := float64(b.idle - a.idle)
	return min(max(100*(1-idle/avail), 0), 100), 100 * float64(b.steal-a.steal) / avail
}

// machineInfo describes where the numbers were measured.
type machineInfo struct {
	Date          string `json:"date"`
	CPUModel      string `json:"cpu_model"`
	NumCPU        int    `json:"nproc"`
	GOMAXPROCS    int    `json:"gomaxprocs"`
	Kernel        string `json:"kernel,omitempty"`
	MemTotal      string `json:"mem_total,omitempty"`
	LoadAvg       string `json:"loadavg_at_start,omitempty"`
	GoVersion     string `json:"go_version"` // herdbench's toolchain
	HerdGoVersion string `json:"herd_go_version,omitempty"`
	HerdRevision  string `json:"herd_revision,omitempty"`
}

func readMachineInfo(herdPath string, now time.Time) machineInfo {
	m := machineInfo{
		Date:       now.UTC().Format(time.RFC3339),
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				m.MemTotal = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if bi, err := buildinfo.ReadFile(herdPath); err == nil {
		m.HerdGoVersion = bi.GoVersion
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" && modified == "true" {
			rev += " (with uncommitted changes)"
		}
		m.HerdRevision = rev
	}
	return m
}

// cpuModel returns the first "model name" of /proc/cpuinfo (or another architecture's
// equivalent), or "unknown".
func cpuModel(cpuinfo string) string {
	for _, key := range []string{"model name", "Model", "cpu model", "Processor"} {
		for line := range strings.Lines(cpuinfo) {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.TrimSpace(k) == key {
				if v = strings.TrimSpace(v); v != "" {
					return v
				}
			}
		}
	}
	return "unknown"
}
