package provider

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go/logging"
)

// bedrockGoldenModel is the deployment's model in the golden cases (the answers name it).
const bedrockGoldenModel = "anthropic.claude-3-5-sonnet-20240620-v1:0"

func init() {
	goldenTranslators["bedrock"] = func(t *testing.T, drop bool) translator {
		return testBedrock(t, drop, credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""), goldenNow)
	}
}

// testBedrock is a translator for bedrockGoldenModel in us-east-1 signing with creds at now.
func testBedrock(t *testing.T, drop bool, creds aws.CredentialsProvider, now func() time.Time) *bedrock {
	t.Helper()
	h := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"herd"}}
	b, err := newBedrockTranslator("https://bedrock-runtime.us-east-1.amazonaws.com", bedrockGoldenModel, h, bedrockAuth{Region: "us-east-1"}, drop, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	b.now, b.newID = now, func() string { return "bedrock-golden" }
	b.signer.creds, b.signer.now = creds, now
	return b
}

// sigv4Suite is testdata/sigv4/aws-sig-v4-test-suite.json: vectors of AWS's SigV4 test
// suite (the file names its source).
type sigv4Suite struct {
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
	Region          string `json:"region"`
	Service         string `json:"service"`
	Time            string `json:"time"`
	Vectors         []struct {
		Name         string            `json:"name"`
		Method       string            `json:"method"`
		URL          string            `json:"url"`
		Headers      map[string]string `json:"headers"`
		Body         string            `json:"body"`
		SessionToken string            `json:"session_token"`
		Creq         string            `json:"creq"` // the canonical request
		Sts          string            `json:"sts"`  // the string to sign
		Authz        string            `json:"authz"`
	} `json:"vectors"`
}

// signLog captures the canonical request and string to sign the SDK signer logs.
type signLog struct{ creq, sts string }

func (l *signLog) signer() *v4.Signer {
	return v4.NewSigner(func(o *v4.SignerOptions) {
		o.LogSigning = true
		o.Logger = logging.LoggerFunc(func(_ logging.Classification, _ string, v ...any) {
			if len(v) >= 2 {
				l.creq, l.sts = v[0].(string), v[1].(string)
			}
		})
	})
}

// herd's use of the SDK signer (the headers it passes, the payload hash, the time, and no
// Content-Length) reproduces AWS's published test vectors.
func TestSigV4TestSuite(t *testing.T) {
	raw, err := os.ReadFile("testdata/sigv4/aws-sig-v4-test-suite.json")
	if err != nil {
		t.Fatal(err)
	}
	var suite sigv4Suite
	if err := json.Unmarshal(raw, &suite); err != nil {
		t.Fatal(err)
	}
	at, err := time.Parse("20060102T150405Z", suite.Time)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range suite.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			// The vector is consistent: its string to sign hashes its canonical request.
			sum := sha256.Sum256([]byte(v.Creq))
			if !strings.HasSuffix(v.Sts, "\n"+hex.EncodeToString(sum[:])) {
				t.Fatalf("the vector's string to sign does not end in its canonical request's hash")
			}
			var log signLog
			s := &sigv4{
				creds:   credentials.NewStaticCredentialsProvider(suite.AccessKeyID, suite.SecretAccessKey, v.SessionToken),
				signer:  log.signer(),
				service: suite.Service, region: suite.Region,
				now: func() time.Time { return at },
			}
			u, err := url.Parse(v.URL)
			if err != nil {
				t.Fatal(err)
			}
			h := http.Header{}
			for k, val := range v.Headers {
				h.Set(k, val)
			}
			if err := s.sign(context.Background(), v.Method, u, h, []byte(v.Body)); err != nil {
				t.Fatal(err)
			}
			if log.creq != v.Creq {
				t.Errorf("canonical request:\n%s\nwant:\n%s", log.creq, v.Creq)
			}
			if log.sts != v.Sts {
				t.Errorf("string to sign:\n%s\nwant:\n%s", log.sts, v.Sts)
			}
			if got := h.Get("Authorization"); got != v.Authz {
				t.Errorf("Authorization:\n%s\nwant:\n%s", got, v.Authz)
			}
			if got := h.Get("X-Amz-Date"); got != suite.Time {
				t.Errorf("X-Amz-Date = %q, want %q", got, suite.Time)
			}
			if got := h.Get("X-Amz-Security-Token"); got != v.SessionToken {
				t.Errorf("X-Amz-Security-Token = %q, want %q", got, v.SessionToken)
			}
		})
	}
}

// A Converse call is signed as the AWS SDKs sign it: the model ID, escaped once in the URL,
// escaped again in the canonical request; every header herd sends signed; the body's hash.
func TestBedrockSignsConverse(t *testing.T) {
	var log signLog
	at := time.Date(2025, 12, 3, 4, 5, 6, 0, time.UTC)
	b := testBedrock(t, false, credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "session-token"), func() time.Time { return at })
	b.signer.signer = log.signer()
	for model, path := range map[string]string{
		"us.anthropic.claude-3-5-sonnet-20240620-v1:0":                                                "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse",
		"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-3-70b-instruct-v1:0": "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Ainference-profile%252Fus.meta.llama3-3-70b-instruct-v1%253A0/converse",
	} {
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
		out, err := b.request(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(log.creq, "\n")
		sum := sha256.Sum256(out.body)
		if lines[0] != "POST" || lines[1] != path || lines[len(lines)-1] != hex.EncodeToString(sum[:]) ||
			lines[len(lines)-2] != "accept;content-type;host;x-amz-date;x-amz-security-token" {
			t.Errorf("canonical request:\n%s", log.creq)
		}
		if got, want := out.url.EscapedPath(), strings.ReplaceAll(path, "%25", "%"); got != want {
			t.Errorf("URL path %s, want %s", got, want)
		}
		if !strings.HasPrefix(out.header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251203/us-east-1/bedrock/aws4_request, ") ||
			out.header.Get("X-Amz-Date") != "20251203T040506Z" || out.header.Get("X-Amz-Security-Token") != "session-token" {
			t.Errorf("signed header %v", out.header)
		}
		if b.header[0].Get("Authorization") != "" {
			t.Error("signing changed the shared header")
		}
	}
}

func TestBedrockBearerToken(t *testing.T) {
	h := http.Header{"Content-Type": {"application/json"}}
	b, err := newBedrockTranslator("https://bedrock-runtime.eu-west-1.amazonaws.com:443/", "amazon.nova-pro-v1:0", h, bedrockAuth{Region: "eu-west-1", BearerToken: "bedrock-api-key"}, false, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.request(context.Background(), &Call{Endpoint: ChatCompletions, Body: []byte(`{"model":"amazon.nova-pro-v1:0","messages":[{"role":"user","content":"hi"}],"stream":true}`), Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	if out.url.String() != "https://bedrock-runtime.eu-west-1.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse-stream" || !out.stream ||
		out.header.Get("Authorization") != "Bearer bedrock-api-key" || out.header.Get("X-Amz-Date") != "" ||
		out.header.Get("Accept") != "application/vnd.amazon.eventstream" {
		t.Errorf("got %s stream=%v %v", out.url, out.stream, out.header)
	}
}

// No credentials: the call fails as an upstream that was never reached, not as the client's
// fault.
func TestBedrockCredentialsFailure(t *testing.T) {
	failing := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{}, errors.New("no EC2 IMDS role found")
	})
	b := testBedrock(t, false, failing, goldenNow)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	_, err := b.request(context.Background(), &Call{Endpoint: ChatCompletions, Body: body})
	var e *Error
	if !errors.As(err, &e) || e.Kind != Unreachable || e.Sent || !strings.Contains(err.Error(), "no EC2 IMDS role found") {
		t.Errorf("err = %v, want an unreachable upstream, not sent", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.request(ctx, &Call{Endpoint: ChatCompletions, Body: body}); KindOf(err) != Canceled || Sent(err) {
		t.Errorf("err = %v with the caller gone, want canceled, not sent", err)
	}
}

// The default chain's credentials are built on first use, and a failure is retried then.
func TestLazyCredentials(t *testing.T) {
	loads := 0
	l := &lazyCredentials{load: func(context.Context) (aws.CredentialsProvider, error) {
		loads++
		if loads == 1 {
			return nil, errors.New("profile not found")
		}
		return credentials.NewStaticCredentialsProvider("A", "S", ""), nil
	}}
	if _, err := l.Retrieve(context.Background()); err == nil {
		t.Fatal("first load's failure not returned")
	}
	for range 2 {
		if c, err := l.Retrieve(context.Background()); err != nil || c.AccessKeyID != "A" {
			t.Fatalf("Retrieve = %v, %v", c, err)
		}
	}
	if loads != 2 {
		t.Errorf("loaded %d times, want 2", loads)
	}
}

// A message whose prelude claims more than the bound fails before anything is allocated.
func TestBedrockStreamMessageBound(t *testing.T) {
	var raw bytes.Buffer
	enc := eventstream.NewEncoder()
	msg := eventstream.Message{Payload: bytes.Repeat([]byte("x"), 2048)}
	msg.Headers.Set(":message-type", eventstream.StringValue("event"))
	msg.Headers.Set(":event-type", eventstream.StringValue("contentBlockDelta"))
	if err := enc.Encode(&raw, msg); err != nil {
		t.Fatal(err)
	}
	b := testBedrock(t, false, credentials.NewStaticCredentialsProvider("A", "S", ""), goldenNow)
	b.maxLen = 1024
	_, err := b.stream(&Call{Body: []byte(`{}`)}, &raw).next(nil)
	if !errors.Is(err, errStreamMessageTooLarge) {
		t.Errorf("err = %v, want errStreamMessageTooLarge", err)
	}
}

// TestBedrockEventFixtures keeps each golden case's in.stream (AWS's binary event-stream
// encoding, which ConverseStream answers in) the encoding of its readable in.events, written
// with the SDK's eventstream Encoder; -update rewrites in.stream. A line of in.events is
//
//	event <event type> <JSON payload>           a :message-type "event" message
//	exception <exception type> <JSON payload>   a :message-type "exception" message
//	cut <n>                                     the stream ends n bytes into the next message
func TestBedrockEventFixtures(t *testing.T) {
	dirs, _ := filepath.Glob("testdata/translate/bedrock/*/in.events")
	if len(dirs) == 0 {
		t.Fatal("no in.events under testdata/translate/bedrock")
	}
	for _, path := range dirs {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := encodeEvents(src)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		golden(t, filepath.Dir(path), "in.stream", got)
	}
}

func encodeEvents(src []byte) ([]byte, error) {
	var out bytes.Buffer
	enc := eventstream.NewEncoder()
	cut := -1
	sc := bufio.NewScanner(bytes.NewReader(src))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		if kind == "cut" {
			n, err := strconv.Atoi(rest)
			if err != nil {
				return nil, err
			}
			cut = n
			continue
		}
		typ, payload, _ := strings.Cut(rest, " ")
		if !json.Valid([]byte(payload)) {
			return nil, errors.New("payload is not JSON: " + payload)
		}
		var m eventstream.Message
		m.Headers.Set(":message-type", eventstream.StringValue(kind))
		switch kind {
		case "event":
			m.Headers.Set(":event-type", eventstream.StringValue(typ))
		case "exception":
			m.Headers.Set(":exception-type", eventstream.StringValue(typ))
		default:
			return nil, errors.New("unknown line kind " + kind)
		}
		m.Headers.Set(":content-type", eventstream.StringValue("application/json"))
		m.Payload = []byte(payload)
		var one bytes.Buffer
		if err := enc.Encode(&one, m); err != nil {
			return nil, err
		}
		if cut >= 0 {
			out.Write(one.Bytes()[:cut])
			break
		}
		out.Write(one.Bytes())
	}
	return out.Bytes(), sc.Err()
}

// The event-stream decoding reads what the SDK's encoder writes, however the bytes arrive.
func TestBedrockStreamSmallReads(t *testing.T) {
	src, err := os.ReadFile("testdata/translate/bedrock/stream-text/in.stream")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/translate/bedrock/stream-text/want.stream")
	if err != nil {
		t.Fatal(err)
	}
	b := testBedrock(t, false, credentials.NewStaticCredentialsProvider("A", "S", ""), goldenNow)
	reqBody, _ := os.ReadFile("testdata/translate/bedrock/stream-text/in.request.json")
	r := &chunkReader{src: b.stream(&Call{Body: reqBody, Stream: true}, iotest.OneByteReader(bytes.NewReader(src))), rc: io.NopCloser(nil)}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("one byte at a time: %v\n%s", err, got)
	}
}
