// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// NBD exports of frozen snapshot disks (or of the live disk of a powered-off VM), served
// read-only by nbdkit's file plugin on a unix socket. This stands in for the data path
// nbdkit's VDDK plugin gives against a real vCenter.

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

type export struct {
	ID       string `json:"id"`
	VM       string `json:"vm"`
	Snapshot string `json:"snapshot"`
	DiskKey  int32  `json:"disk_key"`
	URI      string `json:"uri"`
	Socket   string `json:"socket"`
	Size     int64  `json:"size"`
	File     string `json:"file"`
	ChangeID string `json:"change_id"`
	PID      int    `json:"pid"`

	cmd  *exec.Cmd
	done chan struct{}
}

// startExport starts nbdkit for a frozen disk (snapshot != "") or the live disk, on sockPath
// (validated by the caller) or a socket in the simulator's folder. s.mu held.
func (s *Sim) startExport(vmMoid, snapMoid string, key int32, live bool, sockPath string) (*export, error) {
	var file, cid string
	var size int64
	if snapMoid != "" {
		ss := s.snaps[snapMoid]
		if ss == nil {
			return nil, fmt.Errorf("snapshot %s is not known (removed, or never created)", snapMoid)
		}
		if ss.VM != vmMoid {
			return nil, fmt.Errorf("snapshot %s belongs to VM %s, not %s", snapMoid, ss.VM, vmMoid)
		}
		fd := ss.disks[key]
		if fd == nil {
			return nil, fmt.Errorf("disk %d is not part of snapshot %s (independent or physical RDM disks are not snapshotted)", key, snapMoid)
		}
		if fd.Path == "" {
			return nil, fmt.Errorf("disk %d of snapshot %s has no local data", key, snapMoid)
		}
		file, size, cid = fd.Path, fd.Capacity, fd.ChangeID
	} else {
		if !live {
			return nil, fmt.Errorf("the live disk can only be exported while the VM is powered off; give a snapshot")
		}
		st := s.vms[vmMoid]
		if st == nil || st.disks[key] == nil {
			return nil, fmt.Errorf("VM %s has no disk %d", vmMoid, key)
		}
		d := st.disks[key]
		if d.Path == "" {
			return nil, fmt.Errorf("disk %d of VM %s has no local data", key, vmMoid)
		}
		file, size, cid = d.Path, d.Capacity, d.changeID()
	}
	s.exportSeq++
	id := fmt.Sprintf("e%d", s.exportSeq)
	sock := filepath.Join(s.sockDir, id+".sock")
	if sockPath != "" {
		// a stable path asked by the client: an export of ours there is replaced, a leftover
		// socket (or a symbolic link to one) removed; anything else is not ours to delete
		s.stopExportsWhere(func(e *export) bool { return e.Socket == sockPath })
		if fi, err := os.Lstat(sockPath); err == nil {
			if fi.Mode()&(os.ModeSocket|os.ModeSymlink) == 0 {
				return nil, fmt.Errorf("socket path %s exists and is not a socket", sockPath)
			}
			if err := os.Remove(sockPath); err != nil {
				return nil, fmt.Errorf("removing the old socket %s: %w", sockPath, err)
			}
		}
		sock = sockPath
	}
	args := []string{"--readonly", "--foreground", "--exit-with-parent", "--unix", sock}
	if s.exportRate != "" {
		// a short bucket: a round's reads must not start with seconds of unthrottled burst
		args = append(args, "--filter=rate", "file", "file="+file, "rate="+s.exportRate, "burstiness=0.1")
	} else {
		args = append(args, "file", "file="+file)
	}
	cmd := exec.Command(s.nbdkit, args...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.nbdkit, err)
	}
	e := &export{ID: id, VM: vmMoid, Snapshot: snapMoid, DiskKey: key, Socket: sock,
		URI: "nbd+unix:///?socket=" + sock, Size: size, File: file, ChangeID: cid, PID: cmd.Process.Pid,
		cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(e.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case <-e.done:
			return nil, fmt.Errorf("nbdkit for %s exited before serving (see the simulator log)", file)
		default:
		}
		if time.Now().After(deadline) {
			s.killExport(e)
			return nil, fmt.Errorf("nbdkit for %s did not create %s within 15 s", file, sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.exports[id] = e
	log.Printf("export %s: %s (vm %s snapshot %q disk %d) on %s", id, file, vmMoid, snapMoid, key, sock)
	return e, nil
}

func (s *Sim) killExport(e *export) {
	if e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(5 * time.Second):
			_ = e.cmd.Process.Kill()
			<-e.done
		}
	}
	if err := os.Remove(e.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Printf("export %s: removing %s: %v", e.ID, e.Socket, err)
	}
}

// stopExportsWhere stops matching exports. s.mu held.
func (s *Sim) stopExportsWhere(match func(*export) bool) {
	for id, e := range s.exports {
		if match(e) {
			s.killExport(e)
			delete(s.exports, id)
			log.Printf("export %s stopped", id)
		}
	}
}

func removeQuiet(path string) {
	if path == "" {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Printf("removing %s: %v", path, err)
	}
}
