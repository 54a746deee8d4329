package proxy

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Requests that failed before a deployment was chosen count in their group's series by status,
// each series resolved once and then reused.
func TestUnroutedSeries(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	for range 3 {
		m.countUnrouted("g", 429)
	}
	m.countUnrouted("g", 404)
	m.countUnrouted("", 404)
	m.countUnrouted("h", 429)
	for _, c := range []struct {
		group, status string
		want          float64
	}{{"g", "429", 3}, {"g", "404", 1}, {"", "404", 1}, {"h", "429", 1}, {"h", "404", 0}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.group, "", c.status)); got != c.want {
			t.Errorf("group %q status %s: %v requests, want %v", c.group, c.status, got, c.want)
		}
	}
	if got, want := testutil.CollectAndCount(m.requests), 5; got != want { // the four above and h/404 just made
		t.Errorf("%d series, want %d", got, want)
	}
}
