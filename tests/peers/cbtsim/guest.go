// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// The guest operating system as far as vCenter sees it through VMware Tools: the tools state
// (guest.toolsRunningStatus, guest.toolsStatus, guest.guestState, summary.guest.*) kept
// consistent with the power state, ShutdownGuest (refused with ToolsUnavailable when Tools are
// not running; otherwise the guest powers off after a delay, or never with a hung guest), and
// PowerOffVM_Task (a hard power-off that cancels a pending guest shutdown).
//
// A guest shutdown is a clean power-off: the change tracking state stays valid (same CTK UUID,
// change IDs keep working). cbtsim does not reset change tracking on a hard power-off either;
// the VM's last_power_off field tells which of the two ended the VM's last run.

import (
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	toolsRunning      = "running"       // installed; running whenever the VM is powered on
	toolsNotRunning   = "not_running"   // installed but not running (service stopped, guest hung at boot, ...)
	toolsNotInstalled = "not_installed" // no VMware Tools in the guest
)

var toolsSettings = map[string]bool{toolsRunning: true, toolsNotRunning: true, toolsNotInstalled: true}

// guestSpec is the guest part of a VM spec (POST /vms "guest") and of POST /vms/{moid}/guest.
type guestSpec struct {
	Tools           string   `json:"tools"`            // running, not_running, not_installed
	ShutdownSeconds *float64 `json:"shutdown_seconds"` // ShutdownGuest -> poweredOff delay
	Hung            *bool    `json:"hung"`             // ShutdownGuest accepted but never completes
}

func (g *guestSpec) validate() error {
	if g.Tools != "" && !toolsSettings[g.Tools] {
		return fmt.Errorf("guest.tools %q must be running, not_running or not_installed", g.Tools)
	}
	if g.ShutdownSeconds != nil && (*g.ShutdownSeconds < 0 || *g.ShutdownSeconds > 3600) {
		return fmt.Errorf("guest.shutdown_seconds must be 0-3600, not %v", *g.ShutdownSeconds)
	}
	return nil
}

// guestState is the simulator's per-VM guest model.
type guestState struct {
	Tools           string
	ShutdownSeconds float64
	Hung            bool

	shuttingDown bool
	shutdownGen  int    // bumped by every ShutdownGuest / power operation: stale timers do nothing
	lastPowerOff string // "guest_shutdown" or "power_off"
	shutdowns    int    // guest shutdowns completed
}

func (s *Sim) newGuestState(tools string) guestState {
	return guestState{Tools: tools, ShutdownSeconds: s.guestShutdownSeconds}
}

func (g *guestState) apply(spec *guestSpec) {
	if spec.Tools != "" {
		g.Tools = spec.Tools
	}
	if spec.ShutdownSeconds != nil {
		g.ShutdownSeconds = *spec.ShutdownSeconds
	}
	if spec.Hung != nil {
		g.Hung = *spec.Hung
	}
}

type guestJSON struct {
	Tools              string  `json:"tools"`
	ToolsStatus        string  `json:"tools_status"`
	ToolsRunningStatus string  `json:"tools_running_status"`
	GuestState         string  `json:"guest_state"`
	ShutdownSeconds    float64 `json:"shutdown_seconds"`
	Hung               bool    `json:"hung"`
	ShuttingDown       bool    `json:"shutting_down"`
	LastPowerOff       string  `json:"last_power_off,omitempty"`
	GuestShutdowns     int     `json:"guest_shutdowns"`
}

// guestView is what vCenter reports for the guest, derived from the setting and the power state.
type guestView struct {
	toolsStatus   types.VirtualMachineToolsStatus
	running       string // toolsRunningStatus
	versionStatus string // toolsVersionStatus / toolsVersionStatus2
	version       string
	guestState    string
}

func viewGuest(powerState types.VirtualMachinePowerState, g *guestState) guestView {
	v := guestView{
		toolsStatus:   types.VirtualMachineToolsStatusToolsNotRunning,
		running:       string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning),
		versionStatus: string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent),
		version:       "12352",
		guestState:    "notRunning",
	}
	if g.Tools == toolsNotInstalled {
		v.toolsStatus = types.VirtualMachineToolsStatusToolsNotInstalled
		v.versionStatus = string(types.VirtualMachineToolsVersionStatusGuestToolsNotInstalled)
		v.version = "0"
	}
	if powerState == types.VirtualMachinePowerStatePoweredOn && g.Tools == toolsRunning {
		v.toolsStatus = types.VirtualMachineToolsStatusToolsOk
		v.running = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		v.guestState = "running"
		if g.shuttingDown {
			v.guestState = "shuttingDown"
		}
	}
	return v
}

func (s *Sim) describeGuest(vm *simulator.VirtualMachine, st *vmState) guestJSON {
	g := &st.guest
	v := viewGuest(vm.Runtime.PowerState, g)
	return guestJSON{Tools: g.Tools, ToolsStatus: string(v.toolsStatus), ToolsRunningStatus: v.running,
		GuestState: v.guestState, ShutdownSeconds: g.ShutdownSeconds, Hung: g.Hung, ShuttingDown: g.shuttingDown,
		LastPowerOff: g.lastPowerOff, GuestShutdowns: g.shutdowns}
}

// syncGuest publishes the guest properties for the current power state. VM lock and s.mu held.
func (s *Sim) syncGuest(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		st.guest.shuttingDown = false
	}
	v := viewGuest(vm.Runtime.PowerState, &st.guest)
	ctx.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsStatus", Val: v.toolsStatus},
		{Name: "guest.toolsRunningStatus", Val: v.running},
		{Name: "guest.toolsVersionStatus", Val: v.versionStatus},
		{Name: "guest.toolsVersionStatus2", Val: v.versionStatus},
		{Name: "guest.toolsVersion", Val: v.version},
		{Name: "guest.guestState", Val: v.guestState},
		{Name: "summary.guest.toolsStatus", Val: v.toolsStatus},
		{Name: "summary.guest.toolsRunningStatus", Val: v.running},
		{Name: "summary.guest.toolsVersionStatus", Val: v.versionStatus},
		{Name: "summary.guest.toolsVersionStatus2", Val: v.versionStatus},
	})
}

func toolsUnavailable() *vimErr {
	return &vimErr{&types.ToolsUnavailable{},
		"Cannot complete operation because VMware Tools is not running in this virtual machine."}
}

func invalidPowerState(want, have types.VirtualMachinePowerState) *vimErr {
	return &vimErr{&types.InvalidPowerState{RequestedState: want, ExistingState: have},
		fmt.Sprintf("The attempted operation cannot be performed in the current state (%s).", have)}
}

// ShutdownGuest asks the guest to shut down. Like vCenter it returns at once; the VM reaches
// poweredOff after the guest's shutdown delay (never for a hung guest).
func (p *proxy) ShutdownGuest(ctx *simulator.Context, req *types.ShutdownGuest) soap.HasFault {
	body := &methods.ShutdownGuestBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	ctx.WithLock(vm, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		st := s.vmState(vm)
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			verr = invalidPowerState(types.VirtualMachinePowerStatePoweredOn, vm.Runtime.PowerState)
			return
		}
		if st.guest.Tools != toolsRunning {
			verr = toolsUnavailable()
			return
		}
		if st.guest.shuttingDown {
			return // already on its way down; a second request changes nothing
		}
		st.guest.shuttingDown = true
		st.guest.shutdownGen++
		s.syncGuest(ctx, vm, st)
		s.scheduleShutdown(vm, st)
	})
	if verr != nil {
		log.Printf("ShutdownGuest vm=%s: %T %s", vm.Self.Value, verr.Fault, verr.Msg)
		body.Fault_ = verr.soap()
		return body
	}
	body.Res = &types.ShutdownGuestResponse{}
	return body
}

// scheduleShutdown arms the completion of a guest shutdown. VM lock and s.mu held.
func (s *Sim) scheduleShutdown(vm *simulator.VirtualMachine, st *vmState) {
	moid, gen := vm.Self.Value, st.guest.shutdownGen
	if st.guest.Hung {
		log.Printf("vm %s: guest shutdown requested; the guest is hung and will not power off", moid)
		return
	}
	delay := time.Duration(st.guest.ShutdownSeconds * float64(time.Second))
	log.Printf("vm %s: guest shutdown requested; powering off in %s", moid, delay)
	time.AfterFunc(delay, func() { s.completeShutdown(moid, gen) })
}

// completeShutdown powers the VM off at the end of a guest shutdown: no task, as in vCenter.
func (s *Sim) completeShutdown(moid string, gen int) {
	vm := s.vmByMoid(moid)
	if vm == nil {
		return
	}
	ctx := s.newCtx()
	ctx.WithLock(vm, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		st := s.vms[moid]
		if st == nil || !st.guest.shuttingDown || st.guest.shutdownGen != gen || st.guest.Hung {
			return // cancelled (power-off, power cycle), superseded, or hung meanwhile
		}
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			st.guest.shuttingDown = false
			return
		}
		ctx.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
			{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
			{Name: "summary.runtime.bootTime", Val: nil},
		})
		st.guest.shuttingDown = false
		st.guest.lastPowerOff = "guest_shutdown"
		st.guest.shutdowns++
		s.syncGuest(ctx, vm, st)
		log.Printf("vm %s: guest shut down cleanly (poweredOff)", moid)
	})
}

// PowerOffVMTask is a hard power-off: it cancels a pending guest shutdown.
func (p *proxy) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	body := &methods.PowerOffVM_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, "powerOff", func() (types.AnyType, *vimErr) {
			inner := vm.PowerOffVMTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.PowerOffVM_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			st := s.vmState(vm)
			st.guest.shutdownGen++
			st.guest.lastPowerOff = "power_off"
			s.syncGuest(ctx, vm, st)
			return nil, nil
		})
	})
	body.Res = &types.PowerOffVM_TaskResponse{Returnval: ref}
	return body
}

// apiGuest changes the guest settings of a VM: POST /vms/{moid}/guest.
func (s *Sim) apiGuest(r *http.Request) (any, error) {
	var spec guestSpec
	if err := decodeBody(r, &spec); err != nil {
		return nil, err
	}
	if err := spec.validate(); err != nil {
		return nil, badRequest("%v", err)
	}
	var out vmJSON
	err := s.withVM(r.PathValue("moid"), func(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		wasHung := st.guest.Hung
		st.guest.apply(&spec)
		if st.guest.shuttingDown && st.guest.Tools != toolsRunning {
			// Tools stopped while the guest was going down: the request is lost, the guest keeps running
			st.guest.shuttingDown = false
			st.guest.shutdownGen++
		}
		if st.guest.shuttingDown && wasHung && !st.guest.Hung {
			st.guest.shutdownGen++
			s.scheduleShutdown(vm, st) // the guest recovered: the pending shutdown completes
		}
		s.syncGuest(ctx, vm, st)
		log.Printf("vm %s: guest settings %+v", st.Moid, st.guest)
		out = s.describeVM(vm, st)
		return nil
	})
	return out, err
}
