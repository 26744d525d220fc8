// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

// csi-test-driver is the test bed's CSI driver for the snapshot-metadata chain.
//
// The upstream CSI hostpath driver (kubernetes-csi/csi-driver-host-path) is refused by the Go
// module proxy at every version, so this small driver of our own stands in for it. It speaks
// the CSI Identity service (advertising SNAPSHOT_METADATA_SERVICE) and the CSI SnapshotMetadata
// service on a unix socket, which is all the external-snapshot-metadata sidecar calls.
//
// Volumes are files in --data-dir; a snapshot is a frozen copy of a volume file. A 4 KiB block
// (--block-size) is allocated when it holds a non-zero byte; the delta of two snapshots of one
// volume is the set of blocks whose bytes differ. FIXED_LENGTH reports one tuple per block,
// VARIABLE_LENGTH merges adjacent blocks. Tests drive the driver through a small JSON HTTP
// control API on loopback (--control-address): create volumes, write data, take snapshots,
// mark them not ready, inject stream faults and read back the requests the driver received.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const version = "0.1.0"

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

type volume struct {
	ID   string `json:"id"`
	Size int64  `json:"size"`
	Path string `json:"path"`
}

type snapshot struct {
	ID       string `json:"id"`
	VolumeID string `json:"volume_id"`
	Size     int64  `json:"size"`
	Path     string `json:"path"`
	Ready    bool   `json:"ready"`
	// Synthetic snapshots have no data file: Count extents of Extent bytes every Stride bytes
	// (for benchmarks with millions of tuples).
	Synthetic *synthetic `json:"synthetic,omitempty"`
}

type synthetic struct {
	Count  int64 `json:"count"`
	Stride int64 `json:"stride"`
	Extent int64 `json:"extent"`
}

// fault makes a stream fail with a gRPC status after a number of messages.
type fault struct {
	RPC           string `json:"rpc"`            // GetMetadataAllocated, GetMetadataDelta or "" for both
	AfterMessages int    `json:"after_messages"` // messages sent before the failure
	Code          string `json:"code"`           // gRPC code name, e.g. UNAVAILABLE
	Message       string `json:"message"`
	Times         int    `json:"times"` // how many streams it hits; <= 0 means 1
}

// call records one SnapshotMetadata request as the driver received it.
type call struct {
	RPC            string `json:"rpc"`
	SnapshotID     string `json:"snapshot_id,omitempty"`
	BaseSnapshotID string `json:"base_snapshot_id,omitempty"`
	TargetID       string `json:"target_snapshot_id,omitempty"`
	StartingOffset int64  `json:"starting_offset"`
	MaxResults     int32  `json:"max_results"`
	Secrets        int    `json:"secrets"`
	Messages       int    `json:"messages"`
	Tuples         int    `json:"tuples"`
	Error          string `json:"error,omitempty"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedSnapshotMetadataServer

	name              string
	dataDir           string
	blockSize         int64
	variable          bool
	defaultMaxResults int32
	advertise         bool

	mu        sync.Mutex
	volumes   map[string]*volume
	snapshots map[string]*snapshot
	faults    []*fault
	calls     []*call
}

// ---- CSI Identity ----

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	resp := &csi.GetPluginCapabilitiesResponse{}
	if d.advertise {
		resp.Capabilities = append(resp.Capabilities, &csi.PluginCapability{
			Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
				Type: csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE,
			}},
		})
	}
	return resp, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// ---- CSI SnapshotMetadata ----

type sender func(bmType csi.BlockMetadataType, capacity int64, tuples []*csi.BlockMetadata) error

func (d *driver) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	rec := &call{RPC: "GetMetadataAllocated", SnapshotID: req.GetSnapshotId(), StartingOffset: req.GetStartingOffset(),
		MaxResults: req.GetMaxResults(), Secrets: len(req.GetSecrets())}
	err := d.allocated(stream.Context(), req, rec, func(t csi.BlockMetadataType, c int64, b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataAllocatedResponse{BlockMetadataType: t, VolumeCapacityBytes: c, BlockMetadata: b})
	})
	d.record(rec, err)
	return err
}

func (d *driver) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, stream csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	rec := &call{RPC: "GetMetadataDelta", BaseSnapshotID: req.GetBaseSnapshotId(), TargetID: req.GetTargetSnapshotId(),
		StartingOffset: req.GetStartingOffset(), MaxResults: req.GetMaxResults(), Secrets: len(req.GetSecrets())}
	err := d.delta(stream.Context(), req, rec, func(t csi.BlockMetadataType, c int64, b []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataDeltaResponse{BlockMetadataType: t, VolumeCapacityBytes: c, BlockMetadata: b})
	})
	d.record(rec, err)
	return err
}

func (d *driver) record(rec *call, err error) {
	if err != nil {
		rec.Error = err.Error()
	}
	d.mu.Lock()
	d.calls = append(d.calls, rec)
	d.mu.Unlock()
}

func (d *driver) lookup(id, role string) (*snapshot, error) {
	if id == "" {
		return nil, status.Errorf(codes.InvalidArgument, "%s snapshot ID is required", role)
	}
	d.mu.Lock()
	snap, ok := d.snapshots[id]
	d.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "cannot find the %s snapshot %q", role, id)
	}
	if !snap.Ready {
		return nil, status.Errorf(codes.Unavailable, "the %s snapshot %q is not ready", role, id)
	}
	return snap, nil
}

func (d *driver) checkPaging(start int64, maxResults int32, capacity int64) (int, error) {
	if maxResults < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "max_results %d must not be negative", maxResults)
	}
	if start < 0 || start >= capacity {
		return 0, status.Errorf(codes.OutOfRange, "starting offset %d is out of range for volume size %d", start, capacity)
	}
	if maxResults == 0 {
		maxResults = d.defaultMaxResults
	}
	return int(maxResults), nil
}

// takeFault returns the fault armed for this RPC, if any, and uses up one of its times.
func (d *driver) takeFault(rpc string) *fault {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, f := range d.faults {
		if f.RPC == "" || f.RPC == rpc {
			f.Times--
			if f.Times <= 0 {
				d.faults = append(d.faults[:i], d.faults[i+1:]...)
			}
			return f
		}
	}
	return nil
}

func (d *driver) allocated(ctx context.Context, req *csi.GetMetadataAllocatedRequest, rec *call, send sender) error {
	snap, err := d.lookup(req.GetSnapshotId(), "source")
	if err != nil {
		return err
	}
	maxResults, err := d.checkPaging(req.GetStartingOffset(), req.GetMaxResults(), snap.Size)
	if err != nil {
		return err
	}
	if snap.Synthetic != nil {
		return d.streamSynthetic(rec, snap, req.GetStartingOffset(), maxResults, send)
	}
	f, err := os.Open(snap.Path)
	if err != nil {
		return status.Errorf(codes.Internal, "cannot open snapshot %q: %v", snap.ID, err)
	}
	defer f.Close()
	return d.walk(ctx, rec, "GetMetadataAllocated", snap.Size, req.GetStartingOffset(), maxResults, send,
		func(off int64, buf []byte) ([]byte, error) { return readAt(f, off, buf) })
}

func (d *driver) delta(ctx context.Context, req *csi.GetMetadataDeltaRequest, rec *call, send sender) error {
	base, err := d.lookup(req.GetBaseSnapshotId(), "base")
	if err != nil {
		return err
	}
	target, err := d.lookup(req.GetTargetSnapshotId(), "target")
	if err != nil {
		return err
	}
	if base.Synthetic != nil || target.Synthetic != nil {
		return status.Error(codes.InvalidArgument, "synthetic snapshots only support GetMetadataAllocated")
	}
	if base.VolumeID != target.VolumeID {
		return status.Errorf(codes.InvalidArgument, "snapshots %q and %q don't belong to the same volume", base.ID, target.ID)
	}
	maxResults, err := d.checkPaging(req.GetStartingOffset(), req.GetMaxResults(), target.Size)
	if err != nil {
		return err
	}
	bf, err := os.Open(base.Path)
	if err != nil {
		return status.Errorf(codes.Internal, "cannot open snapshot %q: %v", base.ID, err)
	}
	defer bf.Close()
	tf, err := os.Open(target.Path)
	if err != nil {
		return status.Errorf(codes.Internal, "cannot open snapshot %q: %v", target.ID, err)
	}
	defer tf.Close()
	var other []byte
	return d.walk(ctx, rec, "GetMetadataDelta", target.Size, req.GetStartingOffset(), maxResults, send,
		func(off int64, buf []byte) ([]byte, error) {
			// A block is "changed" when target differs from base; report it as a non-zero
			// marker so walk() can treat deltas and allocation the same way.
			t, err := readAt(tf, off, buf)
			if err != nil {
				return nil, err
			}
			if cap(other) < len(t) {
				other = make([]byte, len(t))
			}
			b, err := readAt(bf, off, other[:len(t)])
			if err != nil {
				return nil, err
			}
			bs := int(d.blockSize)
			for i := 0; i < len(t); i += bs {
				end := min(i+bs, len(t))
				if bytes.Equal(t[i:end], b[i:end]) {
					clear(t[i:end])
				} else {
					clear(t[i:end])
					t[i] = 1
				}
			}
			return t, nil
		})
}

// streamSynthetic sends the extents of a synthetic snapshot from the first one ending after start.
func (d *driver) streamSynthetic(rec *call, snap *snapshot, start int64, maxResults int, send sender) error {
	syn := snap.Synthetic
	bmType := csi.BlockMetadataType_FIXED_LENGTH
	if d.variable {
		bmType = csi.BlockMetadataType_VARIABLE_LENGTH
	}
	first := int64(0)
	if start > 0 {
		first = (start - syn.Extent + syn.Stride) / syn.Stride // first i with i*stride+extent > start
		if first < 0 {
			first = 0
		}
	}
	batch := make([]*csi.BlockMetadata, 0, maxResults)
	for i := first; i < syn.Count; i++ {
		batch = append(batch, &csi.BlockMetadata{ByteOffset: i * syn.Stride, SizeBytes: syn.Extent})
		if len(batch) == maxResults || i == syn.Count-1 {
			if err := send(bmType, snap.Size, batch); err != nil {
				return err
			}
			rec.Messages++
			rec.Tuples += len(batch)
			batch = make([]*csi.BlockMetadata, 0, maxResults)
		}
	}
	if rec.Messages == 0 {
		return send(bmType, snap.Size, nil)
	}
	return nil
}

// readAt fills buf from off, zero-filling past the end of the file.
func readAt(f *os.File, off int64, buf []byte) ([]byte, error) {
	n, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	clear(buf[n:])
	return buf, nil
}

// walk scans [start, capacity) block by block and streams the blocks for which read() returns
// non-zero bytes, batched to maxResults tuples per message.
func (d *driver) walk(ctx context.Context, rec *call, rpc string, capacity, start int64, maxResults int,
	send sender, read func(off int64, buf []byte) ([]byte, error)) error {
	bmType := csi.BlockMetadataType_FIXED_LENGTH
	if d.variable {
		bmType = csi.BlockMetadataType_VARIABLE_LENGTH
	}
	flt := d.takeFault(rpc)
	bs := d.blockSize
	chunk := make([]byte, 256*bs)
	batch := make([]*csi.BlockMetadata, 0, maxResults)
	var runOff, runLen int64 = -1, 0

	flush := func(final bool) error {
		if len(batch) == 0 && !(final && rec.Messages == 0) {
			return nil
		}
		if flt != nil && rec.Messages >= flt.AfterMessages {
			code, ok := codeByName[strings.ToUpper(flt.Code)]
			if !ok {
				code = codes.Unavailable
			}
			msg := flt.Message
			if msg == "" {
				msg = "injected fault"
			}
			return status.Error(code, msg)
		}
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		if err := send(bmType, capacity, batch); err != nil {
			return err
		}
		rec.Messages++
		rec.Tuples += len(batch)
		batch = make([]*csi.BlockMetadata, 0, maxResults)
		return nil
	}
	emit := func(off, length int64) error {
		batch = append(batch, &csi.BlockMetadata{ByteOffset: off, SizeBytes: length})
		if len(batch) >= maxResults {
			return flush(false)
		}
		return nil
	}

	for off := (start / bs) * bs; off < capacity; off += int64(len(chunk)) {
		n := min(int64(len(chunk)), capacity-off)
		buf, err := read(off, chunk[:n])
		if err != nil {
			return status.Errorf(codes.Internal, "cannot read snapshot data at offset %d: %v", off, err)
		}
		for i := int64(0); i < n; i += bs {
			end := min(i+bs, n)
			if allZero(buf[i:end]) {
				continue
			}
			boff, blen := off+i, end-i
			if !d.variable {
				if err := emit(boff, blen); err != nil {
					return err
				}
				continue
			}
			if runOff >= 0 && runOff+runLen == boff {
				runLen += blen
				continue
			}
			if runOff >= 0 {
				if err := emit(runOff, runLen); err != nil {
					return err
				}
			}
			runOff, runLen = boff, blen
		}
	}
	if runOff >= 0 {
		if err := emit(runOff, runLen); err != nil {
			return err
		}
	}
	return flush(true)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

var codeByName = map[string]codes.Code{}

func init() {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		name := strings.ToUpper(c.String())
		// codes.String() gives CamelCase (e.g. "DeadlineExceeded"); accept the proto names too.
		codeByName[name] = c
	}
	for name, c := range map[string]codes.Code{
		"INVALID_ARGUMENT": codes.InvalidArgument, "DEADLINE_EXCEEDED": codes.DeadlineExceeded,
		"NOT_FOUND": codes.NotFound, "ALREADY_EXISTS": codes.AlreadyExists,
		"PERMISSION_DENIED": codes.PermissionDenied, "RESOURCE_EXHAUSTED": codes.ResourceExhausted,
		"FAILED_PRECONDITION": codes.FailedPrecondition, "OUT_OF_RANGE": codes.OutOfRange,
		"DATA_LOSS": codes.DataLoss,
	} {
		codeByName[name] = c
	}
}

// ---- control API ----

func (d *driver) control() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("POST /volumes", d.createVolume)
	mux.HandleFunc("POST /volumes/{id}/write", d.writeVolume)
	mux.HandleFunc("DELETE /volumes/{id}", d.deleteVolume)
	mux.HandleFunc("POST /snapshots", d.createSnapshot)
	mux.HandleFunc("PATCH /snapshots/{id}", d.patchSnapshot)
	mux.HandleFunc("POST /synthetic-snapshots", d.createSynthetic)
	mux.HandleFunc("DELETE /snapshots/{id}", d.deleteSnapshot)
	mux.HandleFunc("POST /faults", d.addFault)
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.faults = nil
		d.mu.Unlock()
		reply(w, 200, map[string]string{})
	})
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		out := append([]*call{}, d.calls...)
		d.mu.Unlock()
		reply(w, 200, out)
	})
	mux.HandleFunc("DELETE /calls", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.calls = nil
		d.mu.Unlock()
		reply(w, 200, map[string]string{})
	})
	return mux
}

func reply(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	reply(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		fail(w, 400, "bad request body: %v", err)
		return false
	}
	return true
}

func (d *driver) createVolume(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ID   string `json:"id"`
		Size int64  `json:"size"`
	}
	if !decode(w, r, &in) {
		return
	}
	if !validID.MatchString(in.ID) || in.Size <= 0 || in.Size%d.blockSize != 0 {
		fail(w, 400, "need an id matching %s and a size that is a positive multiple of %d", validID, d.blockSize)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.volumes[in.ID]; ok {
		fail(w, 409, "volume %q exists", in.ID)
		return
	}
	path := filepath.Join(d.dataDir, "volumes", in.ID+".img")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		err = f.Truncate(in.Size)
		f.Close()
	}
	if err != nil {
		fail(w, 500, "cannot create %s: %v", path, err)
		return
	}
	v := &volume{ID: in.ID, Size: in.Size, Path: path}
	d.volumes[in.ID] = v
	reply(w, 201, v)
}

func (d *driver) writeVolume(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Offset int64  `json:"offset"`
		Data   []byte `json:"data"`   // base64 in JSON
		Length int64  `json:"length"` // with Fill: write Length bytes of Fill
		Fill   *byte  `json:"fill"`
	}
	if !decode(w, r, &in) {
		return
	}
	d.mu.Lock()
	v, ok := d.volumes[r.PathValue("id")]
	d.mu.Unlock()
	if !ok {
		fail(w, 404, "no volume %q", r.PathValue("id"))
		return
	}
	data := in.Data
	if in.Fill != nil {
		data = bytes.Repeat([]byte{*in.Fill}, int(in.Length))
	}
	if in.Offset < 0 || in.Offset+int64(len(data)) > v.Size {
		fail(w, 400, "write of %d bytes at %d is outside the volume (size %d)", len(data), in.Offset, v.Size)
		return
	}
	f, err := os.OpenFile(v.Path, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt(data, in.Offset)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fail(w, 500, "write failed: %v", err)
		return
	}
	reply(w, 200, map[string]int64{"offset": in.Offset, "length": int64(len(data))})
}

func (d *driver) deleteVolume(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.volumes[r.PathValue("id")]
	if !ok {
		fail(w, 404, "no volume %q", r.PathValue("id"))
		return
	}
	_ = os.Remove(v.Path)
	delete(d.volumes, v.ID)
	reply(w, 200, map[string]string{})
}

func (d *driver) createSnapshot(w http.ResponseWriter, r *http.Request) {
	in := struct {
		ID     string `json:"id"`
		Volume string `json:"volume"`
		Ready  *bool  `json:"ready"`
	}{}
	if !decode(w, r, &in) {
		return
	}
	if !validID.MatchString(in.ID) {
		fail(w, 400, "need an id matching %s", validID)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.volumes[in.Volume]
	if !ok {
		fail(w, 404, "no volume %q", in.Volume)
		return
	}
	if _, ok := d.snapshots[in.ID]; ok {
		fail(w, 409, "snapshot %q exists", in.ID)
		return
	}
	path := filepath.Join(d.dataDir, "snapshots", in.ID+".img")
	if err := copyFile(v.Path, path); err != nil {
		fail(w, 500, "cannot snapshot %q: %v", in.Volume, err)
		return
	}
	s := &snapshot{ID: in.ID, VolumeID: v.ID, Size: v.Size, Path: path, Ready: in.Ready == nil || *in.Ready}
	d.snapshots[in.ID] = s
	reply(w, 201, s)
}

func (d *driver) createSynthetic(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ID     string `json:"id"`
		Volume string `json:"volume"`
		synthetic
	}
	if !decode(w, r, &in) {
		return
	}
	if !validID.MatchString(in.ID) || in.Count <= 0 || in.Extent <= 0 || in.Stride < in.Extent {
		fail(w, 400, "need an id, count > 0, extent > 0 and stride >= extent")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.snapshots[in.ID]; ok {
		fail(w, 409, "snapshot %q exists", in.ID)
		return
	}
	syn := in.synthetic
	s := &snapshot{ID: in.ID, VolumeID: in.Volume, Size: syn.Count*syn.Stride + syn.Stride, Ready: true, Synthetic: &syn}
	d.snapshots[in.ID] = s
	reply(w, 201, s)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o400)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (d *driver) patchSnapshot(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Ready bool `json:"ready"`
	}
	if !decode(w, r, &in) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.snapshots[r.PathValue("id")]
	if !ok {
		fail(w, 404, "no snapshot %q", r.PathValue("id"))
		return
	}
	s.Ready = in.Ready
	reply(w, 200, s)
}

func (d *driver) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.snapshots[r.PathValue("id")]
	if !ok {
		fail(w, 404, "no snapshot %q", r.PathValue("id"))
		return
	}
	_ = os.Remove(s.Path)
	delete(d.snapshots, s.ID)
	reply(w, 200, map[string]string{})
}

func (d *driver) addFault(w http.ResponseWriter, r *http.Request) {
	var f fault
	if !decode(w, r, &f) {
		return
	}
	if _, ok := codeByName[strings.ToUpper(f.Code)]; !ok {
		fail(w, 400, "unknown gRPC code %q", f.Code)
		return
	}
	if f.Times <= 0 {
		f.Times = 1
	}
	d.mu.Lock()
	d.faults = append(d.faults, &f)
	d.mu.Unlock()
	reply(w, 201, f)
}

func main() {
	endpoint := flag.String("endpoint", "", "unix socket for the CSI gRPC services (unix:///path or /path)")
	name := flag.String("drivername", "csi-test.cbt.toolkit.io", "CSI driver name")
	dataDir := flag.String("data-dir", "", "folder for volume and snapshot files")
	blockType := flag.String("snapshot-metadata-block-type", "FIXED_LENGTH", "FIXED_LENGTH or VARIABLE_LENGTH")
	blockSize := flag.Int64("block-size", 4096, "allocation and change-tracking granularity in bytes")
	maxResults := flag.Int("max-results", 256, "tuples per message when the request's max_results is 0")
	advertise := flag.Bool("enable-snapshot-metadata", true, "advertise the SNAPSHOT_METADATA_SERVICE capability")
	controlAddr := flag.String("control-address", "", "loopback host:port of the JSON control API")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("csi-test-driver", version)
		return
	}
	socket := strings.TrimPrefix(*endpoint, "unix://")
	if socket == "" || *dataDir == "" || *controlAddr == "" {
		log.Fatal("--endpoint, --data-dir and --control-address are required")
	}
	if *blockType != "FIXED_LENGTH" && *blockType != "VARIABLE_LENGTH" {
		log.Fatalf("--snapshot-metadata-block-type must be FIXED_LENGTH or VARIABLE_LENGTH, not %q", *blockType)
	}
	if *blockSize <= 0 || *maxResults <= 0 {
		log.Fatal("--block-size and --max-results must be positive")
	}
	if host, _, err := net.SplitHostPort(*controlAddr); err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
		log.Fatalf("--control-address must be a loopback host:port, not %q", *controlAddr)
	}
	for _, sub := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(*dataDir, sub), 0o700); err != nil {
			log.Fatal(err)
		}
	}
	d := &driver{
		name: *name, dataDir: *dataDir, blockSize: *blockSize, variable: *blockType == "VARIABLE_LENGTH",
		defaultMaxResults: int32(*maxResults), advertise: *advertise,
		volumes: map[string]*volume{}, snapshots: map[string]*snapshot{},
	}

	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listen on %s: %v", socket, err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterSnapshotMetadataServer(srv, d)

	ctl, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("listen on %s: %v", *controlAddr, err)
	}
	go func() {
		if err := http.Serve(ctl, d.control()); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Fatalf("control API: %v", err)
		}
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Stop()
		_ = ctl.Close()
	}()
	log.Printf("csi-test-driver %s: driver %s, CSI on %s, control API on %s, %s, block size %d, default max_results %d",
		version, *name, socket, ctl.Addr(), *blockType, *blockSize, *maxResults)
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
	_ = os.Remove(socket)
}
