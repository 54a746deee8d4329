package proxy

import (
	"net/http"
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
	// ClockOffsetSeconds is its clock minus this node's, from heartbeats; absent until known.
	ClockOffsetSeconds *float64 `json:"clock_offset_seconds,omitempty"`
}

// ConsensusStatus is what /cluster/status shows about the raft group that orders config changes.
type ConsensusStatus struct {
	Leader        string   // the leader's node name; "" when there is none
	Term          uint64   // raft term
	Voters        []string // voting members' names
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
// and every deployment's usage as this node's merged view has it.
func (s *Server) clusterStatus(c echo.Context) error {
	snap := s.snap.Load()
	members := []Member{}
	if s.members != nil {
		members = s.members.Members()
	}
	deps := make([]deploymentStatus, 0, len(snap.deps))
	for i := range snap.deps {
		d := &snap.deps[i]
		l, lim := d.counter.Load(), snap.table.Limits(i)
		ds := deploymentStatus{ID: d.cfg.ID, ModelName: d.cfg.ModelName, RPMUsed: l.Requests, RPMLimit: lim.RPM,
			TPMUsed: l.Tokens, TPMLimit: lim.TPM, InFlight: l.InFlight}
		if s.rights != nil {
			if r, ok := s.rights(d.cfg.ID); ok {
				ds.Rights = &r
			}
		}
		if u := d.cooldown.Until(); !u.IsZero() && u.After(time.Now()) {
			ds.CooledUntil = u.UTC().Format("2006-01-02T15:04:05.000Z07:00")
		}
		deps = append(deps, ds)
	}
	out := map[string]any{
		"node":        s.node[0],
		"backend":     s.backend,
		"members":     members,
		"deployments": deps,
		// The version the deployments above come from: the same snapshot, so a reader sees a
		// version and its content together. It trails config_version (the committed version)
		// while a version is being swapped in, or stays behind when a version cannot be built
		// on this node; config_error then says why.
		"served_config_version": snap.version,
	}
	if s.consensus != nil {
		cs := s.consensus()
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
	return c.JSON(http.StatusOK, out)
}
