package vm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/cfsroot/cfsroot/vmtests/guest"
)

// Options describe a test VM.
type Options struct {
	// Name prefixes console lines in the test log and names the console
	// log file; default "vm".
	Name string
	// Kernel is the bzImage to boot; required (see RequireKernel).
	Kernel string
	// Initramfs is the initramfs to boot; required (see Initramfs).
	Initramfs string
	// Append is added to the kernel command line, after
	// "console=ttyS0 panic=-1".
	Append []string
	// Disks are raw disk images attached as virtio-blk disks, in order
	// (/dev/vda, /dev/vdb, ...). The VM writes to them.
	Disks []string
	// TPM attaches a TPM 2.0 (swtpm, TIS interface).
	TPM bool
	// TPMState is swtpm's state directory. Empty means a fresh TPM; give
	// the same directory to two boots for a TPM that keeps its NV
	// contents (PCRs reset at every boot, as on real hardware).
	TPMState string
	// OVMF boots through UEFI firmware instead of QEMU's direct kernel
	// boot. It costs about 20 s under TCG.
	OVMF bool
	// DBCerts are PEM certificates enrolled in the UEFI db; they imply
	// OVMF. The kernel loads them into its .platform keyring, which IPE
	// (IPE_POLICY_SIG_PLATFORM_KEYRING) trusts for policy signatures.
	DBCerts []string
	// Memory in MiB; default 1024.
	Memory int
	// Timeout bounds the VM's run: QEMU is killed when it passes.
	// Default 3 minutes.
	Timeout time.Duration
	// QEMUArgs are extra QEMU arguments.
	QEMUArgs []string
}

// End says how a VM run ended.
type End string

const (
	// PowerOff: the guest powered off (the kernel printed "reboot: Power down").
	PowerOff End = "poweroff"
	// Reboot: the guest rebooted; with -no-reboot QEMU exits instead.
	Reboot End = "reboot"
	// Panic: the kernel panicked (e.g. PID 1 exited); panic=-1 and
	// -no-reboot make QEMU exit.
	Panic End = "panic"
	// Timeout: Options.Timeout passed and QEMU was killed; a guest that
	// halts without powering off ends this way.
	Timeout End = "timeout"
	// Stopped: the test stopped the VM with Machine.Stop.
	Stopped End = "stopped"
	// Exited: QEMU exited for another reason (see Result.Err).
	Exited End = "exited"
)

// Result is what a VM run produced.
type Result struct {
	// Console holds the console lines, without line ends.
	Console []string
	// Results are the guest's marker lines, in order.
	Results []guest.Result
	// End says how the run ended.
	End End
	// Err is QEMU's exit error, if any.
	Err error
	// Elapsed is the wall time from starting QEMU to its exit.
	Elapsed time.Duration
	// LogFile is the console log's path.
	LogFile string
}

// Result returns the last result named name.
func (r *Result) Result(name string) (guest.Result, bool) {
	for i := len(r.Results) - 1; i >= 0; i-- {
		if r.Results[i].Name == name {
			return r.Results[i], true
		}
	}
	return guest.Result{}, false
}

// Contains reports whether a console line contains s.
func (r *Result) Contains(s string) bool {
	for _, l := range r.Console {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// Require fails the test for every named result that is missing or not
// OK, and returns the results by name for further checks.
func (r *Result) Require(t testing.TB, names ...string) map[string]guest.Result {
	t.Helper()
	out := map[string]guest.Result{}
	for _, n := range names {
		res, ok := r.Result(n)
		switch {
		case !ok:
			t.Errorf("guest reported no result %q (VM ended: %s; console log %s)", n, r.End, r.LogFile)
		case !res.OK:
			t.Errorf("guest check %q failed: %s (data %v)", n, res.Error, res.Data)
		}
		out[n] = res
	}
	return out
}

// Machine is a running test VM.
type Machine struct {
	t       testing.TB
	opts    Options
	vm      *qemu.VM
	console *console
	start   time.Time
	timer   *time.Timer
	tpm     *swtpm

	timedOut atomic.Bool
	stopped  atomic.Bool
	drained  chan struct{}

	waitOnce sync.Once
	result   *Result
}

// Boot starts a VM and waits for it to end; it fails the test if the VM
// runs into its timeout.
func Boot(t testing.TB, o Options) *Result {
	t.Helper()
	res := Start(t, o).Wait()
	if res.End == Timeout {
		t.Errorf("VM %s did not finish within its timeout; console log %s", nameOr(o.Name), res.LogFile)
	}
	return res
}

func nameOr(n string) string {
	if n == "" {
		return "vm"
	}
	return n
}

// Start starts a VM. The test must call Wait or Stop (a cleanup stops a
// VM left running).
func Start(t testing.TB, o Options) *Machine {
	t.Helper()
	RequireTools(t, qemuBinary())
	if o.Kernel == "" || o.Initramfs == "" {
		t.Fatal("vm: Options.Kernel and Options.Initramfs are required")
	}
	o.Name = nameOr(o.Name)
	if o.Memory == 0 {
		o.Memory = 1024
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	dir := t.TempDir()
	m := &Machine{t: t, opts: o, drained: make(chan struct{})}

	qemuCmd := os.Getenv("VMTEST_QEMU")
	if qemuCmd == "" {
		// KVM fails on the machines this was made on; TCG works.
		qemuCmd = "qemu-system-x86_64 -accel tcg -cpu max"
	}
	args := []string{
		"-machine", "q35", "-m", fmt.Sprint(o.Memory), "-smp", "1",
		"-no-reboot", "-nic", "none",
	}
	for _, d := range o.Disks {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("vm: disk: %v", err)
		}
		args = append(args, "-drive", "file="+qemuOpt(d)+",if=virtio,format=raw")
	}
	if o.OVMF || len(o.DBCerts) > 0 {
		vars := ovmfVars(t, dir, o.DBCerts)
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuOpt(OVMFCode),
			"-drive", "if=pflash,format=raw,unit=1,file="+qemuOpt(vars))
	}
	if o.TPM {
		RequireTools(t, "swtpm")
		state := o.TPMState
		if state == "" {
			state = filepath.Join(dir, "tpm")
		}
		if err := os.MkdirAll(state, 0o700); err != nil {
			t.Fatal(err)
		}
		tpm, err := startSWTPM(state)
		if err != nil {
			t.Fatal(err)
		}
		m.tpm = tpm
		t.Cleanup(func() { tpm.stop(0) })
		args = append(args, tpm.qemuArgs()...)
	}
	args = append(args, o.QEMUArgs...)

	logFile := ConsoleLogPath(t, o.Name)
	c, err := newConsole(logFile)
	if err != nil {
		t.Fatal(err)
	}
	m.console = c

	m.start = time.Now()
	m.vm = qemu.StartT(t, o.Name, qemu.ArchAMD64,
		qemu.WithQEMUCommand(qemuCmd),
		qemu.WithKernel(o.Kernel),
		qemu.WithInitramfs(o.Initramfs),
		qemu.WithAppendKernel(append([]string{"console=ttyS0", "panic=-1"}, o.Append...)...),
		qemu.ArbitraryArgs(args...),
		qemu.WithSerialOutput(c),
	)
	// The console must be read all the time: QEMU writes it to a pty
	// first, and a full pty would stop the guest.
	go func() {
		_, _ = m.vm.Console.ExpectEOF()
		// QEMU has exited and all its output went through the console
		// (vmtest closes the pty only after that): wake up waiters.
		_ = c.Close()
		close(m.drained)
	}()
	m.timer = time.AfterFunc(o.Timeout, func() {
		m.timedOut.Store(true)
		_ = m.vm.Kill()
	})
	t.Cleanup(func() { m.Stop() })
	return m
}

// qemuOpt escapes a value inside a QEMU option list, where a comma is
// written twice (test directories carry subtest names, which may hold
// commas).
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// ConsoleLogPath returns the file a VM's console log goes to: NAME.log
// (test name, and name unless it is "vm") in CFSROOT_VMTEST_LOGDIR, else
// out/vmtest in the repository, else a temporary directory of the test.
// Tests that run QEMU themselves keep their log there too.
func ConsoleLogPath(t testing.TB, name string) string {
	dir := os.Getenv("CFSROOT_VMTEST_LOGDIR")
	if dir == "" {
		if root, err := RepoRoot(); err == nil {
			dir = filepath.Join(root, "out", "vmtest")
		} else {
			dir = t.TempDir()
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		dir = t.TempDir()
	}
	base := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	if name != "vm" {
		base += "-" + name
	}
	return filepath.Join(dir, base+".log")
}

// WaitLine waits until a console line contains s and returns the line.
// Lines printed before the call count. It fails when the VM ends first or
// timeout passes.
func (m *Machine) WaitLine(s string, timeout time.Duration) (string, error) {
	return m.console.wait(func(l string) bool { return strings.Contains(l, s) }, timeout,
		fmt.Sprintf("console line containing %q", s))
}

// WaitResult waits for the guest's marker named name.
func (m *Machine) WaitResult(name string, timeout time.Duration) (guest.Result, error) {
	var r guest.Result
	_, err := m.console.wait(func(l string) bool {
		var ok bool
		r, ok = guest.Parse(l)
		return ok && r.Name == name
	}, timeout, fmt.Sprintf("guest result %q", name))
	return r, err
}

// Wait waits for QEMU to exit (or to be killed at the timeout) and
// returns what the run produced. It logs the run's wall time.
func (m *Machine) Wait() *Result {
	m.waitOnce.Do(func() {
		<-m.drained
		err := m.vm.Wait()
		elapsed := time.Since(m.start)
		m.timer.Stop()
		if m.tpm != nil {
			m.tpm.stop(500 * time.Millisecond)
		}
		lines := m.console.all()
		r := &Result{Console: lines, Err: err, Elapsed: elapsed, LogFile: m.console.path}
		for _, l := range lines {
			if g, ok := guest.Parse(l); ok {
				r.Results = append(r.Results, g)
			}
		}
		r.End = m.end(r)
		m.result = r
		m.t.Logf("VM %s: %s after %.1fs wall time (console log %s)", m.opts.Name, r.End, elapsed.Seconds(), r.LogFile)
	})
	return m.result
}

func (m *Machine) end(r *Result) End {
	switch {
	case m.stopped.Load():
		return Stopped
	case m.timedOut.Load():
		return Timeout
	case r.Contains("Kernel panic - not syncing"):
		return Panic
	case r.Contains("reboot: Power down"):
		return PowerOff
	case r.Contains("reboot: Restarting system"):
		return Reboot
	}
	return Exited
}

// Stop kills a VM that is still running (e.g. one that halted) and waits
// for it.
func (m *Machine) Stop() *Result {
	select {
	case <-m.drained:
	default:
		m.stopped.Store(true)
		_ = m.vm.Kill()
	}
	return m.Wait()
}

// console collects the VM's console output: it writes it to a file, keeps
// the lines, and wakes up waiters.
type console struct {
	path string
	f    *os.File

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every new line and at EOF
	lines   []string
	partial []byte
	closed  bool
}

func newConsole(path string) (*console, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("vm: console log: %w", err)
	}
	return &console{path: path, f: f, changed: make(chan struct{})}, nil
}

func (c *console) Write(p []byte) (int, error) {
	_, _ = c.f.Write(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	added := false
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.lines = append(c.lines, strings.TrimRight(string(c.partial[:i]), "\r"))
		c.partial = c.partial[i+1:]
		added = true
	}
	if added {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return len(p), nil
}

// Close ends the output (vmtest closes it when QEMU has exited).
func (c *console) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if len(c.partial) > 0 {
		c.lines = append(c.lines, strings.TrimRight(string(c.partial), "\r"))
		c.partial = nil
	}
	c.closed = true
	close(c.changed)
	return c.f.Close()
}

func (c *console) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func (c *console) wait(match func(string) bool, timeout time.Duration, what string) (string, error) {
	deadline := time.After(timeout)
	next := 0
	for {
		c.mu.Lock()
		lines, changed, closed := c.lines[next:], c.changed, c.closed
		next = len(c.lines)
		c.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		if closed {
			return "", fmt.Errorf("vm: VM ended without a %s", what)
		}
		select {
		case <-changed:
		case <-deadline:
			return "", fmt.Errorf("vm: no %s within %v", what, timeout)
		}
	}
}
