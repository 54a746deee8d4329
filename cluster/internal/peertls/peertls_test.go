package peertls

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func mustNew(t *testing.T, c Config) (server, client *tls.Config) {
	t.Helper()
	s, cl, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return s, cl
}

// handshake runs a TLS handshake over loopback TCP (buffered, unlike net.Pipe, so an alert
// never waits for a reader) and returns the client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	deadline := time.Now().Add(5 * time.Second)
	_ = a.SetDeadline(deadline)
	_ = b.SetDeadline(deadline)
	done := make(chan error, 1)
	go func() {
		s := tls.Server(b, server)
		err := s.Handshake()
		if err == nil {
			// TLS 1.3 clients finish before the server has checked their certificate:
			// a read is where the server's verdict shows.
			_, err = s.Read(make([]byte, 1))
		}
		_ = b.Close()
		done <- err
	}()
	c := tls.Client(a, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		_, clientErr = c.Write([]byte{1})
	}
	if clientErr == nil {
		// the server's refusal reaches the client only on its next read, and the server
		// closes the pipe either way
		_, clientErr = c.Read(make([]byte, 1))
		if clientErr != nil && clientErr.Error() == "EOF" {
			clientErr = nil
		}
	}
	_ = a.Close()
	serverErr = <-done
	return clientErr, serverErr
}

func TestSameKeyConnects(t *testing.T) {
	s, _ := mustNew(t, Config{Keys: [][]byte{key(1)}, NodeName: "a"})
	_, c := mustNew(t, Config{Keys: [][]byte{key(1)}, NodeName: "b"})
	if ce, se := handshake(t, s, c); ce != nil || se != nil {
		t.Fatalf("same key: client %v, server %v", ce, se)
	}
}

func TestOtherKeyIsRefusedBothWays(t *testing.T) {
	s1, c1 := mustNew(t, Config{Keys: [][]byte{key(1)}})
	s2, c2 := mustNew(t, Config{Keys: [][]byte{key(2)}})
	if ce, _ := handshake(t, s1, c2); ce == nil {
		t.Error("a client with another key connected")
	}
	if ce, _ := handshake(t, s2, c1); ce == nil {
		t.Error("a server with another key was trusted")
	}
}

func TestClientWithoutCertificateIsRefused(t *testing.T) {
	s, c := mustNew(t, Config{Keys: [][]byte{key(1)}})
	anon := c.Clone()
	anon.Certificates = nil
	ce, se := handshake(t, s, anon)
	if se == nil || ce == nil {
		t.Fatalf("client without certificate: client %v, server %v", ce, se)
	}
}

// TestRotation follows docs/SECURITY.md: install the new key as accepted everywhere, then make
// it primary node by node, then drop the old one. Every step must keep every pair talking.
func TestRotation(t *testing.T) {
	old, nw := key(1), key(2)
	steps := [][]Config{
		{{Keys: [][]byte{old}}, {Keys: [][]byte{old, nw}}},     // rolling install
		{{Keys: [][]byte{old, nw}}, {Keys: [][]byte{nw, old}}}, // rolling use
		{{Keys: [][]byte{nw, old}}, {Keys: [][]byte{nw}}},      // rolling removal
	}
	for i, pair := range steps {
		sa, ca := mustNew(t, pair[0])
		sb, cb := mustNew(t, pair[1])
		if ce, se := handshake(t, sa, cb); ce != nil || se != nil {
			t.Errorf("step %d, b to a: client %v, server %v", i, ce, se)
		}
		if ce, se := handshake(t, sb, ca); ce != nil || se != nil {
			t.Errorf("step %d, a to b: client %v, server %v", i, ce, se)
		}
	}
	// Skipping the install step breaks the pair: the check above is not vacuous.
	sa, _ := mustNew(t, Config{Keys: [][]byte{old}})
	_, cb := mustNew(t, Config{Keys: [][]byte{nw, old}})
	if ce, _ := handshake(t, sa, cb); ce == nil {
		t.Error("a node not yet trusting the new key accepted a certificate signed with it")
	}
}

func TestDerivationIsDeterministic(t *testing.T) {
	a, _, err := deriveCA(key(7))
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := deriveCA(key(7))
	c, _, _ := deriveCA(key(8))
	if !bytes.Equal(a.Raw, b.Raw) {
		t.Error("one key gave two CA certificates")
	}
	if bytes.Equal(a.Raw, c.Raw) {
		t.Error("two keys gave one CA certificate")
	}
}

// pki writes a CA and a leaf signed by it into dir and returns their paths.
func pki(t *testing.T, dir, name string) (caFile, certFile, keyFile string) {
	t.Helper()
	caPub, caKey, _ := ed25519.GenerateKey(rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caPub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	p8, _ := x509.MarshalPKCS8PrivateKey(priv)
	write := func(file, typ string, b []byte) string {
		path := filepath.Join(dir, name+"-"+file)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "PRIVATE KEY", p8)
}

func TestUserPKI(t *testing.T) {
	dir := t.TempDir()
	ca, cert, k := pki(t, dir, "good")
	s, c := mustNew(t, Config{CAFile: ca, CertFile: cert, KeyFile: k})
	if ce, se := handshake(t, s, c); ce != nil || se != nil {
		t.Fatalf("same CA: client %v, server %v", ce, se)
	}
	oca, ocert, okey := pki(t, dir, "other")
	s2, c2 := mustNew(t, Config{CAFile: oca, CertFile: ocert, KeyFile: okey})
	if ce, _ := handshake(t, s, c2); ce == nil {
		t.Error("a client from another CA connected")
	}
	if ce, _ := handshake(t, s2, c); ce == nil {
		t.Error("a server from another CA was trusted")
	}
	if _, _, err := New(Config{CAFile: ca, CertFile: cert}); err == nil {
		t.Error("a CA and certificate without a key were accepted")
	}
}
