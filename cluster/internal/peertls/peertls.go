// Package peertls builds the mutual TLS configurations that guard herd's raft port (raft's
// own traffic and forwarded writes). Every connection is TLS 1.3 and both ends present a
// certificate the other verifies before a byte of herd's protocols is read.
//
// Certificates come from one of two sources:
//
//   - The cluster keys (cluster_settings.cluster_key and accept_keys). Each key deterministically
//     yields a certificate authority: an Ed25519 key drawn from HKDF-SHA256 over the cluster key,
//     and a self-signed CA certificate over it. Every node derives the same CAs from the same
//     keys, so nothing needs distributing. At start a node makes a fresh Ed25519 leaf key and
//     signs a leaf certificate with the CA of its first (primary) key; it trusts the CAs of all
//     its keys. Knowing a cluster key is therefore exactly what it takes to join, as with
//     memberlist's gossip encryption, and several keys rotate without downtime.
//   - The user's own PKI (cluster_settings.tls_ca_file, tls_cert_file, tls_key_file): the given
//     certificate is presented and peers' certificates must chain to the given CA. Host names
//     are not checked (peers are found by IP through gossip); the chain is.
//
// All cryptography is the standard library's (crypto/tls, crypto/x509, crypto/ed25519,
// crypto/hkdf).
package peertls

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"
)

// ServerName is the name in every derived leaf certificate, which clients verify.
const ServerName = "herd-cluster"

// caInfo labels the HKDF derivation; a new version of the scheme gets a new label.
const caInfo = "herd raft-port CA v1"

// Config says where a node's certificates come from: Keys, or all three files.
type Config struct {
	Keys     [][]byte // cluster keys; the first signs this node's certificate, all are trusted
	NodeName string   // the leaf certificate's common name, for peers' logs

	CAFile, CertFile, KeyFile string // the user's own PKI instead of Keys: PEM files
}

// New returns the server and client configurations. The server requires and verifies a
// client certificate; the client verifies the server's.
func New(c Config) (server, client *tls.Config, err error) {
	switch {
	case c.CAFile != "" || c.CertFile != "" || c.KeyFile != "":
		return fromFiles(c)
	case len(c.Keys) > 0:
		return fromKeys(c)
	}
	return nil, nil, errors.New("peertls: no cluster key and no certificate files")
}

func fromKeys(c Config) (*tls.Config, *tls.Config, error) {
	pool := x509.NewCertPool()
	var signer *x509.Certificate
	var signerKey ed25519.PrivateKey
	for i, k := range c.Keys {
		ca, key, err := deriveCA(k)
		if err != nil {
			return nil, nil, err
		}
		pool.AddCert(ca)
		if i == 0 {
			signer, signerKey = ca, key
		}
	}
	leaf, err := newLeaf(signer, signerKey, c.NodeName)
	if err != nil {
		return nil, nil, err
	}
	client := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf},
		RootCAs:      pool,
		ServerName:   ServerName,
	}
	return serverConfig(leaf, pool), client, nil
}

// serverConfig presents cert and requires a client certificate that chains to pool.
func serverConfig(cert tls.Certificate, pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
}

// deriveCA returns the CA certificate and key that cluster key k stands for. Ed25519
// signatures and DER are deterministic, so every node derives byte-identical certificates.
func deriveCA(k []byte) (*x509.Certificate, ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, k, nil, caInfo, ed25519.SeedSize)
	if err != nil {
		return nil, nil, fmt.Errorf("peertls: derive CA key: %w", err)
	}
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "herd cluster CA " + fmt.Sprintf("%x", sha256.Sum256(pub))[:16]},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, nil, fmt.Errorf("peertls: make CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("peertls: parse CA certificate: %w", err)
	}
	return ca, key, nil
}

// newLeaf makes this process's certificate over a fresh key, signed by ca. It is valid from a
// day ago for ten years so that skewed clocks between peers do not matter.
func newLeaf(ca *x509.Certificate, caKey ed25519.PrivateKey, name string) (tls.Certificate, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("peertls: leaf key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("peertls: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{ServerName},
		NotBefore:    now.Add(-24 * time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("peertls: sign leaf certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// fromFiles uses the user's PKI. Peers are dialled by IP, so the chain is verified but not the
// host name.
func fromFiles(c Config) (*tls.Config, *tls.Config, error) {
	if c.CAFile == "" || c.CertFile == "" || c.KeyFile == "" {
		return nil, nil, errors.New("peertls: tls_ca_file, tls_cert_file and tls_key_file go together")
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("peertls: tls_ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("peertls: tls_ca_file %s: no PEM certificate in it", c.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("peertls: tls_cert_file/tls_key_file: %w", err)
	}
	verify := func(usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peertls: peer sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage},
			})
			return err
		}
	}
	client := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The standard verification would also check the host name, which a peer found by IP
		// through gossip cannot match; VerifyConnection checks the chain to our CA instead.
		InsecureSkipVerify: true,
		VerifyConnection:   verify(x509.ExtKeyUsageServerAuth),
	}
	return serverConfig(cert, pool), client, nil
}
