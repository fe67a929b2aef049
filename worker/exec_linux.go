package worker

import "syscall"

// lockThread is true where the child's death signal is tied to the OS
// thread that started it (Linux prctl PR_SET_PDEATHSIG: "the parent" is the
// creating thread, go.dev/issue/27505). Call then holds its goroutine on
// that thread from Start until the child is reaped, so no other goroutine
// can lock the thread and exit with it, which would kill the handler early.
const lockThread = true

// setDeathSignal makes the kernel SIGKILL the handler when the agent dies,
// however it dies (kill -9, OOM killer, a crash).
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
