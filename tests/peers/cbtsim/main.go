// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

// cbtsim is a vCenter simulator with VMware Changed Block Tracking semantics, built on
// govmomi's simulator (vcsim) package. It adds real change IDs, QueryChangedDiskAreas,
// snapshot frozen copies served over NBD, and a control API for tests. See README.md.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	var (
		listen      = flag.String("l", "127.0.0.1:0", "SOAP listen address (port 0 = a free port)")
		useTLS      = flag.Bool("tls", true, "serve SOAP over HTTPS")
		tlsCert     = flag.String("tlscert", "", "PEM server certificate (default: generated with a fresh CA, see ca_file in the ready file)")
		tlsKey      = flag.String("tlskey", "", "PEM server key for -tlscert")
		control     = flag.String("control", "127.0.0.1:0", "control API listen address (plain HTTP)")
		dsDir       = flag.String("datastore-dir", "", "folder backing the datastore (default: a temporary folder removed at exit)")
		dsName      = flag.String("datastore-name", "LocalDS_0", "datastore name")
		dsType      = flag.String("datastore-type", "VMFS", "datastore summary.type: VMFS, NFS or NFS41 (on non-VMFS, changeId \"*\" returns the whole disk)")
		stateDir    = flag.String("state-dir", "", "folder for snapshot frozen copies and the CA file (default: a temporary folder removed at exit)")
		pageLimit   = flag.Int("page-limit", 2000, "QueryChangedDiskAreas: at most this many areas per call (0 = unlimited)")
		pageWindow  = flag.Int64("page-window", 8<<20, "QueryChangedDiskAreas: one call covers at most this many bytes (0 = to the end of the disk)")
		blockSize   = flag.Int64("block-size", 64<<10, "change tracking granularity in bytes")
		nVMs        = flag.Int("vms", 2, "number of VMs created at start-up (cbtsim-vm0, cbtsim-vm1, ...)")
		diskSize    = flag.Int64("disk-size", 64<<20, "capacity in bytes of the start-up VMs' single disk")
		fillPct     = flag.Float64("fill-percent", 0, "fill this percentage of each start-up disk with random data (1 MiB chunks)")
		username    = flag.String("username", "", "accepted user name (empty: any non-empty user/password)")
		password    = flag.String("password", "", "accepted password")
		readyFile   = flag.String("ready-file", "", "write a JSON description here once listening")
		nbdkitPath  = flag.String("nbdkit", "", "nbdkit binary (default: from PATH, else /usr/sbin/nbdkit)")
		exportRate  = flag.String("export-rate", "", "limit each export to this many bits per second (nbdkit's rate filter; K, M, G are powers of 1024; e.g. 1200000000 for the ~150 MB/s per disk VDDK reads at; empty: no limit)")
		apiVersion  = flag.String("api-version", "", "override the reported vSphere API version (default: vcsim's)")
		verboseSOAP = flag.Bool("trace", false, "log every SOAP request and response")
		guestTools  = flag.String("guest-tools", toolsRunning, "VMware Tools of the VMs the simulator creates (start-up VMs, POST /vms without guest.tools): running, not_running or not_installed")
		guestDelay  = flag.Float64("guest-shutdown-seconds", 1, "default delay between ShutdownGuest and poweredOff")
	)
	flag.Parse()
	if *blockSize <= 0 || *blockSize%512 != 0 {
		log.Fatalf("-block-size must be a positive multiple of 512")
	}
	if *diskSize <= 0 || *diskSize%1024 != 0 {
		log.Fatalf("-disk-size must be a positive multiple of 1024")
	}
	if !toolsSettings[*guestTools] {
		log.Fatalf("-guest-tools must be running, not_running or not_installed")
	}
	if *guestDelay < 0 || *guestDelay > 3600 {
		log.Fatalf("-guest-shutdown-seconds must be 0-3600")
	}
	if (*username == "") != (*password == "") {
		log.Fatalf("give both -username and -password, or neither")
	}
	simulator.Trace = *verboseSOAP

	cleanup := []func(){}
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	fatal := func(format string, a ...any) {
		log.Printf(format, a...)
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		os.Exit(1)
	}

	nbdkit := *nbdkitPath
	if nbdkit == "" {
		if p, err := exec.LookPath("nbdkit"); err == nil {
			nbdkit = p
		} else {
			nbdkit = "/usr/sbin/nbdkit"
		}
	}
	if *dsDir == "" {
		d, err := os.MkdirTemp("", "cbtsim-ds-")
		if err != nil {
			fatal("%v", err)
		}
		cleanup = append(cleanup, func() { os.RemoveAll(d) })
		*dsDir = d
	}
	absDS, err := filepath.Abs(*dsDir)
	if err != nil {
		fatal("%v", err)
	}
	if *stateDir == "" {
		d, err := os.MkdirTemp("", "cbtsim-state-")
		if err != nil {
			fatal("%v", err)
		}
		cleanup = append(cleanup, func() { os.RemoveAll(d) })
		*stateDir = d
	} else {
		if err := os.MkdirAll(*stateDir, 0o755); err != nil {
			fatal("%v", err)
		}
		sd := *stateDir
		cleanup = append(cleanup, func() { os.RemoveAll(filepath.Join(sd, "frozen")) })
	}
	absState, _ := filepath.Abs(*stateDir)
	sockBase := os.TempDir()
	if len(sockBase) > 60 {
		sockBase = "/tmp" // unix socket paths are limited to 107 bytes
	}
	sockDir, err := os.MkdirTemp(sockBase, "cbtsim-nbd-")
	if err != nil {
		fatal("%v", err)
	}
	cleanup = append(cleanup, func() { os.RemoveAll(sockDir) })

	model := simulator.VPX()
	model.Datacenter = 1
	model.Cluster = 1
	model.ClusterHost = 2
	model.Host = 0
	model.Datastore = 0
	model.Machine = 0
	model.Portgroup = 0
	model.Autostart = false
	if *apiVersion != "" {
		model.ServiceContent.About.ApiVersion = *apiVersion
	}
	if err := model.Create(); err != nil {
		fatal("creating the vcsim model: %v", err)
	}
	cleanup = append(cleanup, model.Remove)

	cfg := simConfig{PageLimit: *pageLimit, PageWindow: *pageWindow, BlockSize: *blockSize}
	s := &Sim{
		model: model, cfg: cfg, defaultCfg: cfg,
		dsName: *dsName, dsDir: absDS, dsType: *dsType, stateDir: absState, sockDir: sockDir, nbdkit: nbdkit,
		exportRate: *exportRate,
		vms:        map[string]*vmState{}, snaps: map[string]*snapState{}, pending: map[int]map[int32]*frozenDisk{},
		exports:      map[string]*export{},
		proxyRef:     types.ManagedObjectReference{Type: "CbtSimProxy", Value: "cbtsim"},
		defaultTools: *guestTools, guestShutdownSeconds: *guestDelay,
	}
	px := &proxy{Self: s.proxyRef, sim: s}
	model.Map().Put(px)
	model.Map().AddHandler(px)
	model.Map().Handler = s.hook
	cleanup = append(cleanup, func() {
		s.mu.Lock()
		s.stopExportsWhere(func(*export) bool { return true })
		s.mu.Unlock()
	})

	ctx := context.Background()
	s.client, err = vim25.NewClient(ctx, model.Service)
	if err != nil {
		fatal("in-process client: %v", err)
	}
	if err := s.setupDatastore(ctx); err != nil {
		fatal("datastore: %v", err)
	}
	for i := 0; i < *nVMs; i++ {
		spec := vmSpec{Name: fmt.Sprintf("cbtsim-vm%d", i), Disks: []diskSpec{{Size: *diskSize}}}
		if *fillPct > 0 {
			spec.Disks[0].Fill = &fillSpec{RandomPercent: *fillPct, Seed: uint64(i + 1)}
		}
		if _, err := s.createVM(ctx, spec); err != nil {
			fatal("creating %s: %v", spec.Name, err)
		}
	}

	caFile := ""
	if *useTLS {
		var cert tls.Certificate
		if *tlsCert != "" {
			cert, err = tls.LoadX509KeyPair(*tlsCert, *tlsKey)
			if err != nil {
				fatal("loading -tlscert/-tlskey: %v", err)
			}
		} else {
			caFile = filepath.Join(absState, "ca.pem")
			cert, err = generateTLS(caFile)
			if err != nil {
				fatal("generating a TLS certificate: %v", err)
			}
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	server := model.Service.NewServer()
	cleanup = append(cleanup, server.Close)

	cl, err := net.Listen("tcp", *control)
	if err != nil {
		fatal("control API listen %s: %v", *control, err)
	}
	csrv := &http.Server{Handler: s.controlMux()}
	go func() {
		if err := csrv.Serve(cl); err != nil && err != http.ErrServerClosed {
			log.Printf("control API: %v", err)
		}
	}()
	cleanup = append(cleanup, func() { csrv.Close() })

	u := *server.URL
	u.User = nil
	host, port, _ := net.SplitHostPort(u.Host)
	portN, _ := strconv.Atoi(port)
	ready := map[string]any{
		"url":            u.String(),
		"host":           host,
		"port":           portN,
		"tls":            *useTLS,
		"ca_file":        caFile,
		"control_url":    "http://" + cl.Addr().String(),
		"datastore_dir":  absDS,
		"datastore":      *dsName,
		"datastore_type": *dsType,
		"datacenter":     "DC0",
		"cluster":        "DC0_C0",
		"state_dir":      absState,
		"pid":            os.Getpid(),
		"block_size":     cfg.BlockSize,
		"page_limit":     cfg.PageLimit,
		"page_window":    cfg.PageWindow,
	}
	log.Printf("cbtsim ready: SOAP %s, control %s, datastore %s (%s)", u.String(), ready["control_url"], absDS, *dsType)
	if *readyFile != "" {
		b, _ := json.MarshalIndent(ready, "", "  ")
		tmp := *readyFile + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			fatal("ready file: %v", err)
		}
		if err := os.Rename(tmp, *readyFile); err != nil {
			fatal("ready file: %v", err)
		}
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	got := <-sig
	log.Printf("cbtsim: %s, shutting down", got)
}
