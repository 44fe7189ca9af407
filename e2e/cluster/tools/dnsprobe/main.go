// Command dnsprobe waits until every name given resolves, so up.sh can prove that DNS
// answers the way a Pod sees it (resolv.conf search path, the kube-dns Service, CoreDNS).
//
//	dnsprobe [-server 10.96.0.10:53] [-timeout 60s] kubernetes.default ...
//
// With -server it asks that server directly (the host has no cluster resolv.conf).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	server := flag.String("server", "", "DNS server host:port to ask instead of /etc/resolv.conf")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "dnsprobe: give at least one name to resolve")
		os.Exit(2)
	}

	resolver := &net.Resolver{PreferGo: true}
	if *server != "" {
		resolver.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, *server)
		}
	}

	deadline := time.Now().Add(*timeout)
	for _, name := range flag.Args() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			addrs, err := resolver.LookupHost(ctx, name)
			cancel()
			if err == nil {
				fmt.Printf("%s -> %s\n", name, strings.Join(addrs, ","))
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "dnsprobe: %s did not resolve within %s: %v\n", name, *timeout, err)
				os.Exit(1)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
