// loadclient: the one HTTPS client benchmarks/edge_vs_nginx.py points at both gateways.
//
//	loadclient -addr 127.0.0.1:PORT -sni example.com -ca ca.crt -cert c.crt -key c.key \
//	    -mode handshake|resumed|keepalive -conns N -seconds S
//
// handshake: every request on a fresh TCP+TLS connection with the client certificate,
// no session cache (no resumption), "Connection: close"; the response proves the server
// finished verifying the certificate (under TLS 1.3 the client's handshake ends before).
// resumed: as handshake, but with a client session cache and tickets, so every
// connection after the first offers the session (ticket) the server gave before;
// "resumed" counts the connections the server resumed.
// keepalive: N HTTP/1.1 connections, each sending request after request.
// Prints one JSON line: {"ok": n, "errors": e, "resumed": r, "seconds": s, "first_error": "..."}.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "", "host:port")
	sni := flag.String("sni", "example.com", "SNI and Host")
	caFile := flag.String("ca", "", "server CA (PEM)")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	mode := flag.String("mode", "keepalive", "handshake or keepalive")
	conns := flag.Int("conns", 8, "concurrent connections")
	seconds := flag.Float64("seconds", 5, "duration")
	path := flag.String("path", "/", "request path")
	flag.Parse()

	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail(err)
	}
	cfg := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, ServerName: *sni,
		NextProtos: []string{"http/1.1"}, SessionTicketsDisabled: true, ClientSessionCache: nil}
	if *mode == "resumed" {
		cfg.SessionTicketsDisabled = false
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", *path, *sni))
	closeReq := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", *path, *sni))

	var ok, errs, resumed atomic.Int64
	var firstErr atomic.Value
	note := func(e error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, e.Error())
	}
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *tls.Conn
			var r *bufio.Reader
			for time.Now().Before(deadline) {
				if c == nil {
					raw, err := net.DialTimeout("tcp", *addr, 10*time.Second)
					if err != nil {
						note(err)
						continue
					}
					c = tls.Client(raw, cfg)
					c.SetDeadline(time.Now().Add(30 * time.Second))
					r = bufio.NewReaderSize(c, 65536)
				}
				body := req
				if *mode != "keepalive" {
					body = closeReq
				} else {
					c.SetDeadline(time.Now().Add(30 * time.Second))
				}
				if _, err := c.Write(body); err != nil {
					note(err)
					c.Close()
					c = nil
					continue
				}
				resp, err := http.ReadResponse(r, nil)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					note(err)
					c.Close()
					c = nil
					continue
				}
				ok.Add(1)
				if c.ConnectionState().DidResume {
					resumed.Add(1)
				}
				if *mode != "keepalive" || resp.Close {
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Close()
			}
		}()
	}
	wg.Wait()
	out := map[string]any{"ok": ok.Load(), "errors": errs.Load(), "resumed": resumed.Load(),
		"seconds": time.Since(start).Seconds()}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadclient:", err)
	os.Exit(2)
}
