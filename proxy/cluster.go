package proxy

import (
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
)

// Membership is what /cluster/status shows about the cluster this node belongs to.
type Membership interface {
	Members() []Member
}

// Member is one cluster member as /cluster/status shows it.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Status string `json:"status"` // alive, suspect, dead or left
	Self   bool   `json:"self"`   // this node
	// RaftRole is "leader", "voter", "nonvoter", or "" for a node outside the raft group; set
	// by /cluster/status from the consensus status.
	RaftRole string `json:"raft_role"`
	// ServedConfigVersion is the config version it says it serves (0: its file's); absent when
	// it has not said.
	ServedConfigVersion *uint64 `json:"served_config_version,omitempty"`
	// ClockOffsetSeconds is its clock minus this node's, from heartbeats; absent until known.
	ClockOffsetSeconds *float64 `json:"clock_offset_seconds,omitempty"`
	// LastHeard is when its last heartbeat arrived; zero for this node and before the first.
	LastHeard time.Time `json:"-"`
	// LastHeardSeconds is how long ago that was; absent when LastHeard is zero.
	LastHeardSeconds *float64 `json:"last_heard_seconds,omitempty"`
}

// BackendHealth is the state backend's limit mode and health, for /cluster/status.
type BackendHealth struct {
	LimitMode string // "strict" or "fast": router_settings.cluster_limit_mode as the backend applies it
	// Degraded is true while a Redis is unreachable and each node counts locally at a fair share.
	Degraded bool
}

// ConsensusStatus is what /cluster/status shows about the raft group that orders config changes.
type ConsensusStatus struct {
	Leader        string   // the leader's node name; "" when there is none
	Term          uint64   // raft term
	Voters        []string // voting members' names
	NonVoters     []string // the names of members that replicate the log without voting
	ConfigVersion uint64   // the config version this node has committed and applied to its state; 0 = still its file's
	// ConfigError says why this node does not serve ConfigVersion (it does not build here, e.g.
	// "os.environ/FOO is not set"); "" when it does, or is swapping it in. Never a secret value.
	ConfigError string
	// Homes are the nodes holding shares of strict-mode limits (the raft-replicated table), and
	// HomesVersion its version; empty until the leader wrote the first table.
	Homes        []string
	HomesVersion uint64
}

// deploymentStatus is one deployment's cluster-wide usage in /cluster/status.
type deploymentStatus struct {
	ID          string `json:"id"`
	ModelName   string `json:"model_name"`
	RPMUsed     int64  `json:"rpm_used"`
	RPMLimit    int64  `json:"rpm_limit"` // 0 = unlimited
	TPMUsed     int64  `json:"tpm_used"`
	TPMLimit    int64  `json:"tpm_limit"` // 0 = unlimited
	InFlight    int64  `json:"in_flight"`
	CooledUntil string `json:"cooled_until,omitempty"`
	// CooldownReason says why it cools down (with CooledUntil).
	CooldownReason string `json:"cooldown_reason,omitempty"`
	// LatencyMS and TTFTMS are the mean latency of recent calls and recent streams' time to
	// first token, as latency-based routing sees them; 0 = none yet.
	LatencyMS float64 `json:"latency_ms"`
	TTFTMS    float64 `json:"ttft_ms"`
	// Rights are this node's strict-mode rights for the deployment; absent in fast mode.
	Rights *RightsStatus `json:"rights,omitempty"`
}

// RightsStatus is a deployment's strict-mode rights on this node (state/strict): of the rpm
// limit (and tpm, *_tokens), the share this node holds as a home, what of it is spent and
// cooling, what is out on loan, and what it holds borrowed from other homes.
type RightsStatus struct {
	Home           bool  `json:"home"`
	Share          int64 `json:"share"`
	Busy           int64 `json:"busy"`
	Lent           int64 `json:"lent"`
	Borrowed       int64 `json:"borrowed"`
	ShareTokens    int64 `json:"share_tokens"`
	BusyTokens     int64 `json:"busy_tokens"`
	LentTokens     int64 `json:"lent_tokens"`
	BorrowedTokens int64 `json:"borrowed_tokens"`
}

// clusterStatus answers GET /cluster/status: this node, the members it sees, the state backend,
// and every deployment's usage as this node's merged view has it. ?history=N (1..300) adds the
// last N seconds of requests and 429s per model group and deployment on this node, for the
// dashboard's sparklines.
func (s *Server) clusterStatus(c echo.Context) error {
	snap := s.snap.Load()
	now := time.Now()
	var cs ConsensusStatus
	if s.consensus != nil {
		cs = s.consensus()
	}
	members := []Member{}
	if s.members != nil {
		members = s.members.Members()
	}
	for i := range members {
		m := &members[i]
		m.RaftRole = raftRole(m.Name, cs)
		if m.Self {
			v := snap.version // what this node serves, from the snapshot below
			m.ServedConfigVersion = &v
		}
		if !m.LastHeard.IsZero() {
			ago := now.Sub(m.LastHeard).Seconds()
			m.LastHeardSeconds = &ago
		}
	}
	deps := make([]deploymentStatus, 0, len(snap.deps))
	for i := range snap.deps {
		d := &snap.deps[i]
		l, lim := d.counter.Load(), snap.table.Limits(i)
		ds := deploymentStatus{ID: d.cfg.ID, ModelName: d.cfg.ModelName, RPMUsed: l.Requests, RPMLimit: lim.RPM,
			TPMUsed: l.Tokens, TPMLimit: lim.TPM, InFlight: l.InFlight,
			LatencyMS: milliseconds(l.Latency), TTFTMS: milliseconds(l.TTFT)}
		if s.rights != nil {
			if r, ok := s.rights(d.cfg.ID); ok {
				ds.Rights = &r
			}
		}
		if u := d.cooldown.Until(); !u.IsZero() && u.After(now) {
			ds.CooledUntil = u.UTC().Format("2006-01-02T15:04:05.000Z07:00")
			ds.CooldownReason = d.cooldown.Reason(now)
		}
		deps = append(deps, ds)
	}
	mode, health := s.backend, BackendHealth{LimitMode: "fast"}
	if s.backendMode != nil {
		mode = s.backendMode()
	}
	if s.backendHealth != nil {
		health = s.backendHealth()
	}
	out := map[string]any{
		"node":             s.node[0],
		"now":              now.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		"backend":          s.backend,
		"backend_mode":     mode,
		"limit_mode":       health.LimitMode,
		"backend_degraded": health.Degraded,
		"members":          members,
		"deployments":      deps,
		// The version the deployments above come from: the same snapshot, so a reader sees a
		// version and its content together. It trails config_version (the committed version)
		// while a version is being swapped in, or stays behind when a version cannot be built
		// on this node; config_error then says why.
		"served_config_version": snap.version,
	}
	if s.consensus != nil {
		if cs.Voters == nil {
			cs.Voters = []string{}
		}
		out["leader"], out["term"], out["voters"], out["config_version"] = cs.Leader, cs.Term, cs.Voters, cs.ConfigVersion
		// Why served_config_version stays behind config_version, when it does for a reason.
		out["config_error"] = cs.ConfigError
		if cs.Homes == nil {
			cs.Homes = []string{}
		}
		out["homes"], out["homes_version"] = cs.Homes, cs.HomesVersion
	}
	if q := c.QueryParam("history"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > historySeconds {
			return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: "history",
				Message: "history must be a number of seconds from 1 to " + strconv.Itoa(historySeconds)}
		}
		out["history"] = s.history.read(snap, n)
	}
	return c.JSON(http.StatusOK, out)
}

// raftRole is name's role in the raft group cs describes.
func raftRole(name string, cs ConsensusStatus) string {
	switch {
	case name == cs.Leader && name != "":
		return "leader"
	case slices.Contains(cs.Voters, name):
		return "voter"
	case slices.Contains(cs.NonVoters, name):
		return "nonvoter"
	}
	return ""
}

func milliseconds(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
