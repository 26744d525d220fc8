// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// The control API: plain HTTP + JSON on a separate loopback port, for tests only.
// See README.md for the reference.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &apiError{http.StatusNotFound, fmt.Sprintf(format, a...)}
}

func conflict(format string, a ...any) error {
	return &apiError{http.StatusConflict, fmt.Sprintf(format, a...)}
}

type handlerFunc func(r *http.Request) (any, error)

func serveJSON(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res, err := h(r)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			status := http.StatusInternalServerError
			var ae *apiError
			if errors.As(err, &ae) {
				status = ae.status
			}
			log.Printf("control %s %s: %d %v", r.Method, r.URL.Path, status, err)
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		if res == nil {
			res = map[string]any{}
		}
		_ = json.NewEncoder(w).Encode(res)
	}
}

// numericKeys are the request fields that may also arrive as numeric strings (Ansible's
// uri module often templates numbers into strings).
var numericKeys = map[string]bool{
	"offset": true, "length": true, "seed": true, "disk_key": true, "count": true, "page_limit": true,
	"page_window": true, "block_size": true, "size": true, "chunk": true, "random_percent": true,
	"zero_regions": true, "shutdown_seconds": true,
}

func coerceNumbers(v any, key string) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = coerceNumbers(e, k)
		}
	case []any:
		for i, e := range x {
			x[i] = coerceNumbers(e, key)
		}
	case string:
		if numericKeys[key] {
			t := strings.TrimSpace(x)
			if _, err := strconv.ParseFloat(t, 64); err == nil {
				return json.Number(t)
			}
		}
	}
	return v
}

func decodeBody(r *http.Request, v any) error {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<30))
	if err != nil {
		return badRequest("request body: %v", err)
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return badRequest("request body: %v", err)
	}
	norm, err := json.Marshal(coerceNumbers(generic, ""))
	if err != nil {
		return badRequest("request body: %v", err)
	}
	strict := json.NewDecoder(bytes.NewReader(norm))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

func (s *Sim) controlMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", serveJSON(func(*http.Request) (any, error) { return map[string]bool{"ok": true}, nil }))
	mux.HandleFunc("GET /vms", serveJSON(s.apiListVMs))
	mux.HandleFunc("POST /vms", serveJSON(s.apiCreateVM))
	mux.HandleFunc("GET /vms/{moid}", serveJSON(s.apiGetVM))
	mux.HandleFunc("POST /vms/{moid}/disks/{key}/write", serveJSON(s.apiWrite))
	mux.HandleFunc("GET /vms/{moid}/disks/{key}/writes", serveJSON(s.apiWrites))
	mux.HandleFunc("POST /vms/{moid}/ctk-invalidate", serveJSON(s.apiInvalidate))
	mux.HandleFunc("POST /vms/{moid}/guest", serveJSON(s.apiGuest))
	mux.HandleFunc("POST /vms/{moid}/connection-state", serveJSON(s.apiConnectionState))
	mux.HandleFunc("GET /faults", serveJSON(s.apiListFaults))
	mux.HandleFunc("POST /faults", serveJSON(s.apiAddFault))
	mux.HandleFunc("DELETE /faults", serveJSON(s.apiClearFaults))
	mux.HandleFunc("DELETE /faults/{id}", serveJSON(s.apiDeleteFault))
	mux.HandleFunc("GET /exports", serveJSON(s.apiListExports))
	mux.HandleFunc("POST /exports", serveJSON(s.apiAddExport))
	mux.HandleFunc("DELETE /exports/{id}", serveJSON(s.apiDeleteExport))
	mux.HandleFunc("GET /config", serveJSON(s.apiGetConfig))
	mux.HandleFunc("POST /config", serveJSON(s.apiSetConfig))
	mux.HandleFunc("POST /reset", serveJSON(s.apiReset))
	return mux
}

// ---------------------------------------------------------------------------------------
// VMs

type diskJSON struct {
	Key              int32  `json:"key"`
	Label            string `json:"label"`
	File             string `json:"file"`
	Path             string `json:"path"`
	Capacity         int64  `json:"capacity"`
	Backing          string `json:"backing"`
	Mode             string `json:"mode"`
	RDMMode          string `json:"rdm_mode,omitempty"`
	CtkKey           string `json:"ctk_key,omitempty"`
	Eligible         bool   `json:"eligible"`
	IneligibleReason string `json:"ineligible_reason,omitempty"`
	InSnapshot       bool   `json:"in_snapshot"`
	TrackingActive   bool   `json:"tracking_active"`
	CtkUUID          string `json:"ctk_uuid,omitempty"`
	ChangeID         string `json:"change_id,omitempty"`
	Writes           int    `json:"writes"`
}

type snapJSON struct {
	Moid  string        `json:"moid"`
	Name  string        `json:"name"`
	Disks []*frozenDisk `json:"disks"`
}

type vmJSON struct {
	Moid                    string     `json:"moid"`
	Name                    string     `json:"name"`
	InstanceUUID            string     `json:"instance_uuid"`
	UUID                    string     `json:"uuid"`
	PowerState              string     `json:"power_state"`
	HWVersion               string     `json:"hw_version"`
	ChangeTrackingSupported bool       `json:"change_tracking_supported"`
	CBTSupported            bool       `json:"cbt_supported"`
	CBTUnsupportedReason    string     `json:"cbt_unsupported_reason,omitempty"`
	CBTEnabled              bool       `json:"cbt_enabled"`
	Guest                   guestJSON  `json:"guest"`
	Disks                   []diskJSON `json:"disks"`
	Snapshots               []snapJSON `json:"snapshots"`
}

// withVM runs f with the VM lock and s.mu held.
func (s *Sim) withVM(moid string, f func(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error) error {
	vm := s.vmByMoid(moid)
	if vm == nil {
		return notFound("no VM with moid %q", moid)
	}
	ctx := s.newCtx()
	var err error
	ctx.WithLock(vm, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.vmByMoid(moid) == nil {
			err = notFound("VM %s was destroyed", moid)
			return
		}
		err = f(ctx, vm, s.vmState(vm))
	})
	return err
}

func (s *Sim) describeVM(vm *simulator.VirtualMachine, st *vmState) vmJSON {
	out := vmJSON{Moid: vm.Self.Value, Name: vm.Name, PowerState: string(vm.Runtime.PowerState), CBTEnabled: st.CBT,
		Disks: []diskJSON{}, Snapshots: []snapJSON{}}
	if vm.Config != nil {
		out.InstanceUUID = vm.Config.InstanceUuid
		out.UUID = vm.Config.Uuid
		out.HWVersion = vm.Config.Version
	}
	out.ChangeTrackingSupported = vm.Capability.ChangeTrackingSupported
	out.CBTSupported, out.CBTUnsupportedReason = vmSupport(vm)
	out.Guest = s.describeGuest(vm, st)
	for _, k := range st.sortedKeys() {
		d := st.disks[k]
		ok, why := d.eligible()
		out.Disks = append(out.Disks, diskJSON{Key: d.Key, Label: d.Label, File: d.FileName, Path: d.Path,
			Capacity: d.Capacity, Backing: d.Backing, Mode: d.Mode, RDMMode: d.RDMMode, CtkKey: d.CtkKey,
			Eligible: ok, IneligibleReason: why, InSnapshot: d.inSnapshot(), TrackingActive: d.Active,
			CtkUUID: d.UUID, ChangeID: d.changeID(), Writes: len(d.writes)})
	}
	var snaps []*snapState
	for _, ss := range s.snaps {
		if ss.VM == vm.Self.Value {
			snaps = append(snaps, ss)
		}
	}
	slices.SortFunc(snaps, func(a, b *snapState) int { return a.Time.Compare(b.Time) })
	for _, ss := range snaps {
		sj := snapJSON{Moid: ss.Moid, Name: ss.Name, Disks: []*frozenDisk{}}
		keys := make([]int32, 0, len(ss.disks))
		for k := range ss.disks {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			sj.Disks = append(sj.Disks, ss.disks[k])
		}
		out.Snapshots = append(out.Snapshots, sj)
	}
	return out
}

func (s *Sim) apiListVMs(*http.Request) (any, error) {
	out := []vmJSON{}
	for _, vm := range s.allVMs() {
		err := s.withVM(vm.Self.Value, func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
			out = append(out, s.describeVM(vm, st))
			return nil
		})
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusNotFound {
				continue // destroyed meanwhile
			}
			return nil, err
		}
	}
	return out, nil
}

func (s *Sim) apiGetVM(r *http.Request) (any, error) {
	var out vmJSON
	err := s.withVM(r.PathValue("moid"), func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		out = s.describeVM(vm, st)
		return nil
	})
	return out, err
}

func (s *Sim) apiCreateVM(r *http.Request) (any, error) {
	var spec vmSpec
	if err := decodeBody(r, &spec); err != nil {
		return nil, err
	}
	if err := s.validateVMSpec(&spec); err != nil {
		return nil, badRequest("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	vm, err := s.createVM(ctx, spec)
	if err != nil {
		if vm == nil && strings.Contains(err.Error(), "already exists") {
			return nil, conflict("%v", err)
		}
		return nil, err
	}
	var out vmJSON
	err = s.withVM(vm.Self.Value, func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		out = s.describeVM(vm, st)
		return nil
	})
	return out, err
}

func diskKey(r *http.Request) (int32, error) {
	k, err := strconv.ParseInt(r.PathValue("key"), 10, 32)
	if err != nil {
		return 0, badRequest("disk key %q is not a number", r.PathValue("key"))
	}
	return int32(k), nil
}

type writeReq struct {
	Offset     int64   `json:"offset"`
	Length     int64   `json:"length"`
	Pattern    string  `json:"pattern"`
	Seed       uint64  `json:"seed"`
	DataB64    *string `json:"data_b64"`
	ReturnData bool    `json:"return_data"`
}

func (s *Sim) apiWrite(r *http.Request) (any, error) {
	key, err := diskKey(r)
	if err != nil {
		return nil, err
	}
	var req writeReq
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	var data []byte
	pattern := req.Pattern
	if req.DataB64 != nil {
		if pattern != "" {
			return nil, badRequest("give either pattern or data_b64, not both")
		}
		data, err = decodeB64(*req.DataB64)
		if err != nil {
			return nil, badRequest("data_b64: %v", err)
		}
		if req.Length != 0 && req.Length != int64(len(data)) {
			return nil, badRequest("length %d does not match the %d bytes of data_b64", req.Length, len(data))
		}
		req.Length = int64(len(data))
		pattern = "data"
	} else {
		if pattern == "" {
			pattern = "random"
		}
		if req.Length <= 0 {
			return nil, badRequest("length must be > 0")
		}
		if req.Length > 1<<30 {
			return nil, badRequest("length must be <= 1 GiB per request")
		}
		data, err = patternData(pattern, req.Seed, req.Length)
		if err != nil {
			return nil, badRequest("%v", err)
		}
	}
	if req.Offset < 0 || req.Length <= 0 {
		return nil, badRequest("offset must be >= 0 and length > 0")
	}
	var rec writeRecord
	err = s.withVM(r.PathValue("moid"), func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		d := st.disks[key]
		if d == nil {
			return notFound("VM %s has no disk with key %d", st.Moid, key)
		}
		if d.Path == "" {
			return conflict("disk %d of VM %s is not on the simulator datastore", key, st.Moid)
		}
		if req.Offset+req.Length > d.Capacity {
			return badRequest("offset+length %d is beyond the disk capacity %d", req.Offset+req.Length, d.Capacity)
		}
		if err := writeAt(d.Path, req.Offset, req.Length, data); err != nil {
			return err
		}
		s.writeSeq++
		rec = writeRecord{Index: s.writeSeq, Offset: req.Offset, Length: req.Length, Pattern: pattern, Seed: req.Seed,
			Tracked: d.Active, CtkUUID: d.UUID, AfterChangeID: d.changeID(), Time: time.Now().UTC().Format(time.RFC3339Nano)}
		if data != nil {
			rec.SHA256 = sha256Hex(data)
		}
		s.markWrite(d, req.Offset, req.Length)
		s.liveWritten(d, req.Offset, req.Length)
		d.writes = append(d.writes, rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string]any{"index": rec.Index, "offset": rec.Offset, "length": rec.Length, "pattern": rec.Pattern,
		"seed": rec.Seed, "sha256": rec.SHA256, "tracked": rec.Tracked, "ctk_uuid": rec.CtkUUID,
		"after_change_id": rec.AfterChangeID}
	if req.ReturnData {
		if data == nil {
			data = make([]byte, req.Length)
		}
		out["data_b64"] = base64.StdEncoding.EncodeToString(data)
	}
	return out, nil
}

func (s *Sim) apiWrites(r *http.Request) (any, error) {
	key, err := diskKey(r)
	if err != nil {
		return nil, err
	}
	since := 0
	if v := r.URL.Query().Get("since"); v != "" {
		if since, err = strconv.Atoi(v); err != nil {
			return nil, badRequest("since must be a write index")
		}
	}
	out := []writeRecord{}
	err = s.withVM(r.PathValue("moid"), func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		d := st.disks[key]
		if d == nil {
			return notFound("VM %s has no disk with key %d", st.Moid, key)
		}
		for _, w := range d.writes {
			if w.Index > since {
				out = append(out, w)
			}
		}
		return nil
	})
	return out, err
}

// apiInvalidate simulates "Change tracking invalid; reinitializing" (e.g. after a host
// crash): every active disk gets a new UUID; older change IDs stop working.
func (s *Sim) apiInvalidate(r *http.Request) (any, error) {
	var out vmJSON
	err := s.withVM(r.PathValue("moid"), func(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		n := 0
		for _, k := range st.sortedKeys() {
			d := st.disks[k]
			if d.Active {
				star := d.StarFull
				s.deactivate(d)
				s.activate(d, star)
				n++
			}
		}
		if n == 0 {
			return conflict("VM %s has no disk with active change tracking", st.Moid)
		}
		s.publish(ctx, vm, st)
		log.Printf("vm %s: change tracking reinitialized on %d disk(s)", st.Moid, n)
		out = s.describeVM(vm, st)
		return nil
	})
	return out, err
}

// ---------------------------------------------------------------------------------------
// faults

type faultReq struct {
	Method     string `json:"method"`
	Kind       string `json:"kind"`
	Privilege  string `json:"privilege"`
	VM         string `json:"vm"`
	Count      *int   `json:"count"`
	Fault      string `json:"fault"`
	Message    string `json:"message"`
	DelayMs    int    `json:"delay_ms"`
	Cancelable bool   `json:"cancelable"`
}

func (s *Sim) apiAddFault(r *http.Request) (any, error) {
	var req faultReq
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	count := 1
	if req.Count != nil {
		count = *req.Count
	}
	if req.VM != "" && s.vmByMoid(req.VM) == nil {
		return nil, notFound("no VM with moid %q", req.VM)
	}
	rule := &faultRule{Method: req.Method, Kind: req.Kind, Privilege: req.Privilege, VM: req.VM, Count: count,
		Fault: req.Fault, Message: req.Message, DelayMs: req.DelayMs, Cancelable: req.Cancelable}
	if err := s.addRule(rule); err != nil {
		return nil, badRequest("%v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return *rule, nil
}

func (s *Sim) apiListFaults(*http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []faultRule{}
	for _, r := range s.rules {
		out = append(out, *r)
	}
	return out, nil
}

func (s *Sim) apiClearFaults(*http.Request) (any, error) {
	s.clearRules()
	return map[string]bool{"cleared": true}, nil
}

func (s *Sim) apiDeleteFault(r *http.Request) (any, error) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		return nil, badRequest("fault id %q is not a number", r.PathValue("id"))
	}
	s.mu.Lock()
	idx := slices.IndexFunc(s.rules, func(x *faultRule) bool { return x.ID == id })
	if idx < 0 {
		s.mu.Unlock()
		return nil, notFound("no fault rule %d", id)
	}
	rule := s.rules[idx]
	s.rules = slices.Delete(s.rules, idx, idx+1)
	s.mu.Unlock()
	s.registry().Remove(s.newCtx(), rule.ref)
	return *rule, nil
}

// ---------------------------------------------------------------------------------------
// exports

type exportDisk struct {
	DiskKey int32  `json:"disk_key"`
	Socket  string `json:"socket"`
}

type exportReq struct {
	VM       string       `json:"vm"`
	Snapshot string       `json:"snapshot"`
	DiskKey  int32        `json:"disk_key"`
	Socket   string       `json:"socket"`
	Disks    []exportDisk `json:"disks"`
}

func validSocketPath(p string) error {
	if p == "" {
		return nil
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("socket %q must be an absolute path", p)
	}
	if len(p) > 107 {
		return fmt.Errorf("socket %q is %d bytes long; unix socket paths allow at most 107", p, len(p))
	}
	if fi, err := os.Stat(filepath.Dir(p)); err != nil || !fi.IsDir() {
		return fmt.Errorf("the folder of socket %q does not exist", p)
	}
	return nil
}

// apiAddExport starts one export ({"vm", "snapshot", "disk_key", "socket"}, answer: the export) or
// several at once ({"vm", "snapshot", "disks": [{"disk_key", "socket"}, ...]}, answer:
// {"exports": [...]}; all or none).
func (s *Sim) apiAddExport(r *http.Request) (any, error) {
	var req exportReq
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	batch := len(req.Disks) > 0
	if batch && (req.DiskKey != 0 || req.Socket != "") {
		return nil, badRequest("give disk_key (and socket) or disks, not both")
	}
	if !batch {
		req.Disks = []exportDisk{{DiskKey: req.DiskKey, Socket: req.Socket}}
	}
	if req.VM == "" {
		return nil, badRequest("vm is required")
	}
	seen := map[string]bool{}
	for i, d := range req.Disks {
		if d.DiskKey == 0 {
			return nil, badRequest("disk_key is required (disks[%d])", i)
		}
		if err := validSocketPath(d.Socket); err != nil {
			return nil, badRequest("%v", err)
		}
		if d.Socket != "" && seen[d.Socket] {
			return nil, badRequest("socket %q is given twice", d.Socket)
		}
		seen[d.Socket] = true
	}
	var out []*export
	err := s.withVM(req.VM, func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		live := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff
		for _, d := range req.Disks {
			e, err := s.startExport(req.VM, req.Snapshot, d.DiskKey, live, d.Socket)
			if err != nil {
				started := out
				s.stopExportsWhere(func(x *export) bool { return slices.Contains(started, x) })
				out = nil
				return conflict("%v", err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if batch {
		return map[string]any{"exports": out}, nil
	}
	return out[0], nil
}

func (s *Sim) apiListExports(*http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []*export{}
	for _, e := range s.exports {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *export) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (s *Sim) apiDeleteExport(r *http.Request) (any, error) {
	id := r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[id]
	if e == nil {
		return nil, notFound("no export %q (stopped, or its snapshot was removed)", id)
	}
	s.stopExportsWhere(func(x *export) bool { return x.ID == id })
	return e, nil
}

// ---------------------------------------------------------------------------------------
// config and reset

func (s *Sim) apiGetConfig(*http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg, nil
}

type configReq struct {
	PageLimit  *int   `json:"page_limit"`
	PageWindow *int64 `json:"page_window"`
	BlockSize  *int64 `json:"block_size"`
}

func (s *Sim) apiSetConfig(r *http.Request) (any, error) {
	var req configReq
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.BlockSize != nil && *req.BlockSize != s.cfg.BlockSize {
		return nil, badRequest("block_size is fixed at start-up (-block-size); it is %d", s.cfg.BlockSize)
	}
	if req.PageLimit != nil {
		if *req.PageLimit < 0 {
			return nil, badRequest("page_limit must be >= 0 (0 = unlimited)")
		}
		s.cfg.PageLimit = *req.PageLimit
	}
	if req.PageWindow != nil {
		if *req.PageWindow < 0 {
			return nil, badRequest("page_window must be >= 0 (0 = the rest of the disk)")
		}
		s.cfg.PageWindow = *req.PageWindow
	}
	log.Printf("config: %+v", s.cfg)
	return s.cfg, nil
}

func (s *Sim) apiReset(*http.Request) (any, error) {
	s.clearRules()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopExportsWhere(func(*export) bool { return true })
	s.cfg = s.defaultCfg
	return map[string]any{"reset": true, "config": s.cfg}, nil
}

// ---------------------------------------------------------------------------------------
// connection state

type connectionStateReq struct {
	State string `json:"state"`
}

var connectionStates = map[string]bool{
	"connected": true, "disconnected": true, "orphaned": true, "inaccessible": true, "invalid": true,
}

// apiConnectionState sets runtime.connectionState of a VM: POST /vms/{moid}/connection-state
// {"state": "inaccessible"}. The rest of the VM (config included) stays as it is.
func (s *Sim) apiConnectionState(r *http.Request) (any, error) {
	var req connectionStateReq
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if !connectionStates[req.State] {
		return nil, badRequest("state %q must be one of connected, disconnected, orphaned, inaccessible, invalid", req.State)
	}
	var out vmJSON
	err := s.withVM(r.PathValue("moid"), func(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		ctx.Update(vm, []types.PropertyChange{
			{Name: "runtime.connectionState", Val: types.VirtualMachineConnectionState(req.State)},
		})
		log.Printf("vm %s: connection state %s", st.Moid, req.State)
		out = s.describeVM(vm, st)
		return nil
	})
	return out, err
}
