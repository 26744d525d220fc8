// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// Simulator state: the govmomi vcsim model plus per-VM / per-disk change tracking state,
// snapshot frozen copies and the inventory set-up.

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// simConfig holds the QueryChangedDiskAreas tunables (changeable at runtime).
type simConfig struct {
	PageLimit  int   `json:"page_limit"`
	PageWindow int64 `json:"page_window"`
	BlockSize  int64 `json:"block_size"`
}

type writeRecord struct {
	Index         int    `json:"index"`
	Offset        int64  `json:"offset"`
	Length        int64  `json:"length"`
	Pattern       string `json:"pattern"`
	Seed          uint64 `json:"seed"`
	SHA256        string `json:"sha256,omitempty"`
	Tracked       bool   `json:"tracked"`
	CtkUUID       string `json:"ctk_uuid,omitempty"`
	AfterChangeID string `json:"after_change_id,omitempty"`
	Time          string `json:"time"`
}

// diskState is the simulator's view of one virtual disk of one VM.
type diskState struct {
	Key      int32
	Label    string
	FileName string // datastore path of the disk descriptor, e.g. "[LocalDS_0] vm/vm.vmdk"
	Path     string // local flat file ("" when the disk is not on the simulator's datastore)
	Capacity int64
	Backing  string // flat_ver2, flat_ver1, sparse_ver2, sparse_ver1, se_sparse, rdm, raw_disk_ver2, other
	Mode     string // backing diskMode
	RDMMode  string // physicalMode / virtualMode for RDM backings
	CtkKey   string // controller/unit prefix of the per-disk extraConfig key, e.g. "scsi0:1"
	DiskOff  bool   // "<CtkKey>.ctkEnabled" explicitly FALSE in extraConfig

	// change tracking
	Active   bool
	UUID     string
	Seq      int64
	dirty    map[int64]*bitmap // writes made after change ID UUID/seq was handed out
	StarFull bool              // "*" returns the whole disk (snapshots existed when CBT was enabled, or non-VMFS)

	writes []writeRecord

	// frozen copies (freeze.go)
	freezeGen   int       // token of the newest frozen copy of this disk (0: none)
	sinceFreeze *bitmap   // blocks of the live disk written since that copy was made (nil: unknown)
	spare       string    // that copy's file, kept after its snapshot was removed ("" if none)
	liveStamp   fileStamp // the live file's mtime/size after the simulator's last change to it
}

func (d *diskState) changeID() string {
	if !d.Active {
		return ""
	}
	return formatChangeID(d.UUID, d.Seq)
}

// eligible reports whether VMware can track this disk at all.
func (d *diskState) eligible() (bool, string) {
	switch d.Backing {
	case "flat_ver1", "sparse_ver1":
		return false, "Ver1 disk backings cannot be tracked"
	case "other":
		return false, "this disk backing type cannot be tracked"
	}
	if d.Backing == "rdm" && d.RDMMode == string(types.VirtualDiskCompatibilityModePhysicalMode) {
		return false, "physical-mode RDM disks cannot be tracked"
	}
	if strings.HasPrefix(d.Mode, "independent") {
		return false, fmt.Sprintf("independent disks (%s) cannot be tracked", d.Mode)
	}
	return true, ""
}

// inSnapshot reports whether a VM snapshot covers (freezes) this disk.
func (d *diskState) inSnapshot() bool {
	if strings.HasPrefix(d.Mode, "independent") {
		return false
	}
	if d.Backing == "rdm" && d.RDMMode == string(types.VirtualDiskCompatibilityModePhysicalMode) {
		return false
	}
	return true
}

type vmState struct {
	Moid          string
	disks         map[int32]*diskState
	CBT           bool // last applied config.changeTrackingEnabled
	SnapsAtEnable bool // the VM had snapshots when CBT was enabled
	guest         guestState
}

func (st *vmState) sortedKeys() []int32 {
	keys := make([]int32, 0, len(st.disks))
	for k := range st.disks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

type frozenDisk struct {
	Key      int32  `json:"key"`
	Path     string `json:"path"`
	Capacity int64  `json:"capacity"`
	ChangeID string `json:"change_id"`
	UUID     string `json:"-"`
	Seq      int64  `json:"-"`
	StarFull bool   `json:"-"`
	FileName string `json:"file"`

	Freeze        string  `json:"freeze,omitempty"`         // how the copy was made: full or incremental
	FreezeBytes   int64   `json:"freeze_bytes"`             // bytes copied to make it
	FreezeSeconds float64 `json:"freeze_seconds,omitempty"` // time taken
	gen           int     // the freeze token (see diskState.freezeGen)
}

type snapState struct {
	Moid  string
	VM    string
	Name  string
	Time  time.Time
	disks map[int32]*frozenDisk
}

// Sim is the CBT-capable vCenter simulator.
type Sim struct {
	mu sync.Mutex

	model  *simulator.Model
	client *vim25.Client // in-process client (no session faults, no HTTP)

	cfg        simConfig
	defaultCfg simConfig

	dsName   string
	dsDir    string
	dsType   string
	dsRef    types.ManagedObjectReference
	stateDir string
	sockDir  string
	nbdkit   string
	// bits per second per export (nbdkit rate filter); empty: unlimited
	exportRate string

	vms     map[string]*vmState
	snaps   map[string]*snapState
	pending map[int]map[int32]*frozenDisk

	rules    []*faultRule
	ruleSeq  int
	noCancel map[string]bool // tasks whose CancelTask is refused (task_delay rules)

	exports   map[string]*export
	exportSeq int
	writeSeq  int
	freezeSeq int

	proxyRef types.ManagedObjectReference

	defaultTools         string  // guest tools of the VMs the simulator creates (start-up, POST /vms)
	guestShutdownSeconds float64 // default ShutdownGuest -> poweredOff delay
}

// newCtx returns a fresh simulator context for work done outside a SOAP call (control API).
func (s *Sim) newCtx() *simulator.Context {
	c := *s.model.Service.Context
	c.Context = context.Background()
	return &c
}

func (s *Sim) registry() *simulator.Registry { return s.model.Map() }

func (s *Sim) blocks(capacity int64) int64 {
	return (capacity + s.cfg.BlockSize - 1) / s.cfg.BlockSize
}

// localPath maps a datastore path to the local flat file, or "" when the file is not on
// the simulator's datastore.
func (s *Sim) localPath(fileName string) string {
	var p object.DatastorePath
	if !p.FromString(fileName) || p.Datastore != s.dsName || p.Path == "" {
		return ""
	}
	return filepath.Join(s.dsDir, filepath.FromSlash(simulator.VirtualDiskBackingFileName(p.Path)))
}

func hwVersion(v string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "vmx-"))
	if err != nil {
		return 0
	}
	return n
}

// vmSupport reports whether the VM as a whole can use change tracking.
func vmSupport(vm *simulator.VirtualMachine) (bool, string) {
	if vm.Config == nil {
		return false, "the VM has no configuration"
	}
	if n := hwVersion(vm.Config.Version); n > 0 && n < 7 {
		return false, fmt.Sprintf("virtual hardware version %s is too old: change tracking needs vmx-07 or later", vm.Config.Version)
	}
	if !vm.Capability.ChangeTrackingSupported {
		return false, "capability.changeTrackingSupported is false for this VM"
	}
	return true, ""
}

func vmHasSnapshots(vm *simulator.VirtualMachine) bool {
	return vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) > 0
}

func extraConfigValue(vm *simulator.VirtualMachine, key string) (string, bool) {
	if vm.Config == nil {
		return "", false
	}
	for _, o := range vm.Config.ExtraConfig {
		if ov := o.GetOptionValue(); ov.Key == key {
			return fmt.Sprint(ov.Value), true
		}
	}
	return "", false
}

// setExtraConfig sets (or with value "" removes) a key in vm.Config.ExtraConfig.
// Returns true when something changed. The caller publishes the change with ctx.Update.
func setExtraConfig(vm *simulator.VirtualMachine, key, value string) bool {
	for i, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		if ov.Key != key {
			continue
		}
		if value == "" {
			vm.Config.ExtraConfig = slices.Delete(slices.Clone(vm.Config.ExtraConfig), i, i+1)
			return true
		}
		if fmt.Sprint(ov.Value) == value {
			return false
		}
		ec := slices.Clone(vm.Config.ExtraConfig)
		ec[i] = &types.OptionValue{Key: key, Value: value}
		vm.Config.ExtraConfig = ec
		return true
	}
	if value == "" {
		return false
	}
	vm.Config.ExtraConfig = append(slices.Clone(vm.Config.ExtraConfig), &types.OptionValue{Key: key, Value: value})
	return true
}

func classifyDisk(d *types.VirtualDisk) (backing, mode, rdm, fileName string) {
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		return "flat_ver2", b.DiskMode, "", b.FileName
	case *types.VirtualDiskSparseVer2BackingInfo:
		return "sparse_ver2", b.DiskMode, "", b.FileName
	case *types.VirtualDiskSeSparseBackingInfo:
		return "se_sparse", b.DiskMode, "", b.FileName
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		return "rdm", b.DiskMode, b.CompatibilityMode, b.FileName
	case *types.VirtualDiskFlatVer1BackingInfo:
		return "flat_ver1", b.DiskMode, "", b.FileName
	case *types.VirtualDiskSparseVer1BackingInfo:
		return "sparse_ver1", b.DiskMode, "", b.FileName
	case *types.VirtualDiskRawDiskVer2BackingInfo:
		return "raw_disk_ver2", "persistent", "", ""
	}
	return "other", "", "", ""
}

func setBackingChangeID(d *types.VirtualDisk, cid string) {
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		b.ChangeId = cid
	case *types.VirtualDiskSparseVer2BackingInfo:
		b.ChangeId = cid
	case *types.VirtualDiskSeSparseBackingInfo:
		b.ChangeId = cid
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		b.ChangeId = cid
	case *types.VirtualDiskRawDiskVer2BackingInfo:
		b.ChangeId = cid
	}
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

// vmState returns (creating if needed) the state of a VM and refreshes its disk list.
// Call with the VM lock held and s.mu held.
func (s *Sim) vmState(vm *simulator.VirtualMachine) *vmState {
	st := s.vms[vm.Self.Value]
	if st == nil {
		// VMs created by clients over SOAP have no guest OS, so no VMware Tools (as vcsim reports);
		// createVM sets the guest of the simulator's own VMs
		st = &vmState{Moid: vm.Self.Value, disks: map[int32]*diskState{}, guest: s.newGuestState(toolsNotInstalled)}
		if vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled {
			st.CBT = true
			st.SnapsAtEnable = vmHasSnapshots(vm)
		}
		s.vms[vm.Self.Value] = st
	}
	s.syncDisks(vm, st)
	return st
}

// syncDisks brings the disk states in line with vm.Config.Hardware.Device.
func (s *Sim) syncDisks(vm *simulator.VirtualMachine, st *vmState) {
	if vm.Config == nil {
		return
	}
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	prefix := map[int32]string{}
	for _, dev := range devices {
		switch c := dev.(type) {
		case types.BaseVirtualSCSIController:
			vc := c.GetVirtualSCSIController()
			prefix[vc.Key] = fmt.Sprintf("scsi%d", vc.BusNumber)
		case *types.VirtualAHCIController:
			prefix[c.Key] = fmt.Sprintf("sata%d", c.BusNumber)
		case *types.VirtualNVMEController:
			prefix[c.Key] = fmt.Sprintf("nvme%d", c.BusNumber)
		case *types.VirtualIDEController:
			prefix[c.Key] = fmt.Sprintf("ide%d", c.BusNumber)
		}
	}
	seen := map[int32]bool{}
	for _, dev := range devices {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		seen[disk.Key] = true
		backing, mode, rdm, fileName := classifyDisk(disk)
		capacity := diskCapacity(disk)
		d := st.disks[disk.Key]
		if d == nil {
			d = &diskState{Key: disk.Key}
			st.disks[disk.Key] = d
		}
		d.Backing, d.Mode, d.RDMMode, d.FileName = backing, mode, rdm, fileName
		d.Label = devices.Name(disk)
		if disk.DeviceInfo != nil && disk.DeviceInfo.GetDescription().Label != "" {
			d.Label = disk.DeviceInfo.GetDescription().Label
		}
		d.CtkKey = ""
		if p, ok := prefix[disk.ControllerKey]; ok && disk.UnitNumber != nil {
			d.CtkKey = fmt.Sprintf("%s:%d", p, *disk.UnitNumber)
		}
		d.Path = s.localPath(fileName)
		if capacity != d.Capacity {
			if d.Path != "" {
				if err := ensureSparseFile(d.Path, capacity); err != nil {
					log.Printf("disk %s key %d: cannot size %s: %v", st.Moid, d.Key, d.Path, err)
				}
			}
			for _, b := range d.dirty {
				b.grow(s.blocks(capacity))
			}
			if d.Capacity != 0 {
				s.forgetSpare(d) // resized: the next frozen copy is a full one
			}
			d.Capacity = capacity
		}
		d.DiskOff = false
		if d.CtkKey != "" {
			if v, ok := extraConfigValue(vm, d.CtkKey+".ctkEnabled"); ok && strings.EqualFold(v, "false") {
				d.DiskOff = true
			}
		}
		if d.DiskOff && d.Active {
			s.deactivate(d)
		}
		if ok, _ := d.eligible(); !ok && d.Active {
			s.deactivate(d)
		}
	}
	for k, d := range st.disks {
		if !seen[k] {
			s.forgetSpare(d)
			delete(st.disks, k)
		}
	}
}

func (s *Sim) trackable(vm *simulator.VirtualMachine, st *vmState, d *diskState) bool {
	if !st.CBT || d.DiskOff {
		return false
	}
	if ok, _ := vmSupport(vm); !ok {
		return false
	}
	ok, _ := d.eligible()
	return ok
}

// activate starts change tracking on a disk with a new UUID and hands out its first change ID.
func (s *Sim) activate(d *diskState, starFull bool) {
	d.Active = true
	d.UUID = newCtkUUID()
	d.Seq = 0
	d.dirty = map[int64]*bitmap{}
	d.StarFull = starFull
	s.issue(d)
}

// issue hands out the next change ID of an active disk; later writes belong to it.
func (s *Sim) issue(d *diskState) string {
	d.Seq++
	d.dirty[d.Seq] = newBitmap(s.blocks(d.Capacity))
	return d.changeID()
}

func (s *Sim) deactivate(d *diskState) {
	d.Active = false
	d.UUID = ""
	d.Seq = 0
	d.dirty = nil
	d.StarFull = false
}

// stun models a stun/unstun cycle (power on, snapshot create/remove/revert): disks whose
// tracking was enabled but not yet active become active. Returns the keys activated.
func (s *Sim) stun(vm *simulator.VirtualMachine, st *vmState) map[int32]bool {
	activated := map[int32]bool{}
	starFull := st.SnapsAtEnable || vmHasSnapshots(vm) || !strings.EqualFold(s.dsType, "VMFS")
	for _, k := range st.sortedKeys() {
		d := st.disks[k]
		if !d.Active && s.trackable(vm, st, d) {
			s.activate(d, starFull)
			activated[k] = true
			log.Printf("vm %s disk %d: change tracking active, change ID %s", st.Moid, k, d.changeID())
		}
	}
	return activated
}

// publish copies the tracking state into the VM's current disk backings (changeId) and the
// ctkEnabled extraConfig keys, and notifies property collectors. VM lock and s.mu held.
func (s *Sim) publish(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) {
	if vm.Config == nil {
		return
	}
	for _, dev := range vm.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok {
			continue
		}
		if d := st.disks[disk.Key]; d != nil {
			setBackingChangeID(disk, d.changeID())
		}
	}
	if st.CBT {
		setExtraConfig(vm, "ctkEnabled", "TRUE")
	} else {
		setExtraConfig(vm, "ctkEnabled", "")
	}
	for _, k := range st.sortedKeys() {
		d := st.disks[k]
		if d.CtkKey == "" {
			continue
		}
		key := d.CtkKey + ".ctkEnabled"
		switch {
		case d.DiskOff && st.CBT:
			// keep the explicit FALSE the user set
		case d.Active:
			setExtraConfig(vm, key, "TRUE")
		case !st.CBT:
			setExtraConfig(vm, key, "")
		}
	}
	ctx.Update(vm, []types.PropertyChange{
		{Name: "config.hardware.device", Val: vm.Config.Hardware.Device},
		{Name: "config.extraConfig", Val: vm.Config.ExtraConfig},
		{Name: "config.changeTrackingEnabled", Val: st.CBT},
	})
}

// markWrite records a write in the current epoch of an active disk.
func (s *Sim) markWrite(d *diskState, offset, length int64) {
	if !d.Active || length <= 0 {
		return
	}
	b := d.dirty[d.Seq]
	b.setRange(offset/s.cfg.BlockSize, (offset+length-1)/s.cfg.BlockSize)
}

// ---------------------------------------------------------------------------------------
// inventory

func (s *Sim) findVM(ctx *simulator.Context, ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := ctx.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

func (s *Sim) vmByMoid(moid string) *simulator.VirtualMachine {
	vm, _ := s.registry().Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: moid}).(*simulator.VirtualMachine)
	return vm
}

func (s *Sim) allVMs() []*simulator.VirtualMachine {
	var out []*simulator.VirtualMachine
	for _, e := range s.registry().All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			out = append(out, vm)
		}
	}
	slices.SortFunc(out, func(a, b *simulator.VirtualMachine) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// setupDatastore creates the local datastore on every host and gives it the configured type.
func (s *Sim) setupDatastore(ctx context.Context) error {
	if err := os.MkdirAll(s.dsDir, 0o755); err != nil {
		return err
	}
	var ref types.ManagedObjectReference
	for _, h := range s.registry().All("HostSystem") {
		host := object.NewHostSystem(s.client, h.Reference())
		dss, err := host.ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return err
		}
		ds, err := dss.CreateLocalDatastore(ctx, s.dsName, s.dsDir)
		if err != nil {
			return fmt.Errorf("create datastore %s on %s: %w", s.dsName, h.Reference().Value, err)
		}
		if ref.Value == "" {
			ref = ds.Reference() // later hosts mount the same datastore (their reply lacks the moid)
		}
	}
	s.dsRef = ref
	ds := s.registry().Get(ref).(*simulator.Datastore)
	base := *ds.Info.GetDatastoreInfo()
	switch strings.ToUpper(s.dsType) {
	case "VMFS":
		ds.Summary.Type = "VMFS"
		ds.Info = &types.VmfsDatastoreInfo{
			DatastoreInfo:          base,
			MaxPhysicalRDMFileSize: 64 << 40,
			MaxVirtualRDMFileSize:  62 << 40,
			Vmfs: &types.HostVmfsVolume{
				HostFileSystemVolume: types.HostFileSystemVolume{Type: "VMFS", Name: s.dsName, Capacity: ds.Summary.Capacity},
				BlockSizeMb:          1,
				BlockSize:            1024,
				MaxBlocks:            63963136,
				MajorVersion:         6,
				Version:              "6.82",
				Uuid:                 "5f0c6a1e-cb75a3a0-0d2b-000c29cb7511",
				Extent:               []types.HostScsiDiskPartition{{DiskName: "mpx.vmhba0:C0:T1:L0", Partition: 1}},
				Local:                types.NewBool(true),
				Ssd:                  types.NewBool(true),
			},
		}
	case "NFS", "NFS41":
		ds.Summary.Type = strings.ToUpper(s.dsType)
		ds.Info = &types.NasDatastoreInfo{
			DatastoreInfo: base,
			Nas: &types.HostNasVolume{
				HostFileSystemVolume: types.HostFileSystemVolume{Type: ds.Summary.Type, Name: s.dsName, Capacity: ds.Summary.Capacity},
				RemoteHost:           "127.0.0.1",
				RemotePath:           s.dsDir,
			},
		}
	default:
		ds.Summary.Type = s.dsType
	}
	return nil
}

// ---------------------------------------------------------------------------------------
// VM creation (control API and start-up inventory)

type fillSpec struct {
	RandomPercent float64    `json:"random_percent"`
	Chunk         int64      `json:"chunk"`
	Seed          uint64     `json:"seed"`
	ZeroRegions   [][2]int64 `json:"zero_regions"`
}

type diskSpec struct {
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"`    // persistent (default), independent_persistent, independent_nonpersistent
	RDM     string    `json:"rdm"`     // "", "physical", "virtual"
	Backing string    `json:"backing"` // flat_ver2 (default) or flat_ver1
	Thin    *bool     `json:"thin"`
	Fill    *fillSpec `json:"fill"`
}

type vmSpec struct {
	Name                    string     `json:"name"`
	PowerState              string     `json:"power_state"` // poweredOn (default) or poweredOff
	HWVersion               string     `json:"hw_version"`  // default vmx-19
	ChangeTrackingSupported *bool      `json:"change_tracking_supported"`
	CBTEnabled              bool       `json:"cbt_enabled"`
	GuestID                 string     `json:"guest_id"`
	Guest                   *guestSpec `json:"guest"`
	Disks                   []diskSpec `json:"disks"`
}

func (s *Sim) validateVMSpec(spec *vmSpec) error {
	if spec.Name == "" {
		return fmt.Errorf("name is required")
	}
	if len(spec.Disks) == 0 {
		return fmt.Errorf("disks must list at least one disk")
	}
	if len(spec.Disks) > 15 {
		return fmt.Errorf("at most 15 disks per VM (one SCSI controller)")
	}
	if spec.HWVersion == "" {
		spec.HWVersion = "vmx-19"
	}
	if hwVersion(spec.HWVersion) == 0 {
		return fmt.Errorf("hw_version %q must look like vmx-NN", spec.HWVersion)
	}
	if spec.Guest != nil {
		if err := spec.Guest.validate(); err != nil {
			return err
		}
	}
	switch spec.PowerState {
	case "":
		spec.PowerState = string(types.VirtualMachinePowerStatePoweredOn)
	case string(types.VirtualMachinePowerStatePoweredOn), string(types.VirtualMachinePowerStatePoweredOff):
	default:
		return fmt.Errorf("power_state must be poweredOn or poweredOff, not %q", spec.PowerState)
	}
	for i := range spec.Disks {
		d := &spec.Disks[i]
		if d.Size <= 0 || d.Size%1024 != 0 {
			return fmt.Errorf("disks[%d].size must be a positive multiple of 1024 bytes", i)
		}
		if d.Mode == "" {
			d.Mode = string(types.VirtualDiskModePersistent)
		}
		switch d.Mode {
		case "persistent", "independent_persistent", "independent_nonpersistent", "nonpersistent", "undoable":
		default:
			return fmt.Errorf("disks[%d].mode %q is not a disk mode", i, d.Mode)
		}
		switch d.RDM {
		case "", "physical", "virtual":
		default:
			return fmt.Errorf("disks[%d].rdm must be physical or virtual", i)
		}
		switch d.Backing {
		case "":
			d.Backing = "flat_ver2"
		case "flat_ver2", "flat_ver1":
		default:
			return fmt.Errorf("disks[%d].backing must be flat_ver2 or flat_ver1", i)
		}
		if d.Fill != nil {
			if d.Fill.RandomPercent < 0 || d.Fill.RandomPercent > 100 {
				return fmt.Errorf("disks[%d].fill.random_percent must be 0-100", i)
			}
			for _, z := range d.Fill.ZeroRegions {
				if z[0] < 0 || z[1] <= 0 || z[0]+z[1] > d.Size {
					return fmt.Errorf("disks[%d].fill.zero_regions entry %v is outside the disk", i, z)
				}
			}
		}
	}
	return nil
}

// createVM creates, fills and optionally enables CBT on / powers on a VM.
func (s *Sim) createVM(ctx context.Context, spec vmSpec) (*simulator.VirtualMachine, error) {
	if err := s.validateVMSpec(&spec); err != nil {
		return nil, err
	}
	for _, vm := range s.allVMs() {
		if vm.Name == spec.Name {
			return nil, fmt.Errorf("a VM named %q already exists (%s)", spec.Name, vm.Self.Value)
		}
	}
	dcs := s.registry().All("Datacenter")
	if len(dcs) == 0 {
		return nil, fmt.Errorf("no datacenter")
	}
	dc := dcs[0].(*simulator.Datacenter)
	cluster := s.registry().All("ClusterComputeResource")[0].(*simulator.ClusterComputeResource)
	hostRef := cluster.Host[0]
	guest := spec.GuestID
	if guest == "" {
		guest = string(types.VirtualMachineGuestOsIdentifierOtherGuest64)
	}

	const ctrlKey = 1000
	scsi := &types.ParaVirtualSCSIController{VirtualSCSIController: types.VirtualSCSIController{
		VirtualController: types.VirtualController{
			VirtualDevice: types.VirtualDevice{
				Key:        ctrlKey,
				DeviceInfo: &types.Description{Label: "SCSI controller 0", Summary: "VMware paravirtual SCSI"},
			},
			BusNumber: 0,
		},
		SharedBus:          types.VirtualSCSISharingNoSharing,
		ScsiCtlrUnitNumber: 7,
	}}
	devices := []types.BaseVirtualDevice{scsi}
	unit := int32(0)
	for i, ds := range spec.Disks {
		if unit == 7 {
			unit++
		}
		u := unit
		unit++
		file := types.VirtualDeviceFileBackingInfo{FileName: "[" + s.dsName + "]", Datastore: &s.dsRef}
		var backing types.BaseVirtualDeviceBackingInfo
		switch {
		case ds.RDM != "":
			mode := types.VirtualDiskCompatibilityModePhysicalMode
			if ds.RDM == "virtual" {
				mode = types.VirtualDiskCompatibilityModeVirtualMode
			}
			lun := fmt.Sprintf("6000c29%025x", (time.Now().UnixNano()+int64(i))&0xffffffffffff)
			backing = &types.VirtualDiskRawDiskMappingVer1BackingInfo{
				VirtualDeviceFileBackingInfo: file,
				CompatibilityMode:            string(mode),
				DiskMode:                     ds.Mode,
				DeviceName:                   "/vmfs/devices/disks/naa." + lun,
				LunUuid:                      "0200000000" + lun + "566972747561",
			}
		case ds.Backing == "flat_ver1":
			backing = &types.VirtualDiskFlatVer1BackingInfo{VirtualDeviceFileBackingInfo: file, DiskMode: ds.Mode}
		default:
			thin := true
			if ds.Thin != nil {
				thin = *ds.Thin
			}
			backing = &types.VirtualDiskFlatVer2BackingInfo{
				VirtualDeviceFileBackingInfo: file,
				DiskMode:                     ds.Mode,
				ThinProvisioned:              types.NewBool(thin),
			}
		}
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key: 2000 + u,
				DeviceInfo: &types.Description{
					Label:   fmt.Sprintf("Hard disk %d", i+1),
					Summary: fmt.Sprintf("%d KB", ds.Size/1024),
				},
				ControllerKey: ctrlKey,
				UnitNumber:    types.NewInt32(u),
				Backing:       backing,
			},
			CapacityInBytes: ds.Size,
			CapacityInKB:    ds.Size / 1024,
		}
		scsi.Device = append(scsi.Device, disk.Key)
		devices = append(devices, disk)
	}
	var change []types.BaseVirtualDeviceConfigSpec
	for _, d := range devices {
		ds := &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: d}
		if _, ok := d.(*types.VirtualDisk); ok {
			ds.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
		change = append(change, ds)
	}
	config := types.VirtualMachineConfigSpec{
		Name:         spec.Name,
		GuestId:      guest,
		Version:      spec.HWVersion,
		NumCPUs:      2,
		MemoryMB:     2048,
		Files:        &types.VirtualMachineFileInfo{VmPathName: "[" + s.dsName + "]"},
		DeviceChange: change,
	}
	folder := object.NewFolder(s.client, dc.VmFolder)
	pool := object.NewResourcePool(s.client, *cluster.ResourcePool)
	host := object.NewHostSystem(s.client, hostRef)
	task, err := folder.CreateVM(ctx, config, pool, host)
	if err != nil {
		return nil, err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("CreateVM_Task %s: %w", spec.Name, err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	vm := s.vmByMoid(ref.Value)
	if vm == nil {
		return nil, fmt.Errorf("created VM %s not found", ref.Value)
	}
	sctx := s.newCtx()
	var fillErr error
	sctx.WithLock(vm, func() {
		supported := hwVersion(spec.HWVersion) >= 7
		if spec.ChangeTrackingSupported != nil {
			supported = *spec.ChangeTrackingSupported
		}
		sctx.Update(vm, []types.PropertyChange{{Name: "capability.changeTrackingSupported", Val: supported}})
		s.mu.Lock()
		defer s.mu.Unlock()
		st := s.vmState(vm)
		st.guest = s.newGuestState(s.defaultTools)
		if spec.Guest != nil {
			st.guest.apply(spec.Guest)
		}
		s.syncGuest(sctx, vm, st)
		keys := st.sortedKeys()
		for i, k := range keys {
			if i >= len(spec.Disks) {
				break
			}
			d := st.disks[k]
			fs := spec.Disks[i].Fill
			if fs == nil || d.Path == "" {
				continue
			}
			if _, err := fillRandom(d.Path, d.Capacity, fs.Chunk, fs.RandomPercent, fs.Seed); err != nil {
				fillErr = err
				return
			}
			for _, z := range fs.ZeroRegions {
				if err := writeAt(d.Path, z[0], z[1], make([]byte, z[1])); err != nil {
					fillErr = err
					return
				}
			}
		}
	})
	if fillErr != nil {
		return vm, fmt.Errorf("filling the disks of %s: %w", spec.Name, fillErr)
	}
	o := object.NewVirtualMachine(s.client, ref)
	if spec.CBTEnabled {
		t, err := o.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return vm, fmt.Errorf("enabling CBT on %s: %w", spec.Name, err)
		}
	}
	if spec.PowerState == string(types.VirtualMachinePowerStatePoweredOn) {
		t, err := o.PowerOn(ctx)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return vm, fmt.Errorf("powering on %s: %w", spec.Name, err)
		}
	}
	log.Printf("created VM %s (%s) with %d disk(s)", spec.Name, ref.Value, len(spec.Disks))
	return vm, nil
}

// ---------------------------------------------------------------------------------------
// faults

type vimErr struct {
	Fault types.BaseMethodFault
	Msg   string
}

func (e *vimErr) soap() *soap.Fault { return simulator.Fault(e.Msg, e.Fault) }

func invalidArgument(prop string) *vimErr {
	return &vimErr{&types.InvalidArgument{InvalidProperty: prop}, "A specified parameter was not correct: " + prop}
}

func fileFault(file, reason string) *vimErr {
	f := &types.FileFault{File: file}
	f.FaultMessage = []types.LocalizableMessage{{Key: "com.vmware.cbtsim.fileFault", Message: reason}}
	return &vimErr{f, "Error caused by file " + file}
}

func objectNotFound(ref types.ManagedObjectReference) *vimErr {
	kind := ref.Type
	if kind == "VirtualMachineSnapshot" {
		kind = "vm.Snapshot"
	}
	return &vimErr{&types.ManagedObjectNotFound{Obj: ref},
		fmt.Sprintf("The object 'vim.%s:%s' has already been deleted or has not been completely created", kind, ref.Value)}
}

func faultFromSoap(f *soap.Fault) *vimErr {
	if bf, ok := f.VimFault().(types.BaseMethodFault); ok {
		return &vimErr{bf, f.String}
	}
	return &vimErr{&types.SystemError{Reason: f.String}, f.String}
}
