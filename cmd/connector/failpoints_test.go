package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/record"
)

// crashHooks are failpoints for the crash tests: KTSINK_FAILPOINT=
// "after_wal_append:N" or "after_apply:N" kills the process with SIGKILL at
// the Nth batch reaching that point. They exist only in the test binary
// (TestMain arms them when it runs as the connector); a malformed spec
// stops the process at once.
func crashHooks() coordinator.Hooks {
	spec := os.Getenv("KTSINK_FAILPOINT")
	if spec == "" {
		return coordinator.Hooks{}
	}
	point, nStr, _ := strings.Cut(spec, ":")
	n, err := strconv.ParseInt(nStr, 10, 64)
	if err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "KTSINK_FAILPOINT=%q: want after_wal_append:N or after_apply:N with N > 0\n", spec)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "failpoint armed: %s\n", spec)
	var count atomic.Int64
	kill := func(*record.Batch) {
		if count.Add(1) == n {
			fmt.Fprintf(os.Stderr, "failpoint %s reached: killing the process\n", spec)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	switch point {
	case "after_wal_append":
		return coordinator.Hooks{AfterWALAppend: kill}
	case "after_apply":
		return coordinator.Hooks{AfterApply: kill}
	}
	fmt.Fprintf(os.Stderr, "KTSINK_FAILPOINT=%q: unknown point %q\n", spec, point)
	os.Exit(2)
	return coordinator.Hooks{}
}
