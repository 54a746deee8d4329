package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// bedrockAuth is how a bedrock deployment authenticates, as explicit values: the translator
// does not depend on how config resolves them. LiteLLM's order applies: a Bedrock API key
// (api_key, AWS_BEARER_TOKEN_BEDROCK) is sent as a bearer token instead of a signature;
// otherwise static keys, else the AWS default chain (environment, shared profile, web
// identity, container or instance role), optionally through an assumed role.
type bedrockAuth struct {
	Region                                     string
	BearerToken                                string
	AccessKeyID, SecretAccessKey, SessionToken string
	Profile                                    string // shared config profile, for the default chain
	RoleARN, SessionName                       string // STS AssumeRole from the credentials above
	WebIdentityToken                           string // with RoleARN: AssumeRoleWithWebIdentity instead
}

// bedrockSessionName is the role session name when aws_session_name is not set.
const bedrockSessionName = "herd"

// awsCredentials is the cached credentials provider for a: resolved on first use (the
// default chain reads files and may ask an instance's metadata service), renewed by the cache
// before they expire.
func awsCredentials(a bedrockAuth) aws.CredentialsProvider {
	return aws.NewCredentialsCache(&lazyCredentials{load: func(ctx context.Context) (aws.CredentialsProvider, error) {
		opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(a.Region)}
		if a.Profile != "" {
			opts = append(opts, awsconfig.WithSharedConfigProfile(a.Profile))
		}
		if a.AccessKeyID != "" {
			opts = append(opts, awsconfig.WithCredentialsProvider(
				credentials.NewStaticCredentialsProvider(a.AccessKeyID, a.SecretAccessKey, a.SessionToken)))
		}
		cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			return nil, err
		}
		if a.RoleARN == "" {
			return cfg.Credentials, nil
		}
		name := a.SessionName
		if name == "" {
			name = bedrockSessionName
		}
		client := sts.NewFromConfig(cfg)
		if a.WebIdentityToken != "" {
			return stscreds.NewWebIdentityRoleProvider(client, a.RoleARN, identityToken(a.WebIdentityToken),
				func(o *stscreds.WebIdentityRoleOptions) { o.RoleSessionName = name }), nil
		}
		return stscreds.NewAssumeRoleProvider(client, a.RoleARN,
			func(o *stscreds.AssumeRoleOptions) { o.RoleSessionName = name }), nil
	}})
}

// identityToken is aws_web_identity_token: the OIDC token itself, not a file holding it.
type identityToken string

func (t identityToken) GetIdentityToken() ([]byte, error) { return []byte(t), nil }

// lazyCredentials builds its provider on first use; a failure is retried on the next call.
type lazyCredentials struct {
	load func(context.Context) (aws.CredentialsProvider, error)
	mu   sync.Mutex
	p    aws.CredentialsProvider
}

func (l *lazyCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	l.mu.Lock()
	if l.p == nil {
		p, err := l.load(ctx)
		if err != nil {
			l.mu.Unlock()
			return aws.Credentials{}, err
		}
		l.p = p
	}
	p := l.p
	l.mu.Unlock()
	return p.Retrieve(ctx)
}

// sigv4 signs requests with AWS Signature Version 4.
type sigv4 struct {
	creds   aws.CredentialsProvider
	signer  *v4.Signer
	service string // "bedrock"
	region  string
	now     func() time.Time
}

// sign sets h's X-Amz-Date, X-Amz-Security-Token (temporary credentials) and Authorization
// for a request of method to u with body. Every header in h is signed, except the few the
// SDK leaves out (User-Agent ...), so h must be sent as it is. Content-Length is not signed
// (the payload hash covers the body), as in AWS's published test suite.
func (s *sigv4) sign(ctx context.Context, method string, u *url.URL, h http.Header, body []byte) error {
	cr, err := s.creds.Retrieve(ctx)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	r := &http.Request{Method: method, URL: u, Host: u.Host, Header: h}
	return s.signer.SignHTTP(ctx, cr, r, hex.EncodeToString(sum[:]), s.service, s.region, s.now().UTC())
}

// credentialsError is a failure to get credentials or sign: nothing was sent, so the call
// fails as unreachable (another deployment may serve it), or as canceled if the caller left.
func credentialsError(ctx context.Context, err error) error {
	kind := Unreachable
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		kind = Canceled
	}
	return &Error{Kind: kind, Err: fmt.Errorf("bedrock: AWS credentials: %w", err), Sent: false}
}
