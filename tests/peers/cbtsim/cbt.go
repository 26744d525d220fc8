// Copyright: cbt.toolkit contributors
// GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

package main

// Change tracking model: change IDs, per-epoch dirty bitmaps, changed/allocated area
// computation and QueryChangedDiskAreas paging. Nothing in this file touches the
// govmomi simulator; it is plain data manipulation.

import (
	"crypto/rand"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// area is a byte range [Start, Start+Length).
type area struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
}

func (a area) end() int64 { return a.Start + a.Length }

// changeIDRe matches "<16 hex bytes separated by spaces, a dash after the 8th>/<decimal sequence>",
// e.g. "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81".
var changeIDRe = regexp.MustCompile(`^((?:[0-9a-fA-F]{2} ){7}[0-9a-fA-F]{2}-(?:[0-9a-fA-F]{2} ){7}[0-9a-fA-F]{2})/([0-9]{1,18})$`)

// parseChangeID splits a change ID into its UUID and sequence parts. "*" is not a change ID.
func parseChangeID(s string) (uuid string, seq int64, ok bool) {
	m := changeIDRe.FindStringSubmatch(s)
	if m == nil {
		return "", 0, false
	}
	n, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return strings.ToLower(m[1]), n, true
}

func formatChangeID(uuid string, seq int64) string {
	return fmt.Sprintf("%s/%d", uuid, seq)
}

// newCtkUUID returns a UUID in the spaced form VMware uses for change tracking files.
// The first byte is 0x52, as in the UUIDs real ESXi hands out.
func newCtkUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[0] = 0x52
	parts := make([]string, 16)
	for i := range b {
		parts[i] = fmt.Sprintf("%02x", b[i])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

// bitmap is a fixed-size set of block numbers.
type bitmap struct {
	words []uint64
	n     int64
}

func newBitmap(n int64) *bitmap {
	return &bitmap{words: make([]uint64, (n+63)/64), n: n}
}

// grow extends the bitmap to n blocks (disk extension).
func (b *bitmap) grow(n int64) {
	if n <= b.n {
		return
	}
	w := make([]uint64, (n+63)/64)
	copy(w, b.words)
	b.words = w
	b.n = n
}

// setRange marks blocks lo..hi inclusive.
func (b *bitmap) setRange(lo, hi int64) {
	if hi >= b.n {
		hi = b.n - 1
	}
	for i := lo; i <= hi; i++ {
		if i%64 == 0 && i+63 <= hi {
			b.words[i/64] = ^uint64(0)
			i += 63
			continue
		}
		b.words[i/64] |= 1 << uint(i%64)
	}
}

func (b *bitmap) test(i int64) bool {
	if i < 0 || i >= b.n {
		return false
	}
	return b.words[i/64]&(1<<uint(i%64)) != 0
}

// unionRange ORs the words covering blocks lo..hi of each source into a new bitmap of size n.
func unionRange(n int64, sources []*bitmap, lo, hi int64) *bitmap {
	out := newBitmap(n)
	if lo < 0 {
		lo = 0
	}
	if hi >= n {
		hi = n - 1
	}
	if hi < lo {
		return out
	}
	for _, s := range sources {
		if s == nil {
			continue
		}
		for w := lo / 64; w <= hi/64 && w < int64(len(s.words)); w++ {
			out.words[w] |= s.words[w]
		}
	}
	return out
}

// bitmapAreas converts the set blocks of b that intersect [start, end) into merged byte
// areas clipped to [start, end).
func bitmapAreas(b *bitmap, blockSize, start, end int64) []area {
	var out []area
	if end <= start {
		return out
	}
	first := start / blockSize
	last := (end - 1) / blockSize
	runStart := int64(-1)
	flush := func(upto int64) { // blocks runStart..upto-1
		s := runStart * blockSize
		e := upto * blockSize
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if e > s {
			out = appendMerged(out, area{Start: s, Length: e - s})
		}
		runStart = -1
	}
	for i := first; i <= last; i++ {
		if b.test(i) {
			if runStart < 0 {
				runStart = i
			}
		} else if runStart >= 0 {
			flush(i)
		}
	}
	if runStart >= 0 {
		flush(last + 1)
	}
	return out
}

// appendMerged appends a (sorted input assumed) and merges it with the previous area when
// they touch or overlap.
func appendMerged(out []area, a area) []area {
	if a.Length <= 0 {
		return out
	}
	if n := len(out); n > 0 && out[n-1].end() >= a.Start {
		if a.end() > out[n-1].end() {
			out[n-1].Length = a.end() - out[n-1].Start
		}
		return out
	}
	return append(out, a)
}

// alignOut rounds a byte range outward to block boundaries, capped at capacity.
func alignOut(a area, blockSize, capacity int64) area {
	s := (a.Start / blockSize) * blockSize
	e := ((a.end() + blockSize - 1) / blockSize) * blockSize
	if e > capacity {
		e = capacity
	}
	return area{Start: s, Length: e - s}
}

// clip restricts areas to [start, end).
func clip(in []area, start, end int64) []area {
	var out []area
	for _, a := range in {
		s, e := a.Start, a.end()
		if s < start {
			s = start
		}
		if e > end {
			e = end
		}
		if e > s {
			out = appendMerged(out, area{Start: s, Length: e - s})
		}
	}
	return out
}

// pageResult is what one QueryChangedDiskAreas call returns.
type pageResult struct {
	StartOffset int64
	Length      int64
	Areas       []area
}

// makePage builds one page starting at start. areasIn(lo, hi) returns the merged areas
// inside [lo, hi). A page covers at most `window` bytes (0 = up to the end of the disk)
// and holds at most `limit` areas (0 = unlimited); when the limit cuts the page short,
// the page ends where its last area ends, so the caller continues from there.
func makePage(start, capacity, window int64, limit int, areasIn func(lo, hi int64) []area) pageResult {
	end := capacity
	if window > 0 && start+window < capacity {
		end = start + window
	}
	as := areasIn(start, end)
	if limit > 0 && len(as) > limit {
		as = as[:limit]
		end = as[limit-1].end()
	}
	return pageResult{StartOffset: start, Length: end - start, Areas: as}
}
