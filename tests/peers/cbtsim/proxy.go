// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// SOAP method overrides. The registry Handler hook (hook.go) redirects selected
// VirtualMachine / VirtualMachineSnapshot methods to the proxy object below by rewriting
// the dispatch target; the request body keeps the original _this, so each method knows
// which VM or snapshot it was called on. Task methods run as one simulator task whose
// body calls the stock vcsim implementation (waiting for its internal task) and then
// applies change tracking semantics.

import (
	"fmt"
	"log"
	"reflect"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type nopLock struct{}

func (nopLock) Lock()   {}
func (nopLock) Unlock() {}

type proxy struct {
	nopLock
	Self types.ManagedObjectReference
	sim  *Sim
}

func (p *proxy) Reference() types.ManagedObjectReference { return p.Self }

// taskNames maps a task id to the info.name (the WSDL method name, which pyVmomi resolves
// to a method object; vcsim's own names such as "CreateSnapshotEx" do not resolve).
var taskNames = map[string]string{
	"createSnapshot":          "CreateSnapshot_Task",
	"createSnapshotEx":        "CreateSnapshotEx_Task",
	"removeSnapshot":          "RemoveSnapshot_Task",
	"removeAllSnapshots":      "RemoveAllSnapshots_Task",
	"revertToSnapshot":        "RevertToSnapshot_Task",
	"revertToCurrentSnapshot": "RevertToCurrentSnapshot_Task",
	"reconfigVm":              "ReconfigVM_Task",
	"powerOn":                 "PowerOnVM_Task",
	"powerOff":                "PowerOffVM_Task",
	"destroy":                 "Destroy_Task",
}

var taskManagerRef = types.ManagedObjectReference{Type: "TaskManager", Value: "TaskManager"}

// startTask creates and runs a task on the VM. exec runs asynchronously with the VM lock
// held on behalf of ctx (shared with any stock vcsim task it starts).
func (s *Sim) startTask(ctx *simulator.Context, vm *simulator.VirtualMachine, name string,
	exec func() (types.AnyType, *vimErr)) types.ManagedObjectReference {
	t := simulator.CreateTask(vm, name, nil)
	if n, ok := taskNames[name]; ok {
		t.Info.Name = n
	}
	ctx.Map.Put(t)
	ctx.Map.AtomicUpdate(ctx, t, []types.PropertyChange{
		{Name: "info.key", Val: t.Self.Value},
		{Name: "info.task", Val: t.Self},
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
	})
	delay, _ := ctx.Context.Value(delayKey{}).(*faultRule)
	var unlock func()
	if delay == nil {
		unlock = ctx.Map.AcquireLock(ctx, vm)
	} else {
		ctx.Map.AtomicUpdate(ctx, t, []types.PropertyChange{
			{Name: "info.state", Val: types.TaskInfoStateQueued},
			{Name: "info.cancelable", Val: delay.Cancelable},
		})
		s.setCancel(t.Self.Value, delay.Cancelable)
	}
	go func() {
		if delay != nil {
			// held back by a task_delay rule: queued (the VM not locked), then run unless cancelled
			if s.waitUnlessCancelled(t, time.Duration(delay.DelayMs)*time.Millisecond) {
				s.forgetCancel(t.Self.Value)
				log.Printf("task %s %s on %s cancelled while queued: nothing done", t.Self.Value, name, vm.Self.Value)
				return // CancelTask has already ended it (error RequestCanceled)
			}
			s.setCancel(t.Self.Value, false) // running tasks are not cancelable
			defer s.forgetCancel(t.Self.Value)
			ctx.Map.AtomicUpdate(ctx, t, []types.PropertyChange{
				{Name: "info.state", Val: types.TaskInfoStateRunning},
				{Name: "info.cancelable", Val: false},
			})
			unlock = ctx.Map.AcquireLock(ctx, vm)
		}
		res, verr := func() (r types.AnyType, e *vimErr) {
			defer func() {
				if p := recover(); p != nil {
					log.Printf("task %s %s panicked: %v", t.Self.Value, name, p)
					e = &vimErr{&types.SystemError{Reason: fmt.Sprint(p)}, fmt.Sprintf("A general system error occurred: %v", p)}
				}
			}()
			return exec()
		}()
		unlock()
		state := types.TaskInfoStateSuccess
		var fault any
		if verr != nil {
			state = types.TaskInfoStateError
			fault = types.LocalizedMethodFault{Fault: verr.Fault, LocalizedMessage: verr.Msg}
			log.Printf("task %s %s on %s failed: %T %s", t.Self.Value, name, vm.Self.Value, verr.Fault, verr.Msg)
		}
		ctx.Map.AtomicUpdate(ctx, t, []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
			{Name: "info.result", Val: res},
			{Name: "info.error", Val: fault},
		})
	}()
	return t.Self
}

// setCancel records whether CancelTask may end the task ref (false: the hook refuses it).
func (s *Sim) setCancel(ref string, cancelable bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.noCancel == nil {
		s.noCancel = map[string]bool{}
	}
	s.noCancel[ref] = !cancelable
}

func (s *Sim) forgetCancel(ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.noCancel, ref)
}

func (s *Sim) refusesCancel(ref string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.noCancel[ref]
}

// waitUnlessCancelled waits d, or less when CancelTask ends the task; true if it did.
func (s *Sim) waitUnlessCancelled(t *simulator.Task, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		cancelled := false
		s.registry().WithLock(&simulator.Context{}, t, func() { cancelled = t.Info.Cancelled })
		if cancelled {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitInner waits for the task a stock vcsim method started, hides it from recentTask
// (the client sees only the outer task) and returns its outcome.
func (s *Sim) waitInner(ctx *simulator.Context, vm *simulator.VirtualMachine, body soap.HasFault,
	ref func() types.ManagedObjectReference) (types.AnyType, *vimErr) {
	if f := body.Fault(); f != nil {
		return nil, faultFromSoap(f)
	}
	r := ref()
	t, ok := ctx.Map.Get(r).(*simulator.Task)
	if !ok {
		return nil, &vimErr{&types.SystemError{Reason: "internal task vanished"}, "A general system error occurred: internal task vanished"}
	}
	t.Wait()
	info := t.Info
	s.hideTask(ctx, vm, r)
	if info.Error != nil {
		msg := strings.TrimPrefix(info.Error.LocalizedMessage, "*types.")
		return nil, &vimErr{info.Error.Fault, msg}
	}
	return info.Result, nil
}

func (s *Sim) hideTask(ctx *simulator.Context, vm *simulator.VirtualMachine, ref types.ManagedObjectReference) {
	filter := func(in []types.ManagedObjectReference) []types.ManagedObjectReference {
		out := make([]types.ManagedObjectReference, 0, len(in))
		for _, r := range in {
			if r != ref {
				out = append(out, r)
			}
		}
		return out
	}
	ctx.Update(vm, []types.PropertyChange{{Name: "recentTask", Val: filter(vm.RecentTask)}})
	if tm, ok := ctx.Map.Get(taskManagerRef).(*simulator.TaskManager); ok {
		ctx.WithLock(tm, func() {
			ctx.Update(tm, []types.PropertyChange{{Name: "recentTask", Val: filter(tm.RecentTask)}})
		})
	}
	ctx.Map.Remove(ctx, ref)
}

func (p *proxy) vm(ctx *simulator.Context, ref types.ManagedObjectReference) (*simulator.VirtualMachine, *vimErr) {
	vm := p.sim.findVM(ctx, ref)
	if vm == nil {
		return nil, objectNotFound(ref)
	}
	return vm, nil
}

// ---------------------------------------------------------------------------------------
// QueryChangedDiskAreas

func (p *proxy) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	var res *pageResult
	ctx.WithLock(vm, func() {
		p.sim.mu.Lock()
		defer p.sim.mu.Unlock()
		res, verr = p.sim.qcda(ctx, vm, req)
	})
	snap := "-"
	if req.Snapshot != nil {
		snap = req.Snapshot.Value
	}
	if verr != nil {
		log.Printf("QueryChangedDiskAreas vm=%s snapshot=%s key=%d start=%d changeId=%q: %T %s",
			vm.Self.Value, snap, req.DeviceKey, req.StartOffset, req.ChangeId, verr.Fault, verr.Msg)
		body.Fault_ = verr.soap()
		return body
	}
	info := types.DiskChangeInfo{StartOffset: res.StartOffset, Length: res.Length}
	for _, a := range res.Areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.Start, Length: a.Length})
	}
	log.Printf("QueryChangedDiskAreas vm=%s snapshot=%s key=%d start=%d changeId=%q: length=%d areas=%d",
		vm.Self.Value, snap, req.DeviceKey, req.StartOffset, req.ChangeId, res.Length, len(res.Areas))
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

// qcda computes one page. VM lock and s.mu held.
func (s *Sim) qcda(ctx *simulator.Context, vm *simulator.VirtualMachine, req *types.QueryChangedDiskAreas) (*pageResult, *vimErr) {
	st := s.vmState(vm)
	var snap *snapState
	if req.Snapshot != nil {
		obj, ok := ctx.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok || s.snaps[req.Snapshot.Value] == nil {
			return nil, objectNotFound(*req.Snapshot)
		}
		if obj.Vm != vm.Self {
			return nil, invalidArgument("snapshot")
		}
		snap = s.snaps[req.Snapshot.Value]
	}
	d := st.disks[req.DeviceKey]
	if d == nil {
		return nil, invalidArgument("deviceKey")
	}
	star := req.ChangeId == "*"
	var cUUID string
	var cSeq int64
	if !star {
		var ok bool
		cUUID, cSeq, ok = parseChangeID(req.ChangeId)
		if !ok {
			return nil, invalidArgument("changeId")
		}
	}
	capacity := d.Capacity
	var frozen *frozenDisk
	if snap != nil {
		frozen = snap.disks[d.Key]
		if frozen != nil {
			capacity = frozen.Capacity
		}
	}
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		return nil, invalidArgument("startOffset")
	}
	file := d.FileName
	if !st.CBT {
		return nil, fileFault(file, fmt.Sprintf("change tracking is not enabled on virtual machine %s", vm.Name))
	}
	if ok, why := vmSupport(vm); !ok {
		return nil, fileFault(file, why)
	}
	if ok, why := d.eligible(); !ok {
		return nil, fileFault(file, fmt.Sprintf("disk %d: %s", d.Key, why))
	}
	if !d.Active {
		if d.DiskOff {
			return nil, fileFault(file, fmt.Sprintf("disk %d: %s.ctkEnabled is FALSE", d.Key, d.CtkKey))
		}
		return nil, fileFault(file, fmt.Sprintf("disk %d: change tracking is not active yet (the VM needs a stun/unstun cycle such as a snapshot after enabling)", d.Key))
	}
	bs := s.cfg.BlockSize
	var areasIn func(lo, hi int64) []area
	var ioErr error
	if snap != nil {
		if frozen == nil {
			return nil, fileFault(file, fmt.Sprintf("disk %d is not part of snapshot %s", d.Key, snap.Moid))
		}
		if frozen.UUID == "" {
			return nil, fileFault(file, fmt.Sprintf("snapshot %s was taken before change tracking was active on disk %d", snap.Moid, d.Key))
		}
		if frozen.UUID != d.UUID {
			return nil, fileFault(file, fmt.Sprintf("change tracking of disk %d was reset after snapshot %s was taken", d.Key, snap.Moid))
		}
		if star {
			if frozen.StarFull {
				areasIn = func(lo, hi int64) []area { return []area{{Start: lo, Length: hi - lo}} }
			} else {
				areasIn = func(lo, hi int64) []area {
					as, err := allocatedAreas(frozen.Path, bs, frozen.Capacity, lo, hi)
					if err != nil {
						ioErr = err
					}
					return as
				}
			}
		} else {
			if cUUID != d.UUID {
				return nil, fileFault(file, fmt.Sprintf("changeId %q does not belong to the current change tracking UUID of disk %d", req.ChangeId, d.Key))
			}
			if cSeq < 1 || cSeq > frozen.Seq {
				return nil, fileFault(file, fmt.Sprintf("changeId %q is not older than snapshot %s (%s)", req.ChangeId, snap.Moid, frozen.ChangeID))
			}
			areasIn = s.dirtyAreas(d, cSeq, frozen.Seq-1, frozen.Capacity)
		}
	} else {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			return nil, fileFault(file, "no snapshot given: changes against the current disk state can only be computed for powered-off virtual machines")
		}
		if star {
			if d.StarFull || d.Path == "" {
				areasIn = func(lo, hi int64) []area { return []area{{Start: lo, Length: hi - lo}} }
			} else {
				areasIn = func(lo, hi int64) []area {
					as, err := allocatedAreas(d.Path, bs, d.Capacity, lo, hi)
					if err != nil {
						ioErr = err
					}
					return as
				}
			}
		} else {
			if cUUID != d.UUID {
				return nil, fileFault(file, fmt.Sprintf("changeId %q does not belong to the current change tracking UUID of disk %d", req.ChangeId, d.Key))
			}
			if cSeq < 1 || cSeq > d.Seq {
				return nil, fileFault(file, fmt.Sprintf("changeId %q is newer than the disk's current change ID %s", req.ChangeId, d.changeID()))
			}
			areasIn = s.dirtyAreas(d, cSeq, d.Seq, d.Capacity)
		}
	}
	res := makePage(req.StartOffset, capacity, s.cfg.PageWindow, s.cfg.PageLimit, areasIn)
	if ioErr != nil {
		return nil, fileFault(file, "reading allocation map: "+ioErr.Error())
	}
	return &res, nil
}

// dirtyAreas returns an areasIn function over the union of epochs from..to (inclusive).
func (s *Sim) dirtyAreas(d *diskState, from, to, capacity int64) func(lo, hi int64) []area {
	bs := s.cfg.BlockSize
	n := s.blocks(capacity)
	return func(lo, hi int64) []area {
		var srcs []*bitmap
		for e := from; e <= to; e++ {
			srcs = append(srcs, d.dirty[e])
		}
		u := unionRange(n, srcs, lo/bs, (hi-1)/bs)
		return bitmapAreas(u, bs, lo, hi)
	}
}

// ---------------------------------------------------------------------------------------
// snapshots

func (p *proxy) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	ex := &types.CreateSnapshotEx_Task{This: req.This, Name: req.Name, Description: req.Description, Memory: req.Memory}
	if req.Quiesce {
		ex.QuiesceSpec = &types.VirtualMachineGuestQuiesceSpec{}
	}
	body := &methods.CreateSnapshot_TaskBody{}
	ref, verr := p.sim.createSnapshot(ctx, req.This, "createSnapshot", ex)
	if verr != nil {
		body.Fault_ = verr.soap()
	} else {
		body.Res = &types.CreateSnapshot_TaskResponse{Returnval: ref}
	}
	return body
}

func (p *proxy) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	body := &methods.CreateSnapshotEx_TaskBody{}
	ref, verr := p.sim.createSnapshot(ctx, req.This, "createSnapshotEx", req)
	if verr != nil {
		body.Fault_ = verr.soap()
	} else {
		body.Res = &types.CreateSnapshotEx_TaskResponse{Returnval: ref}
	}
	return body
}

func (s *Sim) createSnapshot(ctx *simulator.Context, vmRef types.ManagedObjectReference, name string,
	req *types.CreateSnapshotEx_Task) (types.ManagedObjectReference, *vimErr) {
	vm := s.findVM(ctx, vmRef)
	if vm == nil {
		return types.ManagedObjectReference{}, objectNotFound(vmRef)
	}
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, name, func() (types.AnyType, *vimErr) {
			if req.QuiesceSpec != nil && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				s.mu.Lock()
				tools := s.vmState(vm).guest.Tools
				s.mu.Unlock()
				if tools != toolsRunning {
					return nil, toolsUnavailable() // quiescing needs VMware Tools in the guest
				}
			}
			token, verr := s.prepareSnapshot(ctx, vm)
			if verr != nil {
				return nil, verr
			}
			body := vm.CreateSnapshotExTask(ctx, req)
			res, verr := s.waitInner(ctx, vm, body, func() types.ManagedObjectReference {
				return body.(*methods.CreateSnapshotEx_TaskBody).Res.Returnval
			})
			if verr != nil {
				s.abortSnapshot(token, vm.Self.Value)
				return nil, verr
			}
			snapRef := res.(types.ManagedObjectReference)
			s.bindSnapshot(token, snapRef, vm, req.Name)
			return snapRef, nil
		})
	})
	return ref, nil
}

// prepareSnapshot is the stun part of a snapshot: activate pending tracking, hand out the
// snapshot's change IDs, freeze the disks and publish the change IDs so the snapshot's
// config copy carries them.
func (s *Sim) prepareSnapshot(ctx *simulator.Context, vm *simulator.VirtualMachine) (int, *vimErr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.vmState(vm)
	activated := s.stun(vm, st)
	s.freezeSeq++
	token := s.freezeSeq
	frozen := map[int32]*frozenDisk{}
	for _, k := range st.sortedKeys() {
		d := st.disks[k]
		if !d.inSnapshot() {
			continue
		}
		fd := &frozenDisk{Key: k, Capacity: d.Capacity, FileName: d.FileName}
		if d.Active {
			if !activated[k] {
				s.issue(d)
			}
			fd.ChangeID, fd.UUID, fd.Seq, fd.StarFull = d.changeID(), d.UUID, d.Seq, d.StarFull
		}
		if d.Path != "" {
			fd.Path = fmt.Sprintf("%s/frozen/%s/f%d-%d.img", s.stateDir, st.Moid, token, k)
			if err := s.freezeDisk(d, fd, token); err != nil {
				for _, f := range frozen {
					s.retireFrozen(st.Moid, f)
				}
				return 0, fileFault(d.FileName, "creating the snapshot copy: "+err.Error())
			}
		}
		frozen[k] = fd
	}
	s.pending[token] = frozen
	s.publish(ctx, vm, st)
	return token, nil
}

func (s *Sim) abortSnapshot(token int, vmMoid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.pending[token] {
		s.retireFrozen(vmMoid, f)
	}
	delete(s.pending, token)
}

func (s *Sim) bindSnapshot(token int, ref types.ManagedObjectReference, vm *simulator.VirtualMachine, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snaps[ref.Value] = &snapState{Moid: ref.Value, VM: vm.Self.Value, Name: name, Time: time.Now(), disks: s.pending[token]}
	delete(s.pending, token)
	log.Printf("snapshot %s (%q) of %s created", ref.Value, name, vm.Self.Value)
}

// dropSnapshots forgets snapshots, stopping their exports and deleting their frozen copies. s.mu held.
func (s *Sim) dropSnapshots(refs []string) {
	for _, r := range refs {
		ss := s.snaps[r]
		if ss == nil {
			continue
		}
		s.stopExportsWhere(func(e *export) bool { return e.Snapshot == r })
		for _, f := range ss.disks {
			s.retireFrozen(ss.VM, f) // the disk's newest frozen copy is kept as its spare
		}
		delete(s.snaps, r)
		log.Printf("snapshot %s of %s removed (frozen copies dropped)", r, ss.VM)
	}
}

func snapshotDescendants(ctx *simulator.Context, ref types.ManagedObjectReference) []string {
	out := []string{ref.Value}
	if obj, ok := ctx.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
		for _, c := range obj.ChildSnapshot {
			out = append(out, snapshotDescendants(ctx, c)...)
		}
	}
	return out
}

func (p *proxy) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	body := &methods.RemoveSnapshot_TaskBody{}
	snap, ok := ctx.Map.Get(req.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		body.Fault_ = objectNotFound(req.This).soap()
		return body
	}
	vm := p.sim.findVM(ctx, snap.Vm)
	if vm == nil {
		body.Fault_ = objectNotFound(snap.Vm).soap()
		return body
	}
	s := p.sim
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, "removeSnapshot", func() (types.AnyType, *vimErr) {
			drop := []string{req.This.Value}
			if req.RemoveChildren {
				drop = snapshotDescendants(ctx, req.This)
			}
			inner := snap.RemoveSnapshotTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.RemoveSnapshot_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.dropSnapshots(drop)
			st := s.vmState(vm)
			s.stun(vm, st)
			s.publish(ctx, vm, st)
			return nil, nil
		})
	})
	body.Res = &types.RemoveSnapshot_TaskResponse{Returnval: ref}
	return body
}

func (p *proxy) RemoveAllSnapshotsTask(ctx *simulator.Context, req *types.RemoveAllSnapshots_Task) soap.HasFault {
	body := &methods.RemoveAllSnapshots_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, "removeAllSnapshots", func() (types.AnyType, *vimErr) {
			inner := vm.RemoveAllSnapshotsTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.RemoveAllSnapshots_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			var drop []string
			for r, ss := range s.snaps {
				if ss.VM == vm.Self.Value {
					drop = append(drop, r)
				}
			}
			s.dropSnapshots(drop)
			st := s.vmState(vm)
			s.stun(vm, st)
			s.publish(ctx, vm, st)
			return nil, nil
		})
	})
	body.Res = &types.RemoveAllSnapshots_TaskResponse{Returnval: ref}
	return body
}

// revertDisks restores the live disks from a snapshot's frozen copies. Blocks that may
// differ are marked changed so incremental queries never miss the revert. s.mu held.
func (s *Sim) revertDisks(vm *simulator.VirtualMachine, st *vmState, ss *snapState) *vimErr {
	for _, k := range st.sortedKeys() {
		d := st.disks[k]
		fd := ss.disks[k]
		if fd == nil || fd.Path == "" || d.Path == "" {
			continue
		}
		if err := restoreFrom(fd.Path, d.Path, d.Capacity); err != nil {
			s.forgetSpare(d)
			return fileFault(d.FileName, "reverting the disk: "+err.Error())
		}
		if fd.gen != 0 && fd.gen == d.freezeGen {
			// the live disk is now exactly the newest frozen copy
			d.sinceFreeze = newBitmap(s.blocks(d.Capacity))
			d.liveStamp = stampOf(d.Path)
		} else {
			s.forgetSpare(d) // what differs from the newest frozen copy is not known: full copy next
		}
		if !d.Active {
			continue
		}
		cur := d.dirty[d.Seq]
		if fd.UUID == d.UUID && fd.Seq >= 1 {
			for e := fd.Seq; e <= d.Seq; e++ {
				if b := d.dirty[e]; b != nil && b != cur {
					for i := range b.words {
						cur.words[i] |= b.words[i]
					}
				}
			}
		} else {
			cur.setRange(0, s.blocks(d.Capacity)-1)
		}
	}
	return nil
}

func (s *Sim) revert(ctx *simulator.Context, vm *simulator.VirtualMachine, snapRef types.ManagedObjectReference, taskID string,
	inner func() (soap.HasFault, func() types.ManagedObjectReference)) types.ManagedObjectReference {
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, taskID, func() (types.AnyType, *vimErr) {
			body, get := inner()
			if _, verr := s.waitInner(ctx, vm, body, get); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			st := s.vmState(vm)
			if ss := s.snaps[snapRef.Value]; ss != nil {
				if verr := s.revertDisks(vm, st, ss); verr != nil {
					return nil, verr
				}
			}
			s.stun(vm, st)
			s.publish(ctx, vm, st)
			log.Printf("vm %s reverted to snapshot %s", vm.Self.Value, snapRef.Value)
			return nil, nil
		})
	})
	return ref
}

func (p *proxy) RevertToSnapshotTask(ctx *simulator.Context, req *types.RevertToSnapshot_Task) soap.HasFault {
	body := &methods.RevertToSnapshot_TaskBody{}
	snap, ok := ctx.Map.Get(req.This).(*simulator.VirtualMachineSnapshot)
	if !ok {
		body.Fault_ = objectNotFound(req.This).soap()
		return body
	}
	vm := p.sim.findVM(ctx, snap.Vm)
	if vm == nil {
		body.Fault_ = objectNotFound(snap.Vm).soap()
		return body
	}
	ref := p.sim.revert(ctx, vm, req.This, "revertToSnapshot", func() (soap.HasFault, func() types.ManagedObjectReference) {
		b := snap.RevertToSnapshotTask(ctx, req)
		return b, func() types.ManagedObjectReference { return b.(*methods.RevertToSnapshot_TaskBody).Res.Returnval }
	})
	body.Res = &types.RevertToSnapshot_TaskResponse{Returnval: ref}
	return body
}

func (p *proxy) RevertToCurrentSnapshotTask(ctx *simulator.Context, req *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	body := &methods.RevertToCurrentSnapshot_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	var cur *types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
			c := *vm.Snapshot.CurrentSnapshot
			cur = &c
		}
	})
	if cur == nil {
		body.Fault_ = simulator.Fault("snapshot not found", &types.NotFound{})
		return body
	}
	ref := p.sim.revert(ctx, vm, *cur, "revertToCurrentSnapshot", func() (soap.HasFault, func() types.ManagedObjectReference) {
		b := vm.RevertToCurrentSnapshotTask(ctx, req)
		return b, func() types.ManagedObjectReference {
			return b.(*methods.RevertToCurrentSnapshot_TaskBody).Res.Returnval
		}
	})
	body.Res = &types.RevertToCurrentSnapshot_TaskResponse{Returnval: ref}
	return body
}

// ---------------------------------------------------------------------------------------
// reconfigure, power on, destroy

// ctkFromExtraConfig returns the VM-level ctkEnabled value a spec sets, if any.
func ctkFromExtraConfig(spec *types.VirtualMachineConfigSpec) (bool, bool) {
	for _, o := range spec.ExtraConfig {
		ov := o.GetOptionValue()
		if ov.Key == "ctkEnabled" {
			return strings.EqualFold(fmt.Sprint(ov.Value), "true"), true
		}
	}
	return false, false
}

func (p *proxy) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	body := &methods.ReconfigVM_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, "reconfigVm", func() (types.AnyType, *vimErr) {
			want := req.Spec.ChangeTrackingEnabled
			if want == nil {
				if v, ok := ctkFromExtraConfig(&req.Spec); ok {
					want = types.NewBool(v)
				}
			}
			if want != nil && *want {
				if ok, why := vmSupport(vm); !ok {
					f := &types.NotSupported{}
					f.FaultMessage = []types.LocalizableMessage{{Key: "com.vmware.cbtsim.changeTracking", Message: why}}
					return nil, &vimErr{f, "The operation is not supported on the object. " + why}
				}
			}
			inner := vm.ReconfigVMTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.ReconfigVM_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			st := s.vmState(vm)
			if want != nil {
				vm.Config.ChangeTrackingEnabled = types.NewBool(*want)
			}
			now := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
			switch {
			case now && !st.CBT:
				st.CBT = true
				st.SnapsAtEnable = vmHasSnapshots(vm)
				log.Printf("vm %s: change tracking enabled (powerState %s)", vm.Self.Value, vm.Runtime.PowerState)
				if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff {
					// no running VMX: the change takes effect at once
					s.stun(vm, st)
				}
			case !now && st.CBT:
				st.CBT = false
				for _, d := range st.disks {
					s.deactivate(d)
				}
				log.Printf("vm %s: change tracking disabled, tracking state dropped", vm.Self.Value)
			case now && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff:
				// disks re-enabled per disk (or hot-added) on a powered-off VM
				s.stun(vm, st)
			}
			s.publish(ctx, vm, st)
			return nil, nil
		})
	})
	body.Res = &types.ReconfigVM_TaskResponse{Returnval: ref}
	return body
}

func (p *proxy) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	body := &methods.PowerOnVM_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	var ref types.ManagedObjectReference
	var pre *soap.Fault
	ctx.WithLock(vm, func() {
		if vm.Config.Template {
			pre = simulator.Fault("cannot powerOn a template", &types.InvalidState{})
			return
		}
		ref = s.startTask(ctx, vm, "powerOn", func() (types.AnyType, *vimErr) {
			inner := vm.PowerOnVMTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.PowerOnVM_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.stopExportsWhere(func(e *export) bool { return e.VM == vm.Self.Value && e.Snapshot == "" })
			st := s.vmState(vm)
			st.guest.shutdownGen++
			s.syncGuest(ctx, vm, st)
			s.stun(vm, st)
			s.publish(ctx, vm, st)
			return nil, nil
		})
	})
	if pre != nil {
		body.Fault_ = pre
		return body
	}
	body.Res = &types.PowerOnVM_TaskResponse{Returnval: ref}
	return body
}

func (p *proxy) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	body := &methods.Destroy_TaskBody{}
	vm, verr := p.vm(ctx, req.This)
	if verr != nil {
		body.Fault_ = verr.soap()
		return body
	}
	s := p.sim
	moid := vm.Self.Value
	var ref types.ManagedObjectReference
	ctx.WithLock(vm, func() {
		ref = s.startTask(ctx, vm, "destroy", func() (types.AnyType, *vimErr) {
			inner := vm.DestroyTask(ctx, req)
			if _, verr := s.waitInner(ctx, vm, inner, func() types.ManagedObjectReference {
				return inner.(*methods.Destroy_TaskBody).Res.Returnval
			}); verr != nil {
				return nil, verr
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.stopExportsWhere(func(e *export) bool { return e.VM == moid })
			var drop []string
			for r, ss := range s.snaps {
				if ss.VM == moid {
					drop = append(drop, r)
				}
			}
			s.dropSnapshots(drop)
			if st := s.vms[moid]; st != nil {
				for _, d := range st.disks {
					s.forgetSpare(d)
				}
			}
			delete(s.vms, moid)
			log.Printf("vm %s destroyed", moid)
			return nil, nil
		})
	})
	body.Res = &types.Destroy_TaskResponse{Returnval: ref}
	return body
}

// ---------------------------------------------------------------------------------------
// registry handler: vcsim leaves runtime.faultToleranceState and runtime.recordReplayState
// empty, which pyVmomi cannot deserialize (an enum with no value), so every VM gets the
// values a real VM without FT / record-replay reports when it is registered.

func (p *proxy) PutObject(_ *simulator.Context, obj mo.Reference) {
	if t, ok := obj.(*simulator.Task); ok {
		t.Info.Name = wsdlTaskName(t.Info.Name)
		return
	}
	if vm, ok := obj.(*simulator.VirtualMachine); ok {
		if vm.Runtime.FaultToleranceState == "" {
			vm.Runtime.FaultToleranceState = types.VirtualMachineFaultToleranceStateNotConfigured
		}
		if vm.Runtime.RecordReplayState == "" {
			vm.Runtime.RecordReplayState = types.VirtualMachineRecordReplayStateInactive
		}
		vm.Summary.Runtime = vm.Runtime
	}
}

var vimTypes = types.TypeFunc()

// wsdlTaskName turns vcsim's task names ("PowerOn", "ReconfigVm", "CreateSnapshotEx") into
// the WSDL method names vCenter reports ("PowerOnVM_Task", ...), which pyVmomi resolves; an
// unresolvable name makes pyVim's WaitForTask fail while the task is still running.
func wsdlTaskName(name string) string {
	if name == "" || strings.HasSuffix(name, "_Task") {
		return name
	}
	for _, c := range []string{name + "_Task", strings.ReplaceAll(name, "Vm", "VM") + "_Task", name + "VM_Task"} {
		if _, ok := vimTypes(c); ok {
			return c
		}
	}
	return name
}

func (p *proxy) UpdateObject(*simulator.Context, mo.Reference, []types.PropertyChange) {}

func (p *proxy) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}

// ---------------------------------------------------------------------------------------
// Fetch (the PropertyCollector method pyVmomi uses to read one property). For an unset
// property (vm.snapshot of a VM without snapshots, for example) vcsim answers with a
// RetrievePropertiesEx response instead of an empty FetchResponse, which pyVmomi turns into
// an AttributeError; real vCenter returns no value (None in pyVmomi).

type fetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *fetchResponse `xml:"FetchResponse,omitempty"`
	Fault_ *soap.Fault    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

func (p *proxy) Fetch(ctx *simulator.Context, req any) soap.HasFault {
	pcRef := p.sim.model.ServiceContent.PropertyCollector
	var pc mo.Reference
	if ctx.Session != nil {
		pc = ctx.Session.Get(pcRef)
	}
	if pc == nil {
		pc = ctx.Map.Get(pcRef)
	}
	m := reflect.ValueOf(pc).MethodByName("Fetch")
	if !m.IsValid() {
		return &fetchBody{Fault_: simulator.Fault("Fetch is not available", &types.NotImplemented{})}
	}
	var res soap.HasFault
	ctx.WithLock(pc, func() {
		res = m.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(req)})[0].Interface().(soap.HasFault)
	})
	if _, ok := res.(*methods.RetrievePropertiesExBody); ok && res.Fault() == nil {
		return &fetchBody{Res: &fetchResponse{}}
	}
	return res
}
