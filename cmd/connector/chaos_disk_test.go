package main

import (
	"bytes"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// fillDLQDisk makes the slot's dead-letter file unable to grow for hold,
// as on a full disk: the process's file size limit (RLIMIT_FSIZE, set from
// outside with prlimit) is lowered to what its files hold now, so that its
// next appends to the dead-letter file fail with EFBIG, the first one
// perhaps after a short write (a torn line the writer must cut back). The
// WAL is given room to grow twice over (bbolt doubles a small file), so
// that the fault is the dead-letter file's alone; the log goes through a
// pipe, which no limit touches. It reports whether the limit was set.
func (s *soak) fillDLQDisk(sl *slot, hold time.Duration) bool {
	s.mu.Lock()
	p := sl.p
	s.mu.Unlock()
	if p == nil || p.exited() {
		return false
	}
	pid := p.cmd.Process.Pid
	size := func(path string) uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return uint64(fi.Size())
	}
	dlqSize, walSize := size(sl.dlqFile), size(filepath.Join(s.dir, sl.name+".wal"))
	limit := max(dlqSize, 2*walSize+64<<10)
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: limit, Max: unix.RLIM_INFINITY}, &old); err != nil {
		s.t.Logf("dlqfull: prlimit of %s (pid %d): %v", sl.name, pid, err)
		return false
	}
	s.t.Logf("dlqfull: %s (pid %d) may write files up to %d bytes (dead-letter file %d, WAL %d) for %s",
		sl.name, pid, limit, dlqSize, walSize, hold)
	time.Sleep(hold)
	log, _ := os.ReadFile(p.log)
	s.t.Logf("dlqfull: %s: %d log lines say a write was refused (file too large) so far", sl.name, bytes.Count(log, []byte("file too large")))
	if !p.exited() {
		if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &old, nil); err != nil && !p.exited() {
			s.violate("soak: lifting the file size limit of %s (pid %d): %v", sl.name, pid, err)
		}
	}
	return true
}
