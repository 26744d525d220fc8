// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// Frozen snapshot copies whose cost grows with the changed bytes, not the disk size.
//
// A snapshot's frozen copy is the disk as it was when the snapshot was taken (what the NBD
// export serves, what "*" reads the allocation map of). A vSphere snapshot is O(1) (a redo log);
// the simulator approximates that: when a snapshot is removed, the newest frozen copy of each
// disk is kept as the disk's "spare" (renamed, not deleted), and the next snapshot builds its
// frozen copy from the spare by re-copying only the blocks written to the live disk since that
// copy was made (punch the range, copy the live data extents back in, so holes stay holes).
// Without a usable spare (first snapshot, the newest copy still in use by a snapshot, a revert to
// an older snapshot, a resized disk, a live file changed behind the simulator's back) the copy is
// a full sparse copy, as before.

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fileStamp identifies the content version of a file as far as the simulator wrote it.
type fileStamp struct {
	mtime int64
	size  int64
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{-1, -1}
	}
	return fileStamp{fi.ModTime().UnixNano(), fi.Size()}
}

// liveWritten records a change of the live disk made by the simulator (a guest write, a revert).
// s.mu held.
func (s *Sim) liveWritten(d *diskState, offset, length int64) {
	if d.sinceFreeze != nil && length > 0 {
		d.sinceFreeze.setRange(offset/s.cfg.BlockSize, (offset+length-1)/s.cfg.BlockSize)
	}
	d.liveStamp = stampOf(d.Path)
}

// forgetSpare deletes the disk's spare frozen copy and the knowledge of what changed since the
// newest frozen copy (the next frozen copy is a full one). s.mu held.
func (s *Sim) forgetSpare(d *diskState) {
	removeQuiet(d.spare)
	d.spare = ""
	d.sinceFreeze = nil
}

func (s *Sim) sparePath(vmMoid string, key int32) string {
	return fmt.Sprintf("%s/frozen/%s/spare-%d.img", s.stateDir, vmMoid, key)
}

// freezeDisk makes the frozen copy fd.Path of the live disk d (s.mu held): from the spare when
// possible, else a full sparse copy. It records how (fd.Freeze, fd.FreezeBytes, fd.FreezeSeconds).
func (s *Sim) freezeDisk(d *diskState, fd *frozenDisk, token int) error {
	began := time.Now()
	usable := d.spare != "" && d.sinceFreeze != nil && d.sinceFreeze.n == s.blocks(d.Capacity)
	why := ""
	if d.spare != "" && usable {
		if cur := stampOf(d.Path); cur != d.liveStamp {
			usable, why = false, "the live disk file changed outside the simulator"
		} else if sp := stampOf(d.spare); sp.size != d.Capacity {
			usable, why = false, "the spare copy has the wrong size"
		}
	}
	if usable {
		if err := os.MkdirAll(filepath.Dir(fd.Path), 0o755); err != nil {
			return err
		}
		if err := os.Rename(d.spare, fd.Path); err != nil {
			usable, why = false, "renaming the spare: "+err.Error()
		} else {
			d.spare = ""
			runs := bitmapAreas(d.sinceFreeze, s.cfg.BlockSize, 0, d.Capacity)
			n, err := patchFrom(d.Path, fd.Path, d.Capacity, runs)
			if err != nil {
				removeQuiet(fd.Path)
				usable, why = false, "patching the spare: "+err.Error()
			} else {
				fd.Freeze, fd.FreezeBytes = "incremental", n
			}
		}
	}
	if !usable {
		if why != "" {
			log.Printf("disk %s: full frozen copy (%s)", d.FileName, why)
		}
		removeQuiet(d.spare)
		d.spare = ""
		n, err := sparseCopy(d.Path, fd.Path, d.Capacity)
		if err != nil {
			d.sinceFreeze = nil
			return err
		}
		fd.Freeze, fd.FreezeBytes = "full", n
	}
	fd.FreezeSeconds = time.Since(began).Seconds()
	fd.gen = token
	d.freezeGen = fd.gen
	d.sinceFreeze = newBitmap(s.blocks(d.Capacity))
	d.liveStamp = stampOf(d.Path)
	return nil
}

// retireFrozen disposes of a frozen copy whose snapshot is gone (s.mu held): the newest frozen
// copy of a disk becomes the disk's spare, any other one is deleted.
func (s *Sim) retireFrozen(vmMoid string, fd *frozenDisk) {
	if fd.Path == "" {
		return
	}
	var d *diskState
	if st := s.vms[vmMoid]; st != nil {
		d = st.disks[fd.Key]
	}
	if d == nil || d.Path == "" || fd.gen == 0 || fd.gen != d.freezeGen || d.sinceFreeze == nil ||
		fd.Capacity != d.Capacity {
		removeQuiet(fd.Path)
		return
	}
	spare := s.sparePath(vmMoid, fd.Key)
	removeQuiet(d.spare)
	if err := os.Rename(fd.Path, spare); err != nil {
		log.Printf("keeping %s as the spare frozen copy: %v", fd.Path, err)
		removeQuiet(fd.Path)
		d.spare = ""
		return
	}
	d.spare = spare
}

// patchFrom makes dst equal to src inside the given byte ranges (both files size bytes). Each
// range is aligned out to the file system block so the allocation (holes) matches src exactly:
// the range is punched in dst and src's data extents in it are copied back. Returns the bytes
// copied.
func patchFrom(src, dst string, size int64, runs []area) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	align := int64(4096)
	var st syscall.Stat_t
	if err := syscall.Fstat(int(out.Fd()), &st); err == nil && st.Blksize > 0 && int64(st.Blksize)%512 == 0 {
		align = int64(st.Blksize)
	}
	var aligned []area
	for _, r := range runs {
		aligned = appendMerged(aligned, alignOut(r, align, size))
	}
	var copied int64
	for _, r := range aligned {
		if err := syscall.Fallocate(int(out.Fd()), fallocPunchHole|fallocKeepSize, r.Start, r.Length); err != nil {
			return copied, fmt.Errorf("punching %d+%d: %w", r.Start, r.Length, err)
		}
		ext, err := dataExtents(in, r.Start, r.end())
		if err != nil {
			return copied, err
		}
		for _, a := range ext {
			if err := copyRange(in, out, a); err != nil {
				return copied, err
			}
			copied += a.Length
		}
	}
	return copied, out.Close()
}

// copyRange copies one byte range between two files at the same offset (copy_file_range).
func copyRange(in, out *os.File, a area) error {
	if _, err := in.Seek(a.Start, io.SeekStart); err != nil {
		return err
	}
	if _, err := out.Seek(a.Start, io.SeekStart); err != nil {
		return err
	}
	n, err := io.CopyN(out, in, a.Length)
	if err == nil && n != a.Length {
		err = errors.New("short copy")
	}
	return err
}
