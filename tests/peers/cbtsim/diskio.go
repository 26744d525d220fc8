// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// Disk file operations: sparse flat files, workload patterns, sparse-aware frozen copies
// and allocated-extent discovery with SEEK_DATA/SEEK_HOLE.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

const (
	seekData = 3 // SEEK_DATA (Linux)
	seekHole = 4 // SEEK_HOLE (Linux)

	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
)

// ensureSparseFile creates path if needed and sets its size to capacity (never shrinks
// a file that holds data beyond capacity: the caller decides about shrinking).
func ensureSparseFile(path string, capacity int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != capacity {
		return f.Truncate(capacity)
	}
	return nil
}

// patternData produces the bytes of a write request. pattern is "random" (seeded PCG),
// "zero", "byte:NN" (NN decimal or 0x-hex) or "discard" (no data: a hole is punched).
func patternData(pattern string, seed uint64, length int64) ([]byte, error) {
	switch {
	case pattern == "random":
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		buf := make([]byte, length)
		for i := int64(0); i < length; i += 8 {
			v := r.Uint64()
			for j := int64(0); j < 8 && i+j < length; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		return buf, nil
	case pattern == "zero":
		return make([]byte, length), nil
	case strings.HasPrefix(pattern, "byte:"):
		v, err := strconv.ParseUint(strings.TrimPrefix(pattern, "byte:"), 0, 8)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: the value after 'byte:' must be 0-255 (decimal or 0x hex)", pattern)
		}
		buf := make([]byte, length)
		for i := range buf {
			buf[i] = byte(v)
		}
		return buf, nil
	case pattern == "discard":
		return nil, nil
	}
	return nil, fmt.Errorf("unknown pattern %q: use random, zero, byte:NN, discard or data_b64", pattern)
}

// writeAt writes data (or punches a hole when data is nil) into the file.
func writeAt(path string, offset, length int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if data == nil {
		return syscall.Fallocate(int(f.Fd()), fallocPunchHole|fallocKeepSize, offset, length)
	}
	if _, err := f.WriteAt(data, offset); err != nil {
		return err
	}
	return nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func decodeB64(s string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(s)
}

// dataExtents returns the data (non-hole) byte ranges of f inside [start, end).
func dataExtents(f *os.File, start, end int64) ([]area, error) {
	var out []area
	fd := int(f.Fd())
	pos := start
	for pos < end {
		d, err := syscall.Seek(fd, pos, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			return nil, err
		}
		if d >= end {
			break
		}
		h, err := syscall.Seek(fd, d, seekHole)
		if err != nil {
			return nil, err
		}
		if h > end {
			h = end
		}
		if h > d {
			out = append(out, area{Start: d, Length: h - d})
		}
		pos = h
	}
	return out, nil
}

// allocatedAreas returns the allocated areas of the file inside [start, end), rounded
// outward to blockSize and clipped to [start, end).
func allocatedAreas(path string, blockSize, capacity, start, end int64) ([]area, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lo := (start / blockSize) * blockSize
	hi := ((end + blockSize - 1) / blockSize) * blockSize
	if hi > capacity {
		hi = capacity
	}
	ext, err := dataExtents(f, lo, hi)
	if err != nil {
		return nil, err
	}
	var rounded []area
	for _, a := range ext {
		rounded = appendMerged(rounded, alignOut(a, blockSize, capacity))
	}
	return clip(rounded, start, end), nil
}

// sparseCopy copies src to dst (created/truncated), copying only data extents so holes
// stay holes. The kernel's copy_file_range is used by io.Copy between files. Returns the
// bytes copied.
func sparseCopy(src, dst string, size int64) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		out.Close()
		if !ok {
			os.Remove(dst)
		}
	}()
	if err := out.Truncate(size); err != nil {
		return 0, err
	}
	ext, err := dataExtents(in, 0, size)
	if err != nil {
		return 0, err
	}
	var copied int64
	for _, a := range ext {
		if err := copyRange(in, out, a); err != nil {
			return copied, err
		}
		copied += a.Length
	}
	ok = true
	return copied, out.Close()
}

// restoreFrom makes dst's content equal to src (both capacity bytes): dst's data is
// dropped (punched) and src's data extents are copied in.
func restoreFrom(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return err
	}
	if size > 0 {
		if err := syscall.Fallocate(int(out.Fd()), fallocPunchHole|fallocKeepSize, 0, size); err != nil {
			return err
		}
	}
	ext, err := dataExtents(in, 0, size)
	if err != nil {
		return err
	}
	for _, a := range ext {
		if _, err := in.Seek(a.Start, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(a.Start, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, a.Length); err != nil {
			return err
		}
	}
	return nil
}

// fillRandom writes seeded random data into pct percent of the chunk-sized pieces of the
// file (chosen pseudo-randomly with the same seed). Returns the areas written.
func fillRandom(path string, capacity, chunk int64, pct float64, seed uint64) ([]area, error) {
	if pct <= 0 || capacity <= 0 {
		return nil, nil
	}
	if chunk <= 0 {
		chunk = 1 << 20
	}
	n := (capacity + chunk - 1) / chunk
	want := int64(float64(n)*pct/100.0 + 0.5)
	if want > n {
		want = n
	}
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	perm := r.Perm(int(n))
	chosen := perm[:want]
	// write in ascending order for a deterministic result
	slices.Sort(chosen)
	var written []area
	for _, i := range chosen {
		off := int64(i) * chunk
		l := chunk
		if off+l > capacity {
			l = capacity - off
		}
		data, _ := patternData("random", seed+uint64(i)+1, l)
		if err := writeAt(path, off, l, data); err != nil {
			return written, err
		}
		written = appendMerged(written, area{Start: off, Length: l})
	}
	return written, nil
}
