//go:build !linux

package worker

import "syscall"

// lockThread is false where there is no parent-death signal to protect.
const lockThread = false

// setDeathSignal does nothing: only Linux has a parent-death signal. The
// watchdog alone kills the handler's process group when the agent dies.
func setDeathSignal(*syscall.SysProcAttr) {}
