// A minimal CoreDNS for the test cluster's real node: the cluster's DNS (Service and Pod names from the
// API server, nothing else). Only the plugins that needs are compiled in, so the build pulls none of
// CoreDNS's cloud DNS back ends; there is no `forward`: nothing outside this machine is ever asked.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins' order in a server block, as in CoreDNS's own plugin.cfg (a plugin runs before those after
// it); a Corefile naming any other plugin is refused.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}
}

func main() { coremain.Run() }
