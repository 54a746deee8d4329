package chaos

import (
	"bytes"
	"fmt"
	"html"
	"html/template"
	"image/color"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The report's plots are drawn by gonum/plot to SVG and inlined in the page. The canvas is
// repPlotW points wide, which the page shows 1152 px wide (4/3 px per point), so 12 pt text
// reads as 16 px. The SVG names its font "Liberation Sans"; the page's CSS falls back to
// metric-compatible fonts (Arimo, Arial) and then to the generic sans-serif, so text shows
// wherever Liberation is not installed.
const repPlotW = vg.Length(864)

var repFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// repKinds is the order fault kinds are listed in; their colours stay the same in every plot.
var repKinds = []string{KindPartition, KindLoss, KindKill, KindLeader, KindPause, KindClock, KindRedis, KindRedisPause}

var repKindColors = map[string]color.RGBA{
	KindPartition:  {0x4e, 0x79, 0xa7, 0xff}, // blue
	KindLoss:       {0x76, 0xb7, 0xb2, 0xff}, // teal
	KindKill:       {0xe1, 0x57, 0x59, 0xff}, // red
	KindLeader:     {0xff, 0x9d, 0xa7, 0xff}, // pink
	KindPause:      {0xed, 0xc9, 0x48, 0xff}, // yellow
	KindClock:      {0x9c, 0x75, 0x5f, 0xff}, // brown
	KindRedis:      {0x8c, 0x8c, 0x8c, 0xff}, // grey
	KindRedisPause: {0xba, 0xb0, 0xac, 0xff}, // light grey
}

func repKindColor(key string) color.RGBA {
	if c, ok := repKindColors[key]; ok {
		return c
	}
	return color.RGBA{0x59, 0x59, 0x59, 0xff}
}

// repKindName is a fault key as people read it.
func repKindName(key string) string {
	if key == KindLeader {
		return "kill (raft leader)"
	}
	return key
}

// Op types' colours, the same in every plot and in the page's tables.
var repTypeColors = map[OpType]color.RGBA{
	OK:   {0x2c, 0xa0, 0x2c, 0xff}, // green
	Fail: {0xe8, 0x59, 0x0c, 0xff}, // orange
	Info: {0x6f, 0x42, 0xc1, 0xff}, // violet
}

var repTypes = []OpType{OK, Fail, Info}

func repHex(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func repAlpha(c color.RGBA, a uint8) color.NRGBA { return color.NRGBA{c.R, c.G, c.B, a} }

// repNewPlot is a plot with the report's fonts and a time axis over [0, end] seconds.
func repNewPlot(title, ylabel string, end float64) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(repFont, 13)
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "time since start (s)"
	p.Y.Label.Text = ylabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(repFont, 11)
		a.Tick.Label.Font = font.From(repFont, 10)
	}
	p.Legend.TextStyle.Font = font.From(repFont, 10)
	p.Legend.Padding = vg.Points(3)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	p.Legend.YOffs = vg.Points(-4)
	p.X.Min, p.X.Max = 0, end
	p.X.Tick.Marker = repNiceTicks{n: 8}
	p.Y.Tick.Marker = repNiceTicks{n: 5, integer: true}
	p.Add(repGrid())
	return p
}

// repNiceTicks labels about n round values (1, 2 or 5 times a power of ten apart), written
// plainly: gonum's default ticks may give two labels, "0.00" and "2500.00".
type repNiceTicks struct {
	n       int
	integer bool // counts: never a step below 1
}

func (t repNiceTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		return nil
	}
	raw := (hi - lo) / float64(t.n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	if t.integer {
		step = max(step, 1)
	}
	decimals := max(0, -int(math.Floor(math.Log10(step))))
	var ticks []plot.Tick
	for i := math.Ceil(lo / step); i*step <= hi+step*1e-9; i++ {
		v := i * step
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', decimals, 64)})
	}
	return ticks
}

func repGrid() *plotter.Grid {
	g := plotter.NewGrid()
	g.Vertical.Color = color.Gray{0xe4}
	g.Horizontal.Color = color.Gray{0xe4}
	return g
}

// repBands shades the periods faults were in force, across the whole plot height.
type repBands struct{ spans []repSpan }

func (b repBands) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	for _, s := range b.spans {
		x0, x1 := max(s.Start, p.X.Min), min(s.End, p.X.Max)
		if x1 < x0 {
			continue
		}
		l, r := trX(x0), trX(x1)
		if r-l < 1.5 {
			r = l + 1.5
		}
		c.FillPolygon(repAlpha(repKindColor(s.Key), 0x38), repRect(l, c.Min.Y, r, c.Max.Y))
	}
}

func repRect(x0, y0, x1, y1 vg.Length) []vg.Point {
	return []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}
}

// repTimeline draws one lane per node with a bar per fault on it (faults overlapping on a
// lane share its height) and a triangle where a node exited on its own.
type repTimeline struct {
	lanes []string
	spans []repSpan
	exits []repExit
}

func (tl repTimeline) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	n := len(tl.lanes)
	laneY := func(i int) float64 { return float64(n - 1 - i) }
	sep := draw.LineStyle{Color: color.Gray{0xd0}, Width: vg.Points(0.5)}
	for i := 0; i <= n; i++ {
		y := trY(float64(i) - 0.5)
		c.StrokeLine2(sep, c.Min.X, y, c.Max.X, y)
	}
	laneH := trY(1) - trY(0)
	label := text.Style{Font: font.From(repFont, 9), XAlign: draw.XLeft, YAlign: draw.YCenter,
		Handler: p.TextHandler}
	for i, lane := range tl.lanes {
		var on []repSpan
		for _, s := range tl.spans {
			if slices.Contains(s.Lanes, lane) {
				on = append(on, s)
			}
		}
		sort.SliceStable(on, func(a, b int) bool { return on[a].Start < on[b].Start })
		// Greedy interval colouring: each bar takes the first row free at its start.
		var rowEnd []float64
		rows := make([]int, len(on))
		for j, s := range on {
			row := slices.IndexFunc(rowEnd, func(e float64) bool { return e <= s.Start })
			if row < 0 {
				row = len(rowEnd)
				rowEnd = append(rowEnd, 0)
			}
			rowEnd[row] = s.End
			rows[j] = row
		}
		barH := 0.8 * laneH / vg.Length(max(len(rowEnd), 1))
		top := trY(laneY(i)) + 0.4*laneH
		for j, s := range on {
			x0, x1 := trX(max(s.Start, p.X.Min)), trX(min(s.End, p.X.Max))
			if x1-x0 < 2 {
				x1 = x0 + 2
			}
			y1 := top - vg.Length(rows[j])*barH
			y0 := y1 - barH + 1
			col := repKindColor(s.Key)
			c.FillPolygon(col, repRect(x0, y0, x1, y1))
			txt := s.Label
			if s.Open {
				txt = strings.TrimSpace(txt + " (no stop)")
			}
			if txt != "" && label.Width(txt)+6 <= x1-x0 && barH >= 10 {
				label.Color = repTextOn(col)
				c.FillText(label, vg.Point{X: x0 + 3, Y: (y0 + y1) / 2}, txt)
			}
		}
	}
	const r = 6 // the exit triangle's half width, in points
	for _, e := range tl.exits {
		i := slices.Index(tl.lanes, e.Node)
		if i < 0 || e.T < p.X.Min || e.T > p.X.Max {
			continue
		}
		x, y := trX(e.T), trY(laneY(i))
		c.FillPolygon(color.Black, []vg.Point{{X: x - r, Y: y - r}, {X: x + r, Y: y - r}, {X: x, Y: y + r}})
	}
}

// repTextOn is black or white, whichever reads better on c.
func repTextOn(c color.RGBA) color.Color {
	if 0.299*float64(c.R)+0.587*float64(c.G)+0.114*float64(c.B) > 150 {
		return color.Black
	}
	return color.White
}

// repTimelinePlot is the fault timeline.
func repTimelinePlot(lanes []string, spans []repSpan, exits []repExit, end float64) (*plot.Plot, vg.Length) {
	p := repNewPlot("", "node", end)
	p.Y.Min, p.Y.Max = -0.5, float64(len(lanes))-0.5
	var ticks []plot.Tick
	for i, l := range lanes {
		ticks = append(ticks, plot.Tick{Value: float64(len(lanes) - 1 - i), Label: l})
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	p.Y.Tick.Length = 0
	p.Y.Padding = 0
	p.Add(repTimeline{lanes: lanes, spans: spans, exits: exits})
	return p, vg.Length(70 + 30*max(len(lanes), 1))
}

// repLatencyPlot shows each completed chat request's latency at the time it was sent, a
// capped sample per op type, over the fault periods. The y axis is log10 of milliseconds on a
// linear scale, labelled in ms and s: gonum/plot places a log axis's label by the arithmetic
// middle of the range, which pushes the data area down by the label's length.
func repLatencyPlot(chats []repChat, bands []repSpan, end float64) (*plot.Plot, error) {
	p := repNewPlot("", "latency (log scale)", end)
	p.Add(repBands{bands})
	p.Y.Tick.Marker = repLogTicks{}
	const floor = 0.1 // ms: the log axis cannot show 0
	lg := func(ms float64) float64 { return math.Log10(max(ms, floor)) }
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range chats {
		lo, hi = min(lo, lg(s.LatencyMS)), max(hi, lg(s.LatencyMS))
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0, 3
	}
	// A decade of headroom keeps the legend off the points.
	p.Y.Min, p.Y.Max = math.Floor(lo), math.Ceil(hi)+1
	const perType = 3000
	for _, typ := range repTypes {
		var xys plotter.XYs
		for _, s := range chats {
			if s.Type == typ {
				xys = append(xys, plotter.XY{X: s.Invoke, Y: lg(s.LatencyMS)})
			}
		}
		total := len(xys)
		if total == 0 {
			continue
		}
		// A regular stride keeps the sample spread over the run like the ops themselves.
		if stride := (total + perType - 1) / perType; stride > 1 {
			var sample plotter.XYs
			for i := 0; i < total; i += stride {
				sample = append(sample, xys[i])
			}
			xys = sample
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return nil, err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: repAlpha(repTypeColors[typ], 0xa0), Radius: vg.Points(1.7),
			Shape: draw.CircleGlyph{}}
		name := fmt.Sprintf("%s (%d)", typ, total)
		if len(xys) < total {
			name = fmt.Sprintf("%s (%d, 1 in %d shown)", typ, total, (total+len(xys)-1)/len(xys))
		}
		p.Add(repPoints{sc})
		p.Legend.Add(name, repBigGlyph{sc.GlyphStyle})
	}
	p.Add(repLegendBox{})
	return p, nil
}

// repPoints is a scatter that does not ask for room for its glyphs at the plot's edges: the
// time plots' data areas then line up exactly, one above the other.
type repPoints struct{ s *plotter.Scatter }

func (p repPoints) Plot(c draw.Canvas, plt *plot.Plot) { p.s.Plot(c, plt) }

// repBigGlyph draws a legend's point larger than the plot's, so its colour can be read.
type repBigGlyph struct{ sty draw.GlyphStyle }

func (g repBigGlyph) Thumbnail(c *draw.Canvas) {
	sty := g.sty
	sty.Radius = vg.Points(4)
	c.DrawGlyph(sty, c.Center())
}

// repLogTicks marks an axis of log10(milliseconds): each decade labelled in ms or s, the
// steps between them unlabelled.
type repLogTicks struct{}

func (repLogTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for k := math.Floor(lo); k <= hi; k++ {
		ms := math.Pow(10, k)
		label := strconv.FormatFloat(ms, 'g', -1, 64) + " ms"
		if ms >= 1000 {
			label = strconv.FormatFloat(ms/1000, 'g', -1, 64) + " s"
		}
		if k >= lo {
			ticks = append(ticks, plot.Tick{Value: k, Label: label})
		}
		for i := 2; i < 10 && k+math.Log10(float64(i)) <= hi; i++ {
			ticks = append(ticks, plot.Tick{Value: k + math.Log10(float64(i))})
		}
	}
	return ticks
}

// repThroughputPlot shows completions per second by type, from counts per bucket of width
// seconds.
func repThroughputPlot(counts map[OpType][]float64, width float64, bands []repSpan, end float64) (*plot.Plot, error) {
	ylabel := "completions per second"
	if width > 1 {
		ylabel = fmt.Sprintf("completions per second (mean of %g s)", width)
	}
	p := repNewPlot("", ylabel, end)
	p.Add(repBands{bands})
	top := 1.0
	for _, typ := range repTypes {
		b := counts[typ]
		var total float64
		xys := make(plotter.XYs, 0, len(b)+1)
		for i, v := range b {
			xys = append(xys, plotter.XY{X: float64(i) * width, Y: v / width})
			total += v
			top = max(top, v/width)
		}
		if len(b) > 0 {
			xys = append(xys, plotter.XY{X: float64(len(b)) * width, Y: b[len(b)-1] / width})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.StepStyle = plotter.PostStep
		l.LineStyle = draw.LineStyle{Color: repTypeColors[typ], Width: vg.Points(1.2)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d in all)", typ, int64(total)), l)
	}
	p.Y.Min, p.Y.Max = 0, top*1.4
	p.Add(repLegendBox{})
	return p, nil
}

// repUsagePlot shows a deployment's usage in the trailing 60 s against its limit and the bound
// the limits checker allowed each trailing window (bounds, at the same times as xs; none when
// nil or all 0).
func repUsagePlot(title, ylabel, what string, xs, ys []float64, limit int64, bounds []float64, bands []repSpan, end float64) (*plot.Plot, error) {
	p := repNewPlot(title, ylabel, end)
	p.Add(repBands{bands})
	xys := make(plotter.XYs, len(xs))
	top := float64(max(limit, 1))
	for i := range xs {
		xys[i] = plotter.XY{X: xs[i], Y: ys[i]}
		top = max(top, ys[i])
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return nil, err
	}
	l.LineStyle = draw.LineStyle{Color: color.RGBA{0x1f, 0x5f, 0xa8, 0xff}, Width: vg.Points(1.4)}
	p.Add(l)
	p.Legend.Add(what+" in the trailing 60 s", l)
	hline := func(v int64, sty draw.LineStyle, name string) error {
		h, err := plotter.NewLine(plotter.XYs{{X: 0, Y: float64(v)}, {X: end, Y: float64(v)}})
		if err != nil {
			return err
		}
		h.LineStyle = sty
		p.Add(h)
		p.Legend.Add(name, h)
		return nil
	}
	if limit > 0 {
		if err := hline(limit, draw.LineStyle{Color: color.RGBA{0xcf, 0x22, 0x2e, 0xff}, Width: vg.Points(1.4)},
			fmt.Sprintf("limit (%d)", limit)); err != nil {
			return nil, err
		}
	}
	if len(bounds) == len(xs) && slices.Max(append([]float64{0}, bounds...)) > 0 {
		bxys := make(plotter.XYs, len(xs))
		for i := range xs {
			bxys[i] = plotter.XY{X: xs[i], Y: bounds[i]}
			top = max(top, bounds[i])
		}
		b, err := plotter.NewLine(bxys)
		if err != nil {
			return nil, err
		}
		b.LineStyle = draw.LineStyle{Color: color.Gray{0x30}, Width: vg.Points(1.2), Dashes: []vg.Length{vg.Points(6), vg.Points(4)}}
		p.Add(b)
		p.Legend.Add("checker's bound for the trailing 60 s", b)
	}
	p.Y.Min, p.Y.Max = 0, top*1.4
	p.Add(repLegendBox{})
	return p, nil
}

// repLegendBox, added last, lays a white box under the legend so it reads over the data and
// the shading. It assumes the data area is the plot's area less its axes, as it is when no
// plotter asks for room for glyphs (see repPoints).
type repLegendBox struct{}

func (repLegendBox) Plot(c draw.Canvas, p *plot.Plot) {
	// Legend.Rectangle has the right size but not where Draw puts a top-left legend (it
	// ignores the offsets and puts a Left legend on the right): place it as Draw does.
	sz := p.Legend.Rectangle(c).Size()
	x0 := c.Min.X + p.Legend.XOffs
	top := c.Max.Y + p.Legend.YOffs - p.Legend.TextStyle.FontExtents().Descent
	const m = 4
	c.FillPolygon(color.NRGBA{0xff, 0xff, 0xff, 0xd8}, repRect(x0-m, top-sz.Y-m, x0+sz.X+m, top+m))
}

// repAlignY pads the y-axis labels of plots so their data areas start at the same x: time
// axes stacked one above the other can then be read against each other.
func repAlignY(ps ...*plot.Plot) {
	widths := make([]vg.Length, len(ps))
	var most vg.Length
	for i, p := range ps {
		for _, t := range p.Y.Tick.Marker.Ticks(p.Y.Min, p.Y.Max) {
			if t.Label != "" {
				widths[i] = max(widths[i], p.Y.Tick.Label.Width(t.Label))
			}
		}
		// The timeline's axis has no tick marks or padding: count them as width.
		widths[i] += p.Y.Tick.Length + p.Y.Padding
		most = max(most, widths[i])
	}
	for i, p := range ps {
		p.Y.Label.Padding += most - widths[i]
	}
}

// repSVG draws p to SVG and returns the <svg> element to inline in the page: the XML prolog
// and fixed size are dropped so the plot scales to the page's width.
func repSVG(p *plot.Plot, h vg.Length, label string) (_ template.HTML, err error) {
	// gonum/plot panics on some inputs (an empty log axis, a font it cannot find): a report
	// should say so rather than take the analysis down with it.
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("plot %q: %v", label, v)
		}
	}()
	c := vgsvg.NewWith(vgsvg.UseWH(repPlotW, h))
	p.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return "", err
	}
	s := buf.String()
	i := strings.Index(s, "<svg")
	if i < 0 {
		return "", fmt.Errorf("plot %q: no <svg> element", label)
	}
	j := strings.IndexByte(s[i:], '>')
	if j < 0 {
		return "", fmt.Errorf("plot %q: unterminated <svg> tag", label)
	}
	open := fmt.Sprintf(`<svg class="plot" viewBox="0 0 %.5g %.5g" role="img" aria-label="%s">`,
		repPlotW.Points(), h.Points(), html.EscapeString(label))
	// The SVG comes from gonum/plot, which escapes every text it draws.
	return template.HTML(open + s[i+j+1:]), nil
}
