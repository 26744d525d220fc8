// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

// Command vcsim is the test bed's plain vCenter simulator: govmomi's simulator package
// (pinned in go.mod) with its default vCenter model and the optional SOAP/REST endpoints
// (vAPI, PBM, lookup, STS, ...) registered, served over TLS on loopback.
//
// The upstream vcsim command lives in a nested, untagged module of the govmomi repository
// and is not available from the Go module proxy, so this is a small entry point of our own
// over the same simulator package. It adds a machine-readable readiness handshake: once the
// server listens, it writes a JSON document (url, pid, versions, certificate fingerprint)
// atomically to the file named by -E.
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"

	// Optional endpoints served by the upstream simulator command as well.
	_ "github.com/vmware/govmomi/cns/simulator"
	_ "github.com/vmware/govmomi/eam/simulator"
	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/ssoadmin/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/appliance/simulator"
	_ "github.com/vmware/govmomi/vapi/cis/tasks/simulator"
	_ "github.com/vmware/govmomi/vapi/cluster/simulator"
	_ "github.com/vmware/govmomi/vapi/esx/settings/simulator"
	_ "github.com/vmware/govmomi/vapi/namespace/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
	_ "github.com/vmware/govmomi/vapi/vcenter/consumptiondomains/simulator"
	_ "github.com/vmware/govmomi/vapi/vm/simulator"
	_ "github.com/vmware/govmomi/vsan/simulator"
)

// handshake is written to the -E file once the server accepts connections.
type handshake struct {
	URL             string `json:"url"`
	Host            string `json:"host"`
	Port            int    `json:"port"`
	PID             int    `json:"pid"`
	TLS             bool   `json:"tls"`
	CertSHA256      string `json:"cert_sha256,omitempty"`
	GovmomiVersion  string `json:"govmomi_version"`
	About           string `json:"about"`
	APIVersion      string `json:"api_version"`
	Datacenters     int    `json:"datacenters"`
	VirtualMachines int    `json:"virtual_machines"`
}

func govmomiVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == "github.com/vmware/govmomi" {
			if dep.Replace != nil {
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "unknown"
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	model := simulator.VPX()

	flag.IntVar(&model.Datacenter, "dc", model.Datacenter, "number of datacenters")
	flag.IntVar(&model.Cluster, "cluster", model.Cluster, "number of clusters per datacenter")
	flag.IntVar(&model.ClusterHost, "host", model.ClusterHost, "number of hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", model.Host, "number of standalone hosts")
	flag.IntVar(&model.Datastore, "ds", model.Datastore, "number of local datastores")
	flag.IntVar(&model.Machine, "vm", model.Machine, "number of virtual machines per resource pool")
	flag.IntVar(&model.Pool, "pool", model.Pool, "number of resource pools per compute resource")
	flag.IntVar(&model.Folder, "folder", model.Folder, "number of folders")
	flag.BoolVar(&model.Autostart, "autostart", model.Autostart, "power on the model's virtual machines")
	apiVersion := flag.String("api-version", "", "API version to report (default: the model's)")
	isESX := flag.Bool("esx", false, "simulate a standalone ESXi host instead of vCenter")
	useTLS := flag.Bool("tls", true, "serve HTTPS")
	certFile := flag.String("tlscert", "", "PEM certificate (chain) for HTTPS (default: a built-in localhost certificate)")
	keyFile := flag.String("tlskey", "", "PEM private key for -tlscert")
	listen := flag.String("l", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	username := flag.String("username", "", "the only user name accepted (empty: any non-empty user name)")
	passwordFile := flag.String("password-file", "", "file holding the only password accepted (read at start)")
	handshakeFile := flag.String("E", "", "write the readiness handshake (JSON) to this file; empty: stdout")
	flag.BoolVar(&simulator.Trace, "trace", false, "trace SOAP requests and responses to stderr")
	flag.Parse()

	if flag.Arg(0) == "version" {
		fmt.Printf("vcsim (cbt.toolkit test bed) govmomi %s %s\n", govmomiVersion(), runtime.Version())
		return
	}

	u := &url.URL{Host: *listen}
	if *username != "" {
		if *passwordFile == "" {
			log.Fatal("-username needs -password-file")
		}
		raw, err := os.ReadFile(*passwordFile)
		if err != nil {
			log.Fatalf("reading -password-file: %v", err)
		}
		u.User = url.UserPassword(*username, strings.TrimRight(string(raw), "\r\n"))
	}

	addr, _, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("bad -l %q: %v", *listen, err)
	}
	// The model's host systems advertise the management address the clients connect to.
	esx.HostSystem.Summary.ManagementServerIp = addr

	if *isESX {
		opts := model
		model = simulator.ESX()
		model.Datastore = opts.Datastore
		model.Machine = opts.Machine
		model.Autostart = opts.Autostart
	}
	if *apiVersion != "" {
		model.ServiceContent.About.ApiVersion = *apiVersion
	}
	model.ServiceContent.About.FullName += " (govmomi simulator)"
	model.ServiceContent.About.OsType = runtime.GOOS + "-" + runtime.GOARCH

	if err := model.Create(); err != nil {
		log.Fatalf("creating the inventory model: %v", err)
	}
	defer model.Remove()

	model.Service.RegisterEndpoints = true
	model.Service.Listen = u
	if *useTLS {
		model.Service.TLS = new(tls.Config)
		if *certFile != "" {
			pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				log.Fatalf("loading -tlscert/-tlskey: %v", err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{pair}
		}
	}

	server := model.Service.NewServer()
	defer server.Close()

	hs := handshake{
		PID:            os.Getpid(),
		TLS:            *useTLS,
		GovmomiVersion: govmomiVersion(),
		About:          model.ServiceContent.About.FullName,
		APIVersion:     model.ServiceContent.About.ApiVersion,
	}
	clean := *server.URL
	clean.User = nil
	hs.URL = clean.String()
	hs.Host = clean.Hostname()
	hs.Port, _ = strconv.Atoi(clean.Port())
	if *useTLS {
		sum := sha256.Sum256(server.Certificate().Raw)
		hs.CertSHA256 = hex.EncodeToString(sum[:])
	}
	count := model.Count()
	hs.Datacenters = count.Datacenter
	hs.VirtualMachines = count.Machine

	doc, err := json.MarshalIndent(hs, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	doc = append(doc, '\n')
	if *handshakeFile == "" {
		os.Stdout.Write(doc)
	} else {
		tmp := filepath.Join(filepath.Dir(*handshakeFile), "."+filepath.Base(*handshakeFile)+".tmp")
		if err := os.WriteFile(tmp, doc, 0o600); err != nil {
			log.Fatalf("writing the handshake: %v", err)
		}
		if err := os.Rename(tmp, *handshakeFile); err != nil {
			log.Fatalf("writing the handshake: %v", err)
		}
	}
	log.Printf("vcsim serving %s (govmomi %s)", hs.URL, hs.GovmomiVersion)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	got := <-sig
	log.Printf("vcsim stopping on %s", got)
}
