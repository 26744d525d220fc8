// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// The registry Handler hook: runs before every SOAP dispatch. It fires injected faults and
// redirects the overridden VM / snapshot methods to the proxy object.
//
// vcsim resolves the dispatch target again from the session after the hook (falling back
// to the global registry), so returning a replacement handler from the hook has no effect
// for logged-in sessions; rewriting Method.This to a registered object does.

import (
	"context"
	"fmt"
	"log"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var vmProxyMethods = map[string]bool{
	"QueryChangedDiskAreas":        true,
	"CreateSnapshot_Task":          true,
	"CreateSnapshotEx_Task":        true,
	"RemoveAllSnapshots_Task":      true,
	"RevertToCurrentSnapshot_Task": true,
	"ReconfigVM_Task":              true,
	"PowerOnVM_Task":               true,
	"PowerOffVM_Task":              true,
	"ShutdownGuest":                true,
	"Destroy_Task":                 true,
}

var snapshotProxyMethods = map[string]bool{
	"RemoveSnapshot_Task":   true,
	"RevertToSnapshot_Task": true,
}

// methods that establish or end a session are never hit by injected faults
var sessionMethods = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true, "LoginExtensionByCertificate": true,
	"Logout": true, "CloneSession": true, "AcquireCloneTicket": true, "SessionIsActive": true,
	"RetrieveInternalContent": true,
}

func (s *Sim) hook(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	if ctx.Session == nil {
		return nil, nil // vcsim answers NotAuthenticated itself
	}
	if m.Name == "CancelTask" && s.refusesCancel(m.This.Value) {
		return nil, new(types.NotSupported) // vCenter's answer for a task that is not cancelable
	}
	if ctx.Session.UserName != "" && !sessionMethods[m.Name] { // not the in-process client
		if r := s.matchRule(ctx, m); r != nil {
			if r.Kind != "task_delay" {
				return s.fire(ctx, m, r)
			}
			// the call goes on as usual; startTask finds the rule and holds the task back
			ctx.Context = context.WithValue(ctx.Context, delayKey{}, r)
		}
	}
	if m.Name == "Fetch" && ctx.Session.UserName != "" {
		m.This = s.proxyRef // see proxy.Fetch (the in-process client never uses Fetch)
		return nil, nil
	}
	switch m.This.Type {
	case "VirtualMachine":
		if vmProxyMethods[m.Name] {
			if _, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine); ok {
				m.This = s.proxyRef
			}
		}
	case "VirtualMachineSnapshot":
		if snapshotProxyMethods[m.Name] {
			if _, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachineSnapshot); ok {
				m.This = s.proxyRef
			}
		}
	}
	return nil, nil
}

// ---------------------------------------------------------------------------------------
// fault rules

type faultRule struct {
	ID         int    `json:"id"`
	Method     string `json:"method"`
	Kind       string `json:"kind"`
	Privilege  string `json:"privilege,omitempty"`
	VM         string `json:"vm,omitempty"`
	Count      int    `json:"count"`     // requested count; 0 = unlimited
	Remaining  int    `json:"remaining"` // -1 = unlimited
	Fault      string `json:"fault,omitempty"`
	Message    string `json:"message,omitempty"`
	DelayMs    int    `json:"delay_ms,omitempty"` // task_delay: how long the task stays queued
	Cancelable bool   `json:"cancelable"`         // task_delay: CancelTask works while it waits
	Hits       int    `json:"hits"`

	ref types.ManagedObjectReference
}

var faultKinds = map[string]bool{"no_permission": true, "task_error": true, "not_authenticated": true, "task_delay": true}

// delayKey carries a matched task_delay rule from the hook to startTask (same SOAP call).
type delayKey struct{}

// delayedTask: the methods whose tasks the simulator runs itself (startTask), which a
// task_delay rule can hold back.
func delayedTask(method string) bool {
	for _, name := range taskNames {
		if name == method {
			return true
		}
	}
	return false
}

var taskErrorFaults = map[string]bool{
	"GenericVmConfigFault": true, "SystemError": true, "FileFault": true, "InvalidState": true,
	"TaskInProgress": true, "NotFound": true, "InvalidArgument": true,
}

var defaultPrivilege = map[string]string{
	"ReconfigVM_Task":              "VirtualMachine.Config.ChangeTracking",
	"CreateSnapshot_Task":          "VirtualMachine.State.CreateSnapshot",
	"CreateSnapshotEx_Task":        "VirtualMachine.State.CreateSnapshot",
	"RemoveSnapshot_Task":          "VirtualMachine.State.RemoveSnapshot",
	"RemoveAllSnapshots_Task":      "VirtualMachine.State.RemoveSnapshot",
	"RevertToSnapshot_Task":        "VirtualMachine.State.RevertToSnapshot",
	"RevertToCurrentSnapshot_Task": "VirtualMachine.State.RevertToSnapshot",
	"QueryChangedDiskAreas":        "VirtualMachine.Provisioning.DiskRandomRead",
	"PowerOnVM_Task":               "VirtualMachine.Interact.PowerOn",
	"PowerOffVM_Task":              "VirtualMachine.Interact.PowerOff",
	"ShutdownGuest":                "VirtualMachine.Interact.PowerOff",
	"Destroy_Task":                 "VirtualMachine.Inventory.Delete",
}

// methodMatches: a rule for CreateSnapshot_Task also covers CreateSnapshotEx_Task and
// the reverse; "*" covers everything.
func methodMatches(rule, method string) bool {
	if rule == "*" || rule == method {
		return true
	}
	snap := map[string]bool{"CreateSnapshot_Task": true, "CreateSnapshotEx_Task": true}
	return snap[rule] && snap[method]
}

// vmOf resolves the VM a call is about (the VM itself, or a snapshot's VM).
func (s *Sim) vmOf(ctx *simulator.Context, this types.ManagedObjectReference) *simulator.VirtualMachine {
	switch this.Type {
	case "VirtualMachine":
		return s.findVM(ctx, this)
	case "VirtualMachineSnapshot":
		if snap, ok := ctx.Map.Get(this).(*simulator.VirtualMachineSnapshot); ok {
			return s.findVM(ctx, snap.Vm)
		}
	}
	return nil
}

func (s *Sim) addRule(r *faultRule) error {
	if r.Method == "" {
		return fmt.Errorf("method is required (a SOAP method name such as CreateSnapshot_Task, or \"*\")")
	}
	if !faultKinds[r.Kind] {
		return fmt.Errorf("kind %q must be one of no_permission, task_error, not_authenticated, task_delay", r.Kind)
	}
	if r.Kind == "task_delay" {
		if !delayedTask(r.Method) {
			return fmt.Errorf("task_delay needs a task method the simulator runs (CreateSnapshot_Task, RemoveSnapshot_Task, ReconfigVM_Task, ...), not %q", r.Method)
		}
		if r.DelayMs < 1 || r.DelayMs > 600000 {
			return fmt.Errorf("delay_ms must be 1-600000 for task_delay, got %d", r.DelayMs)
		}
	} else if r.DelayMs != 0 || r.Cancelable {
		return fmt.Errorf("delay_ms and cancelable are only for kind task_delay")
	}
	if r.Fault != "" && !taskErrorFaults[r.Fault] {
		return fmt.Errorf("fault %q must be one of GenericVmConfigFault, SystemError, FileFault, InvalidState, TaskInProgress, NotFound, InvalidArgument", r.Fault)
	}
	if r.Count < 0 {
		return fmt.Errorf("count must be >= 0 (0 = until DELETE /faults)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ruleSeq++
	r.ID = s.ruleSeq
	r.Remaining = r.Count
	if r.Count == 0 {
		r.Remaining = -1
	}
	r.ref = types.ManagedObjectReference{Type: "CbtSimFault", Value: fmt.Sprintf("rule-%d", r.ID)}
	s.registry().Put(&injected{Self: r.ref, sim: s, rule: r})
	s.rules = append(s.rules, r)
	log.Printf("fault rule %d added: %+v", r.ID, *r)
	return nil
}

func (s *Sim) clearRules() {
	s.mu.Lock()
	rules := s.rules
	s.rules = nil
	s.mu.Unlock()
	ctx := s.newCtx()
	for _, r := range rules {
		s.registry().Remove(ctx, r.ref)
	}
}

// matchRule finds the first live rule for the call and consumes one use of it.
func (s *Sim) matchRule(ctx *simulator.Context, m *simulator.Method) *faultRule {
	s.mu.Lock()
	var cands []*faultRule
	for _, r := range s.rules {
		if r.Remaining != 0 && methodMatches(r.Method, m.Name) {
			cands = append(cands, r)
		}
	}
	s.mu.Unlock()
	if len(cands) == 0 {
		return nil
	}
	var vmMoid string
	if vm := s.vmOf(ctx, m.This); vm != nil {
		vmMoid = vm.Self.Value
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range cands {
		if r.Remaining == 0 || (r.VM != "" && r.VM != vmMoid) {
			continue
		}
		if r.Remaining > 0 {
			r.Remaining--
		}
		r.Hits++
		log.Printf("fault rule %d fires on %s %s (%s)", r.ID, m.Name, m.This.Value, r.Kind)
		return r
	}
	return nil
}

// fire applies a matched rule: expire the session for not_authenticated, then route the
// call to the rule's object (which answers with a fault or a failing task), or fail the
// call right here for methods the rule object does not implement.
func (s *Sim) fire(ctx *simulator.Context, m *simulator.Method, r *faultRule) (mo.Reference, types.BaseMethodFault) {
	if r.Kind == "not_authenticated" {
		sm := ctx.Map.SessionManager()
		killer := &simulator.Context{Context: ctx.Context, Map: ctx.Map,
			Session: &simulator.Session{UserSession: types.UserSession{Key: "cbtsim-session-expiry"}}}
		sm.TerminateSession(killer, &types.TerminateSession{SessionId: []string{ctx.Session.Key}})
		log.Printf("session %s of %s expired by fault rule %d", ctx.Session.Key, ctx.Session.UserName, r.ID)
	}
	inj := &injected{Self: r.ref, sim: s, rule: r}
	if reflect.ValueOf(inj).MethodByName(dispatchName(m.Name)).IsValid() {
		m.This = r.ref
		return nil, nil
	}
	f, _ := s.buildFault(ctx, r, m.Name, m.This)
	return nil, f
}

func dispatchName(method string) string {
	name := strings.ToUpper(method[:1]) + method[1:]
	if strings.HasSuffix(name, "_Task") {
		name = strings.TrimSuffix(name, "_Task") + "Task"
	}
	return name
}

// buildFault makes the vim fault and message for a rule.
func (s *Sim) buildFault(ctx *simulator.Context, r *faultRule, method string, this types.ManagedObjectReference) (types.BaseMethodFault, string) {
	obj := this
	if vm := s.vmOf(ctx, this); vm != nil {
		obj = vm.Self
	}
	switch r.Kind {
	case "no_permission":
		priv := r.Privilege
		if priv == "" {
			priv = defaultPrivilege[method]
		}
		if priv == "" {
			priv = "System.Read"
		}
		f := &types.NoPermission{Object: &obj, PrivilegeId: priv}
		if apiAtLeast(s.model.ServiceContent.About.ApiVersion, 7, 0, 3) {
			// missingPrivileges exists since 7.0.3.2; older clients cannot parse it
			f.MissingPrivileges = []types.NoPermissionEntityPrivileges{{Entity: obj, PrivilegeIds: []string{priv}}}
		}
		msg := r.Message
		if msg == "" {
			msg = fmt.Sprintf("Permission to perform this operation was denied.\nRequired privilege '%s' on managed object with id '%s'.", priv, obj.Value)
		}
		return f, msg
	case "not_authenticated":
		f := &types.NotAuthenticated{NoPermission: types.NoPermission{Object: &this, PrivilegeId: "System.View"}}
		msg := r.Message
		if msg == "" {
			msg = "The session is not authenticated."
		}
		return f, msg
	}
	// task_error
	kind := r.Fault
	if kind == "" {
		switch method {
		case "QueryChangedDiskAreas":
			kind = "FileFault"
		case "CreateSnapshot_Task", "CreateSnapshotEx_Task", "RemoveSnapshot_Task", "RemoveAllSnapshots_Task",
			"ReconfigVM_Task", "RevertToSnapshot_Task", "RevertToCurrentSnapshot_Task":
			kind = "GenericVmConfigFault"
		default:
			kind = "SystemError"
		}
	}
	detail := r.Message
	if detail == "" {
		detail = fmt.Sprintf("cbtsim injected failure (rule %d)", r.ID)
	}
	what := map[string]string{
		"CreateSnapshot_Task":          "An error occurred while taking a snapshot: ",
		"CreateSnapshotEx_Task":        "An error occurred while taking a snapshot: ",
		"RemoveSnapshot_Task":          "An error occurred while consolidating disks: ",
		"RemoveAllSnapshots_Task":      "An error occurred while consolidating disks: ",
		"ReconfigVM_Task":              "An error occurred while reconfiguring the virtual machine: ",
		"RevertToSnapshot_Task":        "An error occurred while reverting to a snapshot: ",
		"RevertToCurrentSnapshot_Task": "An error occurred while reverting to a snapshot: ",
	}[method]
	msg := what + detail
	var f types.BaseMethodFault
	switch kind {
	case "GenericVmConfigFault":
		f = &types.GenericVmConfigFault{Reason: msg}
	case "SystemError":
		f = &types.SystemError{Reason: detail}
		msg = "A general system error occurred: " + detail
	case "FileFault":
		file := ""
		if vm := s.vmOf(ctx, this); vm != nil && vm.Config != nil {
			file = vm.Config.Files.VmPathName
		}
		ff := &types.FileFault{File: file}
		ff.FaultMessage = []types.LocalizableMessage{{Key: "com.vmware.cbtsim.injected", Message: detail}}
		f = ff
		msg = "Error caused by file " + file
	case "InvalidState":
		f = &types.InvalidState{}
		msg = "The operation is not allowed in the current state. " + detail
	case "TaskInProgress":
		f = &types.TaskInProgress{Task: obj}
		msg = "The operation is not allowed in the current state. Another task is already in progress. " + detail
	case "NotFound":
		f = &types.NotFound{}
		msg = "The object or item referred to could not be found. " + detail
	case "InvalidArgument":
		f = &types.InvalidArgument{InvalidProperty: "cbtsim"}
		msg = "A specified parameter was not correct: " + detail
	}
	return f, msg
}

// ---------------------------------------------------------------------------------------
// rule objects: one per rule, registered so the dispatch can be redirected to them

type injected struct {
	nopLock
	Self types.ManagedObjectReference
	sim  *Sim
	rule *faultRule
}

func (f *injected) Reference() types.ManagedObjectReference { return f.Self }

type faultBody struct {
	Fault_ *soap.Fault `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *faultBody) Fault() *soap.Fault { return b.Fault_ }

// respond answers an intercepted call: a failing task for task_error on task methods,
// a SOAP fault otherwise.
func (f *injected) respond(ctx *simulator.Context, method string, this types.ManagedObjectReference,
	taskName string, mk func(types.ManagedObjectReference) soap.HasFault) soap.HasFault {
	fault, msg := f.sim.buildFault(ctx, f.rule, method, this)
	if f.rule.Kind == "task_error" && mk != nil {
		if vm := f.sim.vmOf(ctx, this); vm != nil {
			var ref types.ManagedObjectReference
			ctx.WithLock(vm, func() {
				ref = f.sim.startTask(ctx, vm, taskName, func() (types.AnyType, *vimErr) {
					return nil, &vimErr{fault, msg}
				})
			})
			return mk(ref)
		}
	}
	return &faultBody{Fault_: simulator.Fault(msg, fault)}
}

func (f *injected) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	return f.respond(ctx, "QueryChangedDiskAreas", req.This, "", nil)
}

func (f *injected) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	return f.respond(ctx, "CreateSnapshot_Task", req.This, "createSnapshot", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: r}}
	})
}

func (f *injected) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	return f.respond(ctx, "CreateSnapshotEx_Task", req.This, "createSnapshotEx", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.CreateSnapshotEx_TaskBody{Res: &types.CreateSnapshotEx_TaskResponse{Returnval: r}}
	})
}

func (f *injected) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	return f.respond(ctx, "RemoveSnapshot_Task", req.This, "removeSnapshot", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: r}}
	})
}

func (f *injected) RemoveAllSnapshotsTask(ctx *simulator.Context, req *types.RemoveAllSnapshots_Task) soap.HasFault {
	return f.respond(ctx, "RemoveAllSnapshots_Task", req.This, "removeAllSnapshots", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.RemoveAllSnapshots_TaskBody{Res: &types.RemoveAllSnapshots_TaskResponse{Returnval: r}}
	})
}

func (f *injected) RevertToSnapshotTask(ctx *simulator.Context, req *types.RevertToSnapshot_Task) soap.HasFault {
	return f.respond(ctx, "RevertToSnapshot_Task", req.This, "revertToSnapshot", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.RevertToSnapshot_TaskBody{Res: &types.RevertToSnapshot_TaskResponse{Returnval: r}}
	})
}

func (f *injected) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	return f.respond(ctx, "ReconfigVM_Task", req.This, "reconfigVm", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.ReconfigVM_TaskBody{Res: &types.ReconfigVM_TaskResponse{Returnval: r}}
	})
}

func (f *injected) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	return f.respond(ctx, "PowerOnVM_Task", req.This, "powerOn", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: r}}
	})
}

func (f *injected) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	return f.respond(ctx, "PowerOffVM_Task", req.This, "powerOff", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.PowerOffVM_TaskBody{Res: &types.PowerOffVM_TaskResponse{Returnval: r}}
	})
}

func (f *injected) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	return f.respond(ctx, "Destroy_Task", req.This, "destroy", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.Destroy_TaskBody{Res: &types.Destroy_TaskResponse{Returnval: r}}
	})
}

// PropertyCollector calls (how pyVmomi reads properties) get proper fault messages too.
func (f *injected) RetrievePropertiesEx(ctx *simulator.Context, req *types.RetrievePropertiesEx) soap.HasFault {
	return f.respond(ctx, "RetrievePropertiesEx", req.This, "", nil)
}

func (f *injected) RetrieveProperties(ctx *simulator.Context, req *types.RetrieveProperties) soap.HasFault {
	return f.respond(ctx, "RetrieveProperties", req.This, "", nil)
}

func (f *injected) WaitForUpdatesEx(ctx *simulator.Context, req *types.WaitForUpdatesEx) soap.HasFault {
	return f.respond(ctx, "WaitForUpdatesEx", req.This, "", nil)
}

func (f *injected) CreateContainerView(ctx *simulator.Context, req *types.CreateContainerView) soap.HasFault {
	return f.respond(ctx, "CreateContainerView", req.This, "", nil)
}

func (f *injected) FindByUuid(ctx *simulator.Context, req *types.FindByUuid) soap.HasFault {
	return f.respond(ctx, "FindByUuid", req.This, "", nil)
}

func (f *injected) RevertToCurrentSnapshotTask(ctx *simulator.Context, req *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	return f.respond(ctx, "RevertToCurrentSnapshot_Task", req.This, "revertToCurrentSnapshot", func(r types.ManagedObjectReference) soap.HasFault {
		return &methods.RevertToCurrentSnapshot_TaskBody{Res: &types.RevertToCurrentSnapshot_TaskResponse{Returnval: r}}
	})
}

// apiAtLeast compares a dotted vSphere API version with major.minor.patch.
func apiAtLeast(v string, major, minor, patch int) bool {
	want := []int{major, minor, patch}
	parts := strings.Split(v, ".")
	for i := range want {
		n := 0
		if i < len(parts) {
			fmt.Sscanf(parts[i], "%d", &n)
		}
		if n != want[i] {
			return n > want[i]
		}
	}
	return true
}

// Fetch is the PropertyCollector method pyVmomi uses to read a single property. Its request
// type lives in a vcsim-internal package, so it is taken as any.
func (f *injected) Fetch(ctx *simulator.Context, req any) soap.HasFault {
	var this types.ManagedObjectReference
	if v := reflect.ValueOf(req); v.Kind() == reflect.Pointer && !v.IsNil() {
		if t := v.Elem().FieldByName("This"); t.IsValid() {
			this, _ = t.Interface().(types.ManagedObjectReference)
		}
	}
	return f.respond(ctx, "Fetch", this, "", nil)
}
