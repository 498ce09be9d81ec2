// The errno values of descriptor exhaustion (EMFILE, ENFILE) that Serve
// refuses a client for instead of stopping.

package proxy

import "syscall"

// syscallEMFILE and syscallENFILE are "too many open files" (the process's
// and the system's limit), which Accept reports when descriptors run out:
// a reason to refuse the waiting client and go on, not to stop.
var (
	syscallEMFILE = syscall.EMFILE
	syscallENFILE = syscall.ENFILE
)
