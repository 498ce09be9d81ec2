package proxy

import "syscall"

// syscallEMFILE is "too many open files", which Accept reports when the
// process runs out of descriptors: a reason to back off, not to stop.
var syscallEMFILE = syscall.EMFILE
