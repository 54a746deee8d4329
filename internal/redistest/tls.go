package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLS makes the server speak only TLS (redis-server's --tls-port, --port 0) with a certificate
// for 127.0.0.1 signed by a CA made for the test (CAFile). Clients need no certificate.
func TLS() Option {
	return func(c *config) { c.tls = true }
}

// TLSClientAuth is TLS, and clients must present a certificate signed by the same CA
// (ClientCertFile, ClientKeyFile).
func TLSClientAuth() Option {
	return func(c *config) { c.tls, c.clientAuth = true, true }
}

// certs are the PEM files a TLS server and its clients use, all in the server's directory.
type certs struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// CAFile is the PEM file of the CA that signed the server's (and the client's) certificate;
// "" without TLS.
func (s *Server) CAFile() string { return s.certs.ca }

// ClientCertFile and ClientKeyFile are a client certificate the server accepts (TLSClientAuth);
// "" without TLS.
func (s *Server) ClientCertFile() string { return s.certs.clientCert }

// ClientKeyFile is ClientCertFile's key.
func (s *Server) ClientKeyFile() string { return s.certs.clientKey }

// tlsArgs are redis-server's arguments for TLS on port.
func (s *Server) tlsArgs(port string) []string {
	auth := "no"
	if s.clientAuth {
		auth = "yes"
	}
	return []string{
		"--port", "0", "--tls-port", port,
		"--tls-cert-file", s.certs.serverCert, "--tls-key-file", s.certs.serverKey,
		"--tls-ca-cert-file", s.certs.ca, "--tls-auth-clients", auth,
	}
}

// clientTLS is what ping dials the server with.
func (s *Server) clientTLS() (*tls.Config, error) {
	if !s.tls {
		return nil, nil
	}
	pool := x509.NewCertPool()
	data, err := os.ReadFile(s.certs.ca)
	if err != nil {
		return nil, err
	}
	pool.AppendCertsFromPEM(data)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if s.clientAuth {
		cert, err := tls.LoadX509KeyPair(s.certs.clientCert, s.certs.clientKey)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// makeCerts writes a CA, a server certificate for 127.0.0.1 and localhost, and a client
// certificate into dir. They are valid for a day: long enough for any test.
func makeCerts(dir string) (certs, error) {
	c := certs{
		ca:         filepath.Join(dir, "ca.pem"),
		serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return c, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return c, err
	}
	if err := writePEM(c.ca, "CERTIFICATE", caDER); err != nil {
		return c, err
	}
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyFile, "PRIVATE KEY", keyDER)
	}
	if err := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, c.serverCert, c.serverKey); err != nil {
		return c, fmt.Errorf("server certificate: %w", err)
	}
	if err := leaf(3, "redistest client", x509.ExtKeyUsageClientAuth, c.clientCert, c.clientKey); err != nil {
		return c, fmt.Errorf("client certificate: %w", err)
	}
	return c, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
