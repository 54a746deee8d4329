package chaos

// reportTemplateText is report.html. It lives in a Go file rather than an embedded one so the
// package stays a plain list of .go files.
const reportTemplateText = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>herd chaos run: {{.Verdict}}</title>
<style>
*{box-sizing:border-box}
body{margin:0;background:#eef0f3;color:#1f2328;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:20px 24px 48px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 12px;font-weight:600}
h2{font-size:19px;margin:34px 0 8px;padding-bottom:4px;border-bottom:1px solid #d0d7de}
h3{font-size:16px;margin:22px 0 4px}
p.note{margin:4px 0 10px;color:#57606a}
.head{display:flex;gap:28px;align-items:flex-start;flex-wrap:wrap}
.verdict{font-size:46px;font-weight:800;letter-spacing:.02em;padding:8px 26px;border-radius:10px;color:#fff;text-transform:uppercase}
.valid{background:#1a7f37}.invalid{background:#cf222e}.unknown{background:#9a6700}
.badge{display:inline-block;min-width:66px;text-align:center;font-size:12px;font-weight:700;padding:2px 8px;border-radius:10px;color:#fff;text-transform:uppercase}
dl.params{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0;flex:1;min-width:420px}
dl.params dt{color:#57606a}
dl.params dd{margin:0}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,Consolas,monospace;font-size:13px}
pre.cmd{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;white-space:pre-wrap;word-break:break-all;margin:10px 0 0}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid #e1e4e8;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600;font-size:13px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad{color:#cf222e;font-weight:700}
table.checkers td:first-child{font-weight:600;white-space:nowrap;width:150px}
table.checkers td:nth-child(2){width:110px}
ul.problems{margin:4px 0 0;padding-left:20px;font-size:13px}
ul.problems li{margin:1px 0}
details{margin:4px 0;font-size:13px}
summary{cursor:pointer;color:#57606a}
.figs{color:#57606a;font-size:12.5px}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin:4px 0 2px;font-size:14px;align-items:center}
.sw{display:inline-block;width:22px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:6px}
.ok{color:#2ca02c}.fail{color:#e8590c}.info{color:#6f42c1}
figure{margin:6px 0 12px}
figcaption{color:#57606a;font-size:13px;margin-top:2px}
svg.plot{display:block;width:100%;height:auto}
svg.plot text{font-family:"Liberation Sans",Arimo,Arial,Helvetica,sans-serif !important}
.err{color:#cf222e}
ul.links li{margin:2px 0}
</style>
</head>
<body>
<main>
<h1>herd chaos run</h1>
<div class="head">
  <div class="verdict {{.Verdict}}">{{.Verdict}}</div>
  <dl class="params">
    <dt>mode</dt><dd>{{.Info.Mode}}{{with .Info.Redis}} ({{.}} Redis){{end}}</dd>
    <dt>nodes</dt><dd>{{range $i, $n := .Info.Nodes}}{{if $i}}, {{end}}{{$n.Name}} <code>{{$n.Addr}}</code>{{end}}</dd>
    <dt>nemeses</dt><dd>{{range $i, $n := .Info.Nemeses}}{{if $i}}, {{end}}{{$n}}{{else}}none{{end}}</dd>
    <dt>duration</dt><dd>{{.Duration}}{{with .Start}} from {{.}}{{end}}</dd>
    <dt>demand</dt><dd>{{.Demand}} × each group's limit</dd>
    <dt>seed</dt><dd>{{.Info.Seed}}</dd>
    <dt>deployments</dt><dd>{{range $i, $d := .Info.Deployments}}{{if $i}}; {{end}}{{$d.ID}} ({{$d.Group}}, {{$d.RPM}} rpm{{if $d.TPM}}, {{$d.TPM}} tpm{{end}}){{else}}none{{end}}</dd>
    <dt>chat requests</dt><dd>{{.Chats}}: <span class="ok">{{.OKs}} ok</span>, <span class="fail">{{.Fails}} fail</span>, <span class="info">{{.Infos}} info</span>{{if .Pending}}, {{.Pending}} never completed{{end}}; the upstream received {{.Arrivals}}</dd>
    <dt>allowances</dt><dd>propagation {{.Info.Propagation}}, repair {{.Info.Repair}}, config converges within {{.Info.ConvergeWithin}}</dd>
    {{with .Info.HerdVersion}}<dt>herd version</dt><dd>{{.}}</dd>{{end}}
  </dl>
</div>
<pre class="cmd">{{.Command}}</pre>

<h2>Checkers</h2>
<table class="checkers">
<tr><th>checker</th><th>verdict</th><th>what it found</th></tr>
{{range .Checkers}}<tr>
  <td>{{.Name}}</td>
  <td><span class="badge {{.Verdict}}">{{.Verdict}}</span></td>
  <td>{{.Summary}}
  {{if .Problems}}<ul class="problems">{{range .Problems}}<li>{{.}}</li>{{end}}{{if .More}}<li>… and {{.More}} more in results.json</li>{{end}}</ul>{{end}}
  {{if .Figures}}<details><summary>figures</summary><div class="figs">{{range $i, $f := .Figures}}{{if $i}} · {{end}}{{$f.Key}} = {{$f.Value}}{{end}}</div></details>{{end}}
  </td>
</tr>
{{else}}<tr><td colspan="3">no checker ran</td></tr>
{{end}}</table>

<h2>Faults</h2>
<div class="legend">{{range .FaultKinds}}<span><span class="sw" style="background:{{.Color}}"></span>{{.Name}}</span>{{end}}<span>▲ node exited on its own</span></div>
{{range .Errors}}<p class="err">{{.}}</p>{{end}}
<figure>{{.Timeline}}<figcaption>One lane per node: each bar is a fault from its start to its stop (faults that overlap on a node share its lane). The same colours shade the fault periods in the plots below.</figcaption></figure>
{{if .Faults}}<details><summary>{{len .Faults}} faults{{if .Exits}}, {{len .Exits}} exits{{end}}</summary>
<table><tr><th>kind</th><th>what</th><th>nodes</th><th class="num">start</th><th class="num">stop</th></tr>
{{range .Faults}}<tr><td><span class="sw" style="background:{{.Color}}"></span>{{.Kind}}</td><td>{{.Label}}</td><td>{{.Lanes}}</td><td class="num">{{.Start}}</td><td class="num">{{.End}}</td></tr>
{{end}}{{range .Exits}}<tr><td>▲ exit</td><td>{{.How}}</td><td>{{.Node}}</td><td class="num">{{printf "%.1f s" .T}}</td><td></td></tr>
{{end}}</table></details>{{else}}<p class="note">No fault was injected.</p>{{end}}

<h2>Latency</h2>
<figure>{{.Latency}}<figcaption>Each completed chat request at the time it was sent, by how long it took to complete (log scale): <span class="ok">ok</span>, <span class="fail">fail</span> (mostly 429s), <span class="info">info</span> (timeouts, dropped connections: may or may not have happened). Shaded: fault periods.</figcaption></figure>

<h2>Throughput</h2>
<figure>{{.Throughput}}<figcaption>Chat requests completed per second, by outcome. Shaded: fault periods.</figcaption></figure>

<h2>Deployments: usage against limits</h2>
<p class="note">Requests (and tokens) the fake upstream received for each deployment in the trailing 60 s (sampled every {{.UsageStep}} s; the titles give the exact maximum), against its limit (solid red) and the bound the limits checker allows the trailing 60 s given the faults in it (dashed: it steps up while faults, and their repair time after healing, let the nodes see the usage in several separate views). Shaded: fault periods.</p>
{{range .Usage}}<figure>{{.Requests}}</figure>{{if .Tokens}}<figure>{{.Tokens}}</figure>{{end}}
{{else}}<p class="note">The run had no chat deployments.</p>{{end}}

<h2>Deployment figures</h2>
{{if .Deployments}}<table>
<tr><th>deployment</th><th>group</th><th class="num">rpm limit</th><th class="num">tpm limit</th><th class="num">max requests in any 60 s</th><th class="num">bound</th><th class="num">max tokens in any 60 s</th><th class="num">token bound</th><th class="num">admitted</th><th class="num">refused (429)</th><th class="num">60 s windows over limit / bound</th><th class="num">fault factor</th></tr>
{{range .Deployments}}<tr><td>{{.ID}}</td><td>{{.Group}}</td><td class="num">{{.LimitRPM}}</td><td class="num">{{.TPM}}</td><td class="num{{if .OverBnd}} bad{{end}}">{{.MaxIn60s}}</td><td class="num">{{.Bound}}</td><td class="num">{{.Tokens}}</td><td class="num">{{.TokBound}}</td><td class="num">{{.Admitted}}</td><td class="num">{{.Refused}}</td><td class="num">{{.OverLimitWindows}} / {{.OverBoundWindows}}</td><td class="num">{{.FaultFactorInWorst}}</td></tr>
{{end}}</table>
<p class="note">Bound: what the limits checker allowed in the 60 s window that came closest to it (or furthest over) — not necessarily the busiest window, which faults may have allowed more. Strict mode: the limit. Fast and redis modes: the limit × the fault factor m (how many independent views of the usage the faults in that window allowed) plus m × the requests in flight during one propagation delay. Red: over the bound.</p>
{{else}}<p class="note">The limits checker reported no deployment.</p>{{end}}

<h2>Raw files</h2>
<p class="note">Everything above is recomputed from these files, beside this page (<code>herd-chaos analyze</code> rewrites it).</p>
<ul class="links">{{range .Links}}<li><a href="{{.Href}}">{{.Href}}</a>: {{.Note}}</li>
{{end}}</ul>
</main>
</body>
</html>
`
