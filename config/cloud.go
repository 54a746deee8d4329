package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The cloud providers need more than an endpoint and a key: Vertex AI a project, a location
// and Google credentials, Bedrock a region and AWS credentials. This file resolves them with
// LiteLLM's fallbacks and checks the values that end up in upstream URLs and headers.

// maxCredentialsFile bounds a vertex_credentials file read (a service-account key is ~2 KB).
const maxCredentialsFile = 1 << 20

// runtimeCredentialTypes are the google-auth credential types the admin API may send inline.
// The others (external_account, impersonated_service_account, ...) name files, URLs or
// commands that google-auth reads or runs on this node, and token endpoints it posts them to.
var runtimeCredentialTypes = []string{"service_account", "authorized_user"}

// vertex resolves a vertex_ai deployment's credentials, project and location, and returns its
// default api_base.
func (d *decoder) vertex(lp string, dep *Deployment) string {
	p := &dep.LiteLLMParams
	credEnv := ""
	if p.VertexCredentials == "" {
		var v string
		v, credEnv = d.lookupFirst("VERTEXAI_CREDENTIALS", "VERTEX_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS")
		p.VertexCredentials = Secret(v)
	}
	credProject := d.vertexCredentials(lp+".vertex_credentials", p.VertexCredentials, credEnv)

	// LiteLLM's order; google-auth then takes the project from the credentials or, for
	// application default credentials, from GOOGLE_CLOUD_PROJECT.
	path := lp + ".vertex_project"
	project, from := p.VertexProject, ""
	if project == "" {
		project, from = d.lookupFirstShown("VERTEXAI_PROJECT", "VERTEX_PROJECT")
	}
	if project == "" && credProject != "" {
		project, from = credProject, "the project_id of vertex_credentials"
	}
	if project == "" {
		project, from = d.lookupFirstShown("GOOGLE_CLOUD_PROJECT")
	}
	switch {
	case project == "":
		d.fail(path, "required for vertex_ai/ deployments: the Google Cloud project (or set VERTEXAI_PROJECT, VERTEX_PROJECT or GOOGLE_CLOUD_PROJECT, or give vertex_credentials with a project_id)")
	case from == "" && d.placeholder(path, project, false):
	case !isProjectID(project):
		// It is a segment of every upstream URL's path.
		d.fail(path, "must be a Google Cloud project ID or number: letters, digits, '-', '_', '.' and ':' (got %s)", d.shownFrom(path, project, from))
	default:
		dep.Project = project
	}

	path = lp + ".vertex_location"
	loc, from := p.VertexLocation, ""
	if loc == "" {
		loc, from = d.lookupFirstShown("VERTEXAI_LOCATION", "VERTEX_LOCATION")
	}
	if loc == "" {
		loc = DefaultVertexLocation
	}
	// It is part of the default host name and a segment of the URL's path.
	if !d.regionName(path, loc, from, "a Google Cloud location such as us-central1 or global") {
		return ""
	}
	dep.Location = loc
	if loc == "global" {
		return "https://aiplatform.googleapis.com"
	}
	return "https://" + loc + "-aiplatform.googleapis.com"
}

// vertexCredentials checks vertex_credentials (env: the variable it came from, if any) and
// returns the project the credentials name, if any. The value is never shown: it is a private
// key or the path of one.
func (d *decoder) vertexCredentials(path string, cred Secret, env string) string {
	v := strings.TrimSpace(cred.Reveal())
	if v == "" || d.placeholder(path, v, true) {
		return ""
	}
	from := ""
	if env != "" {
		from = " (from " + env + ")"
	}
	// Given through the admin API, rather than by the file (its literal values, os.environ/
	// names it vouches for, this node's variables): such credentials may not make herd read
	// this node's files, or fetch or run what they name.
	a, runtime := d.env.(*AdminEnv)
	untrusted := runtime && runtimeKey(path) && env == "" && !d.isFromEnv(path) && !a.fileCreds[v]
	data := []byte(v)
	if !strings.HasPrefix(v, "{") {
		if untrusted {
			d.fail(path, "names a credentials file this node's config file does not use: through the admin API send the credentials JSON itself, or a path or os.environ/ name the file already uses")
			return ""
		}
		b, err := readSmallFile(v, maxCredentialsFile)
		if err != nil {
			reason := err.Error()
			var pe *fs.PathError
			if errors.As(err, &pe) {
				reason = pe.Err.Error()
			}
			d.fail(path, "is neither credentials JSON nor the path of a readable file%s: %s (value not shown)", from, reason)
			return ""
		}
		data = bytes.TrimSpace(b)
	}
	var c struct {
		Type           string `json:"type"`
		ProjectID      string `json:"project_id"`
		QuotaProjectID string `json:"quota_project_id"`
	}
	if !bytes.HasPrefix(data, []byte("{")) || json.Unmarshal(data, &c) != nil {
		d.fail(path, "holds no JSON object%s: want google-auth credentials JSON (a service account key, ...) or the path of a file holding it (value not shown)", from)
		return ""
	}
	if untrusted && !slices.Contains(runtimeCredentialTypes, c.Type) {
		d.fail(path, "through the admin API only %s credentials are taken: other types make herd read files, URLs or commands they name", strings.Join(runtimeCredentialTypes, " and "))
		return ""
	}
	if c.ProjectID != "" {
		return c.ProjectID
	}
	return c.QuotaProjectID // authorized_user credentials (gcloud auth application-default login)
}

// bedrock resolves a bedrock deployment's model route, region and AWS credentials, and returns
// its default api_base.
func (d *decoder) bedrock(lp string, dep *Deployment) string {
	p := &dep.LiteLLMParams
	path := lp + ".model"
	model := dep.UpstreamModel
	switch {
	case strings.HasPrefix(model, "converse/"):
		model = strings.TrimPrefix(model, "converse/")
	case strings.HasPrefix(model, "invoke/"):
		model = strings.TrimPrefix(model, "invoke/")
		d.warn(path, "bedrock/invoke/ is served with the Converse API",
			"herd calls Bedrock's Converse API for every model: bedrock/invoke/<model> is served as bedrock/converse/<model>, so the model must support Converse")
	}
	dep.UpstreamModel = model
	switch {
	case d.bad[path]:
	case model == "":
		d.fail(path, "names no model after %q", strings.TrimSuffix(p.Model, model))
	case !strings.HasPrefix(model, "arn:") && strings.Contains(model, "/"):
		// LiteLLM's invoke routes for imported models (llama/, deepseek_r1/, ...) pick a
		// request format herd does not speak.
		route, _, _ := strings.Cut(model, "/")
		d.fail(path, "LiteLLM's bedrock/%s/ route is not supported: herd calls the Converse API; write bedrock/<model ID or ARN>, or bedrock/converse/<model ID or ARN> (got %s)", truncate(route), d.shown(path, p.Model))
	case !isModelPath(model):
		// The model ID is part of the upstream URL's path: /model/{id}/converse.
		d.fail(path, "the Bedrock model ID or ARN may hold only letters, digits and -_.:@/ (no empty, . or .. segments) (got %s)", d.shown(path, p.Model))
	}

	// LiteLLM's order, but for the region of the AWS shared config file, which herd does not read.
	rp, region, from := lp+".aws_region_name", p.AWSRegionName, ""
	if region == "" {
		if r := arnRegion(model); r != "" {
			rp, region, from = path, r, "the region of the model ARN"
		}
	}
	if region == "" {
		region, from = d.lookupFirstShown("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION")
	}
	if region == "" {
		region = DefaultBedrockRegion
		d.warn(rp, "bedrock deployment has no region: calling "+region,
			"no aws_region_name, and AWS_REGION_NAME, AWS_REGION and AWS_DEFAULT_REGION are not set: calling "+region+" as LiteLLM does (herd does not read the region of ~/.aws/config)")
	}
	d.awsCredentials(lp, p)
	// It is part of the default host name and of every request's signature.
	if !d.regionName(rp, region, from, "an AWS region such as us-east-1") {
		return ""
	}
	dep.Region = region
	return "https://bedrock-runtime." + region + ".amazonaws.com"
}

// awsCredentials checks that the AWS credential keys go together and that the secrets, which
// are sent (the session token as X-Amz-Security-Token) or signed with, hold no control
// characters. Values are never shown.
func (d *decoder) awsCredentials(lp string, p *LiteLLMParams) {
	for _, s := range []struct {
		key   string
		value Secret
	}{
		{"aws_access_key_id", p.AWSAccessKeyID}, {"aws_secret_access_key", p.AWSSecretAccessKey},
		{"aws_session_token", p.AWSSessionToken}, {"aws_web_identity_token", p.AWSWebIdentityToken},
	} {
		path := lp + "." + s.key
		if s.value == "" || d.placeholder(path, s.value.Reveal(), true) {
			continue
		}
		if !httpguts.ValidHeaderFieldValue(s.value.Reveal()) {
			d.fail(path, "must not hold CR, LF (a trailing newline?), NUL or another control character: it is sent or signed with in every call (value not shown)")
		}
	}
	for _, k := range []struct{ key, value string }{
		{"aws_role_name", p.AWSRoleName}, {"aws_session_name", p.AWSSessionName}, {"aws_profile_name", p.AWSProfileName},
	} {
		if k.value != "" && !d.placeholder(lp+"."+k.key, k.value, false) {
			d.printable(lp+"."+k.key, k.value)
		}
	}
	switch {
	case p.AWSAccessKeyID != "" && p.AWSSecretAccessKey == "":
		d.fail(lp+".aws_secret_access_key", "required with aws_access_key_id")
	case p.AWSSecretAccessKey != "" && p.AWSAccessKeyID == "":
		d.fail(lp+".aws_access_key_id", "required with aws_secret_access_key")
	}
	if p.AWSSessionToken != "" && p.AWSAccessKeyID == "" {
		d.warn(lp+".aws_session_token", "AWS setting without effect", "has no effect without aws_access_key_id and aws_secret_access_key")
	}
	if p.AWSSessionName != "" && p.AWSRoleName == "" {
		d.warn(lp+".aws_session_name", "AWS setting without effect", "has no effect without aws_role_name")
	}
	if p.AWSWebIdentityToken != "" {
		if strings.HasPrefix(p.AWSWebIdentityToken.Reveal(), "oidc/") {
			d.fail(lp+".aws_web_identity_token", "is a LiteLLM oidc/ reference, which herd does not resolve: give the token itself, e.g. os.environ/NAME")
		}
		if p.AWSRoleName == "" {
			d.fail(lp+".aws_role_name", "required with aws_web_identity_token: the role to assume with the token")
		}
	}
}

// otherProviderKeys warns of provider settings on a deployment of another provider: LiteLLM
// accepts them, and they do nothing.
func (d *decoder) otherProviderKeys(lp string, dep *Deployment) {
	p := &dep.LiteLLMParams
	for _, k := range []struct{ key, value, provider string }{
		{"vertex_project", p.VertexProject, "vertex_ai"},
		{"vertex_location", p.VertexLocation, "vertex_ai"},
		{"vertex_credentials", p.VertexCredentials.Reveal(), "vertex_ai"},
		{"aws_region_name", p.AWSRegionName, "bedrock"},
		{"aws_access_key_id", p.AWSAccessKeyID.Reveal(), "bedrock"},
		{"aws_secret_access_key", p.AWSSecretAccessKey.Reveal(), "bedrock"},
		{"aws_session_token", p.AWSSessionToken.Reveal(), "bedrock"},
		{"aws_role_name", p.AWSRoleName, "bedrock"},
		{"aws_session_name", p.AWSSessionName, "bedrock"},
		{"aws_profile_name", p.AWSProfileName, "bedrock"},
		{"aws_web_identity_token", p.AWSWebIdentityToken.Reveal(), "bedrock"},
		{"aws_bedrock_runtime_endpoint", p.AWSBedrockRuntimeEndpoint, "bedrock"},
	} {
		if k.value != "" && dep.Provider != k.provider {
			d.warn(lp+"."+k.key, "setting for another provider",
				fmt.Sprintf("has no effect: it is read for %s/ deployments only, and this one is %s", k.provider, dep.Provider))
		}
	}
}

// regionName checks a region or location (from: how it was found when not in the file), which
// becomes part of a host name; kind describes it in the error.
func (d *decoder) regionName(path, value, from, kind string) bool {
	switch {
	case from == "" && d.placeholder(path, value, false):
		return false
	case !isRegionName(value):
		d.fail(path, "must be %s: lower-case letters, digits and '-' (got %s)", kind, d.shownFrom(path, value, from))
		return false
	}
	return true
}

// lookupFirstShown is lookupFirst, with the variable described as errors show its value.
func (d *decoder) lookupFirstShown(names ...string) (value, shown string) {
	v, name := d.lookupFirst(names...)
	if name == "" {
		return "", ""
	}
	return v, "the value of " + name
}

// shownFrom shows a value for an error: from (how it was found, when not in the file) or, for
// a value from the file, as shown does.
func (d *decoder) shownFrom(path, value, from string) string {
	if from != "" {
		return from
	}
	return d.shown(path, value)
}

// isFromEnv reports whether path's value came from an os.environ/ reference.
func (d *decoder) isFromEnv(path string) bool {
	n := d.valAt[path]
	return n != nil && d.fromEnv[n] != ""
}

// isModelPath reports whether a model name can sit in an upstream URL's path (escaped by the
// caller where needed): letters, digits and -_.:@/, with no empty, "." or ".." segments.
func isModelPath(s string) bool {
	if s == "" {
		return false
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:@/", r)) {
			return false
		}
	}
	return true
}

// isRegionName reports whether s can be an AWS region or Google Cloud location, which become
// part of a host name: lower-case letters, digits and '-', starting with a letter.
func isRegionName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' || s[len(s)-1] == '-' {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// isProjectID reports whether s can be a Google Cloud project ID or number as a URL path
// segment: isURLToken, plus ':' for domain-scoped projects (example.com:my-project).
func isProjectID(s string) bool {
	return s != "" && s != "." && s != ".." && isURLToken(strings.ReplaceAll(s, ":", "-"))
}

// arnRegion is the region of a Bedrock ARN (arn:aws:bedrock:us-east-1:...), else "".
func arnRegion(model string) string {
	parts := strings.SplitN(model, ":", 5)
	if len(parts) == 5 && parts[0] == "arn" && parts[2] == "bedrock" {
		return parts[3]
	}
	return ""
}
