package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	m, err := parseStatus("Name:\therd\nVmPeak:\t 1300000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   18432 kB\nThreads:\t7\n")
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 18432 || m.HWM != 20480 {
		t.Errorf("got %+v", m)
	}
	if _, err := parseStatus("Name:\therd\n"); err == nil {
		t.Error("want an error when VmRSS/VmHWM are missing")
	}
}

func TestParseProcStat(t *testing.T) {
	// The command name may hold spaces and parentheses; utime=150 stime=50 ticks.
	line := "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 7 0 123 456 789"
	got, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * time.Second; got != want {
		t.Errorf("cpu = %v, want %v", got, want)
	}
	if _, err := parseProcStat("garbage"); err == nil {
		t.Error("want an error for garbage")
	}
}

func TestMachineCPU(t *testing.T) {
	a, err := parseMachineStat("cpu  100 0 50 1000 10 0 5 2 0 0\ncpu0 50 0 25 500 5 0 3 1 0 0\ncpu1 50 0 25 500 5 0 2 1 0 0\nintr 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if a.idle != 1010 || a.steal != 2 || a.cpus != 2 {
		t.Fatalf("got %+v", a)
	}
	// 10s on 2 CPUs is 2000 ticks; 500 of them idle: 75 % busy; 20 stolen: 1 %.
	b := cpuTimes{idle: 1510, steal: 22, cpus: 2}
	busy, steal := a.busy(b, 10*time.Second)
	if busy != 75 || steal != 1 {
		t.Errorf("busy, steal = %v, %v; want 75, 1", busy, steal)
	}
	if _, err := parseMachineStat("intr 1\n"); err == nil {
		t.Error("want an error without cpu lines")
	}
}

func TestCPUModel(t *testing.T) {
	if got := cpuModel("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"); got != "AMD EPYC 7B13" {
		t.Errorf("x86: %q", got)
	}
	if got := cpuModel("processor\t: 0\nBogoMIPS\t: 50.00\n"); got != "unknown" {
		t.Errorf("nothing known: %q", got)
	}
}

func TestReadSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	m, err := readMem(os.Getpid())
	if err != nil || m.RSS <= 0 || m.HWM < m.RSS {
		t.Errorf("readMem(self) = %+v, %v", m, err)
	}
	if _, err := readProcCPU(os.Getpid()); err != nil {
		t.Errorf("readProcCPU(self): %v", err)
	}
	if _, err := readMachineCPU(); err != nil {
		t.Errorf("readMachineCPU: %v", err)
	}
}
