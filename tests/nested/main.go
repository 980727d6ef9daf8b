// Command nested runs snapvmm's KVM tests on a host without /dev/kvm: it
// boots a Debian Linux kernel under QEMU's software emulator (TCG) with a
// CPU that offers AMD SVM and nested paging, loads kvm-amd there, and runs
// the test binaries of the KVM packages inside, with SNAPVMM_REQUIRE_KVM=1
// so that a test which cannot open /dev/kvm fails instead of skipping.
//
// The KVM inside is ordinary hardware-style KVM (SVM), so this also covers
// the code paths a PVM host never takes. It is slow (every instruction is
// emulated) but fast enough for the tiny test guests.
//
//	go run ./tests/nested [-pkgs vmm,qmp,cmd/snapvmm] [-run REGEXP] [-e2e]
//
// It needs qemu-system-x86_64, apt-get and dpkg-deb (to fetch the kernel
// package once; cached in ~/.cache/snapvmm/nested), busybox-static and
// qemu-img. Exit status 0 only when every package's tests passed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snapvmm/snapvmm/internal/cpio"
)

// kvmModules are loaded in this order inside the nested machine.
var kvmModules = []string{
	"kernel/virt/lib/irqbypass.ko",
	"kernel/drivers/crypto/ccp/ccp.ko",
	"kernel/arch/x86/kvm/kvm.ko",
	"kernel/arch/x86/kvm/kvm-amd.ko",
}

// netModules give the -interactive machine a network card, over which
// QEMU forwards a host port to snapvmm's QMP monitor.
var netModules = []string{
	"kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
}

const resultMarker = "NESTED-RESULT"

func main() {
	pkgs := flag.String("pkgs", "kvm,vmm,qmp,cmd/snapvmm", "comma-separated packages whose tests run inside")
	run := flag.String("run", "", "passed to the test binaries as -test.run")
	count := flag.Int("count", 1, "passed to the test binaries as -test.count (hunting flaky tests)")
	e2e := flag.Bool("e2e", false, "also run tests/linux with the e2e tag (needs make guest)")
	mem := flag.Int("mem", 4096, "memory of the nested machine, MiB")
	flag.StringVar(&tcgThreads, "tcg-thread", "multi", "QEMU's TCG threading: multi or single")
	flag.BoolVar(&pinCPU, "pin", false, "run the tests on the first emulated CPU only (taskset)")
	flag.IntVar(&cpus, "smp", 1, "vCPUs of the nested machine (2 races inside TCG's nested SVM: guests triple-fault now and then; the Linux e2e needs 2 for speed)")
	timeout := flag.Duration("timeout", 25*time.Minute, "limit for the whole nested run")
	keep := flag.Bool("keep", false, "keep the work directory")
	script := flag.String("script", "", "instead of tests, run this shell script inside (in /repo, with snapvmm, snapvmm-bench and socat on PATH)")
	tools := flag.String("tools", "", "comma-separated extra host programs to bring, with their libraries (e.g. qemu-system-x86_64)")
	data := flag.String("data", "", "comma-separated host directories to bring as they are (e.g. /usr/share/qemu,/usr/share/seabios)")
	inter := flag.Bool("interactive", false, "instead of tests, boot the Linux guest (make guest) under snapvmm with its console on this terminal (make run without /dev/kvm); Ctrl-a x quits")
	guestMem := flag.String("guest-mem", "512M", "with -interactive: the guest's --memory")
	guestCPUs := flag.Int("guest-cpus", 2, "with -interactive: the guest's --cpus")
	qmpPath := flag.String("qmp", "", "with -interactive: offer snapvmm's QMP monitor on this Unix socket here")
	why := flag.String("why", "no /dev/kvm on this host", "with -interactive: why the guest does not run natively, for the first line")
	flag.Parse()
	if *inter {
		code, err := interactive(*mem, *guestMem, *guestCPUs, *qmpPath, *why)
		if err != nil {
			fmt.Fprintf(os.Stderr, "snapvmm: %v\n", err)
		}
		os.Exit(code)
	}
	list := splitList(*pkgs)
	if *e2e {
		list = append(list, "tests/linux")
	}
	if *script != "" {
		list = []string{"script"}
	}
	extra := splitList(*tools)
	for _, d := range splitList(*data) {
		dataDirs = append(dataDirs, d)
	}
	if err := nested(list, *run, *count, *e2e, *mem, *timeout, *keep, *script, extra); err != nil {
		fmt.Fprintf(os.Stderr, "nested: %v\n", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, strings.TrimPrefix(p, "./"))
		}
	}
	return out
}

// tcgThreads is QEMU's -accel tcg,thread= value; cpus the machine's vCPUs.
var (
	tcgThreads string
	cpus       int
	pinCPU     bool
)

// dataDirs are host directories brought into the machine unchanged.
var dataDirs []string

func nested(pkgs []string, run string, count int, e2e bool, memMiB int, timeout time.Duration, keep bool, script string, extraTools []string) error {
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed: apt-get install qemu-system-x86 qemu-utils", tool)
		}
	}
	kdir, err := kernel()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "snapvmm-nested-")
	if err != nil {
		return err
	}
	if keep {
		fmt.Printf("nested: work directory %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	var files []file
	// Scripts use the snapvmm command, and so does the e2e warm-start
	// recipe (examples/warm-start.sh).
	cmds := map[string]string{}
	if script != "" || e2e {
		cmds["snapvmm"] = "./cmd/snapvmm"
	}
	if script != "" {
		cmds["snapvmm-bench"] = "./tests/bench"
	}
	for name, pkg := range cmds {
		bin := filepath.Join(work, name)
		if err := runCmd([]string{"go", "build", "-o", bin, pkg}, "CGO_ENABLED=0"); err != nil {
			return fmt.Errorf("build %s: %w", pkg, err)
		}
		files = append(files, file{host: bin, guest: "usr/bin/" + name, mode: 0o755})
	}
	if script != "" {
		files = append(files, file{host: script, guest: "repo/script/pkg.test", mode: 0o755})
		pkgs = nil
	}
	for _, p := range pkgs {
		bin := filepath.Join(work, strings.ReplaceAll(p, "/", "_")+".test")
		args := []string{"test", "-c", "-o", bin}
		if e2e && p == "tests/linux" {
			args = append(args, "-tags", "e2e")
		}
		if err := runCmd(append([]string{"go"}, append(args, "./"+p)...), "CGO_ENABLED=0"); err != nil {
			return fmt.Errorf("build the tests of %s: %w", p, err)
		}
		files = append(files, file{host: bin, guest: "repo/" + p + "/pkg.test", mode: 0o755})
		if fi, err := os.Stat(filepath.Join(p, "testdata")); err == nil && fi.IsDir() {
			files = append(files, tree(filepath.Join(p, "testdata"), "repo/"+p+"/testdata")...)
		}
	}
	files = append(files, tree("testdata/guests", "repo/testdata/guests")...)
	if e2e {
		for _, f := range []string{"bzImage", "vmlinux", "initramfs.cpio"} {
			files = append(files, file{host: filepath.Join("build/guest", f), guest: "repo/build/guest/" + f, mode: 0o644})
		}
		files = append(files, file{host: "examples/warm-start.sh", guest: "repo/examples/warm-start.sh", mode: 0o755})
	}
	for _, d := range dataDirs {
		files = append(files, tree(d, strings.TrimPrefix(filepath.Clean(d), "/"))...)
	}
	tools, err := toolFiles(extraTools)
	if err != nil {
		return err
	}
	files = append(files, tools...)
	for _, m := range kvmModules {
		files = append(files, file{host: filepath.Join(kdir, "modules", m), guest: "mod/" + filepath.Base(m), mode: 0o644})
	}
	if script != "" {
		pkgs = []string{"script"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	results, crashed, werr := boot(ctx, kdir, work, files, pkgs, run, count, memMiB)
	if crashed && ctx.Err() == nil {
		// The emulated machine's own kernel died (seen about once in ten
		// Linux guest boots: page faults inside its kernel while KVM runs
		// the guest, a fault of TCG's nested SVM). No test result was
		// lost to it that would be hidden: packages that reported keep
		// their result, failures are never run again, and only the
		// packages that never reported run once more, in a fresh machine.
		var again []string
		for _, p := range pkgs {
			if _, ok := results[p]; !ok {
				again = append(again, p)
			}
		}
		fmt.Printf("nested: the emulated machine's kernel crashed or hung (above), which is not a test result; running %s once more in a fresh machine\n", strings.Join(again, ", "))
		var more map[string]string
		more, _, werr = boot(ctx, kdir, work, files, again, run, count, memMiB)
		for p, rc := range more {
			results[p] = rc
		}
	}
	fmt.Printf("nested: %v in all\n", time.Since(start).Round(time.Second))
	return verdict(pkgs, results, werr, ctx.Err())
}

// boot runs one emulated machine over pkgs and reports each package's exit
// status, and whether the machine's own kernel crashed.
func boot(ctx context.Context, kdir, work string, files []file, pkgs []string, run string, count, memMiB int) (map[string]string, bool, error) {
	initrd := filepath.Join(work, "initrd.cpio")
	if err := writeInitramfs(initrd, files, initScript(pkgs, run, count, broughtTools(files))); err != nil {
		return nil, false, err
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg,thread="+tcgThreads, "-cpu", "max", "-smp", fmt.Sprint(cpus), "-m", fmt.Sprint(memMiB),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 oops=panic")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, false, err
	}
	fmt.Printf("nested: booting a TCG machine with SVM to run the KVM tests of %s\n", strings.Join(pkgs, ", "))
	if err := cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("start qemu-system-x86_64: %w", err)
	}
	// A machine whose kernel locks up prints nothing more (seen once: 20
	// minutes of silence, not even the test binary's own timeout dump).
	// After quietLimit without a line it is stopped and counts as crashed.
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var hung atomic.Bool
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if time.Since(time.Unix(0, last.Load())) > quietLimit {
					fmt.Printf("nested: no console output for %v: the emulated machine hung; stopping it\n", quietLimit)
					hung.Store(true)
					cmd.Process.Kill()
					return
				}
			}
		}
	}()
	results, crashed := scan(out, lineClock{os.Stdout, &last})
	close(done)
	return results, crashed || hung.Load(), cmd.Wait()
}

// quietLimit is how long a machine may print nothing before it counts as
// hung. Every test prints its === RUN line, and a test binary's own
// timeout (20 minutes) prints a dump.
const quietLimit = 10 * time.Minute

// lineClock notes when the console last printed.
type lineClock struct {
	w    io.Writer
	last *atomic.Int64
}

func (l lineClock) Write(p []byte) (int, error) {
	l.last.Store(time.Now().UnixNano())
	return l.w.Write(p)
}

// machineCrash matches the emulated machine's kernel reporting its own
// death on the console (its lines carry a timestamp; test output does not).
var machineCrash = regexp.MustCompile(`^\[\s*\d+\.\d+\] (Kernel panic - not syncing|BUG: )`)

// scan copies the console to w, collects each package's exit status and
// notices a crash of the machine's kernel.
func scan(r io.Reader, w io.Writer) (results map[string]string, crashed bool) {
	results = map[string]string{}
	re := regexp.MustCompile(resultMarker + ` (\S+) (\S+)`)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(w, line)
		if m := re.FindStringSubmatch(line); m != nil {
			results[m[1]] = m[2]
		}
		crashed = crashed || machineCrash.MatchString(line)
	}
	return results, crashed
}

func verdict(pkgs []string, results map[string]string, werr, ctxErr error) error {
	var bad []string
	fmt.Println("nested: results")
	for _, p := range pkgs {
		rc, ok := results[p]
		switch {
		case !ok:
			rc = "no result"
			bad = append(bad, p)
		case rc != "0":
			bad = append(bad, p)
		}
		fmt.Printf("  %-16s %s\n", p, map[bool]string{true: "ok", false: "FAILED (" + rc + ")"}[rc == "0"])
	}
	if ctxErr != nil {
		return fmt.Errorf("the nested machine ran past its time limit: %w", ctxErr)
	}
	if len(bad) > 0 {
		return fmt.Errorf("KVM tests failed in %s", strings.Join(bad, ", "))
	}
	if werr != nil {
		return fmt.Errorf("qemu-system-x86_64: %w", werr)
	}
	return nil
}

// initPrologue starts /init of the nested machine: the basic mounts and
// KVM.
const initPrologue = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin HOME=/tmp TMPDIR=/tmp ` + "SNAPVMM_REQUIRE_KVM=1 SNAPVMM_TIME_SCALE=10" + `
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
for m in /mod/irqbypass.ko /mod/ccp.ko /mod/kvm.ko /mod/kvm-amd.ko; do insmod $m || echo "nested: insmod $m failed"; done
[ -c /dev/kvm ] || { echo "nested: no /dev/kvm after loading kvm-amd"; dmesg | grep -i -E 'kvm|svm' | tail; }
`

// initScript is /init of the nested machine: load KVM, then run each
// package's test binary from its own directory (tests find their data by
// relative paths) and print its exit status on a marker line. tools are
// the programs brought in (broughtTools).
func initScript(pkgs []string, run string, count int, tools []string) []byte {
	var b bytes.Buffer
	b.WriteString(initPrologue)
	// make bench's flags reach tests/nested/bench.sh, and SNAPVMM_*
	// settings (SNAPVMM_CRASH_ROUNDS, say) reach the tests. A run that
	// requires the tools (SNAPVMM_REQUIRE_TOOLS) requires inside the ones
	// this machine has: the tests that need others (qemu-system-x86_64)
	// need no KVM and ran on the host.
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if k == requireToolsEnv {
			if v != "" && v != "0" {
				v = strings.Join(tools, ",")
			} else {
				continue
			}
		}
		if k == "BENCHFLAGS" || strings.HasPrefix(k, "SNAPVMM_") && k != "SNAPVMM_REQUIRE_KVM" {
			fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
		}
	}
	flags := fmt.Sprintf("-test.v -test.count=%d -test.timeout=20m", count)
	if run != "" {
		flags += " -test.run '" + strings.ReplaceAll(run, "'", `'\''`) + "'"
	}
	// Pinned, the tests (and the guests' vCPU threads) stay on one
	// emulated CPU: KVM moving a guest's vCPU between the emulated CPUs is
	// where TCG's nested SVM makes guests triple-fault.
	pin := ""
	if pinCPU {
		pin = "taskset -c 0 "
	}
	for _, p := range pkgs {
		cmd := fmt.Sprintf("cd /repo/%s && %s./pkg.test %s 2>&1", p, pin, flags)
		if p == "script" {
			cmd = "cd /repo && sh script/pkg.test 2>&1"
		}
		fmt.Fprintf(&b, "echo '=== nested: %s'\n(%s)\necho \"%s %s $?\"\n", p, cmd, resultMarker, p)
	}
	b.WriteString("sync; poweroff -f\n")
	return b.Bytes()
}

// file is one file of the initramfs.
type file struct {
	host, guest string
	mode        uint32
}

func tree(hostDir, guestDir string) []file {
	var out []file
	filepath.WalkDir(hostDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if _, err := os.Stat(p); err != nil {
			return nil // a dangling link
		}
		rel, _ := filepath.Rel(hostDir, p)
		mode := uint32(0o644)
		if fi, err := d.Info(); err == nil && fi.Mode()&0o111 != 0 {
			mode = 0o755
		}
		out = append(out, file{host: p, guest: filepath.ToSlash(filepath.Join(guestDir, rel)), mode: mode})
		return nil
	})
	return out
}

// requireToolsEnv is testutil.RequireToolsEnv (the runner imports no test
// helpers).
const requireToolsEnv = "SNAPVMM_REQUIRE_TOOLS"

// broughtTools names the programs among files: busybox and what toolFiles
// put in usr/bin.
func broughtTools(files []file) []string {
	var tools []string
	for _, f := range files {
		if f.guest == "bin/busybox" {
			tools = append(tools, "busybox")
		} else if name, ok := strings.CutPrefix(f.guest, "usr/bin/"); ok {
			tools = append(tools, name)
		}
	}
	return tools
}

// toolFiles brings busybox (static), and qemu-img and socat (when
// installed) with the shared libraries ldd lists for them.
func toolFiles(extra []string) ([]file, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, errors.New("busybox is needed: apt-get install busybox-static")
	}
	if out, _ := exec.Command("ldd", bb).CombinedOutput(); !bytes.Contains(out, []byte("not a dynamic")) {
		return nil, fmt.Errorf("%s is not statically linked: apt-get install busybox-static", bb)
	}
	files := []file{{host: bb, guest: "bin/busybox", mode: 0o755}}
	seen := map[string]bool{}
	for i, tool := range append([]string{"qemu-img", "socat"}, extra...) {
		path, err := exec.LookPath(tool)
		if err != nil {
			if i == 1 {
				continue // socat: only scripts use it
			}
			return nil, err
		}
		files = append(files, file{host: path, guest: "usr/bin/" + tool, mode: 0o755})
		out, err := exec.Command("ldd", path).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", path, err)
		}
		re := regexp.MustCompile(`(/\S+) \(0x`)
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			lib := m[1]
			if seen[lib] {
				continue
			}
			seen[lib] = true
			real, err := filepath.EvalSymlinks(lib)
			if err != nil {
				return nil, err
			}
			files = append(files, file{host: real, guest: strings.TrimPrefix(lib, "/"), mode: 0o755})
		}
	}
	return files, nil
}

func writeInitramfs(path string, files []file, init []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := cpio.NewWriter(bw)
	dirs := map[string]bool{}
	var names []string
	for _, fl := range files {
		for d := filepath.Dir(fl.guest); d != "." && d != "/"; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "bin", "usr/bin", "mod"} {
		dirs[d] = true
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names) // parents before children
	for _, d := range names {
		if err := w.Add(cpio.Entry{Name: d, Mode: cpio.ModeDir | 0o755}); err != nil {
			return err
		}
	}
	if err := w.Add(cpio.Entry{Name: "dev/console", Mode: cpio.ModeChar | 0o600, Major: 5, Minor: 1}); err != nil {
		return err
	}
	for _, fl := range files {
		data, err := os.ReadFile(fl.host)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := w.Add(cpio.Entry{Name: fl.guest, Mode: cpio.ModeRegular | fl.mode, Data: data}); err != nil {
			return err
		}
	}
	if err := w.Add(cpio.Entry{Name: "init", Mode: cpio.ModeRegular | 0o755, Data: init}); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// kernel returns a directory holding vmlinuz and modules/ of Debian's
// current amd64 kernel package, fetching it once into the cache.
func kernel() (string, error) {
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w", err)
	}
	m := regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-amd64)`).FindSubmatch(out)
	if m == nil {
		return "", errors.New("apt-cache does not name the package behind linux-image-amd64")
	}
	pkg := string(m[1])
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(home, ".cache", "snapvmm", "nested", pkg)
	if cached(dir) {
		return dir, nil
	}
	os.RemoveAll(dir) // from an older version of this program, without netModules
	tmp, err := os.MkdirTemp("", "snapvmm-kernel-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	fmt.Printf("nested: fetching %s\n", pkg)
	dl := exec.Command("apt-get", "download", pkg)
	dl.Dir = tmp
	if b, err := dl.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if b, err := exec.Command("dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, b)
	}
	ver := strings.TrimPrefix(pkg, "linux-image-")
	stage := filepath.Join(tmp, "stage")
	if err := os.MkdirAll(filepath.Join(stage, "modules"), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(filepath.Join(root, "boot", "vmlinuz-"+ver), filepath.Join(stage, "vmlinuz")); err != nil {
		return "", fmt.Errorf("kernel package %s: %w", pkg, err)
	}
	for _, m := range append(kvmModules, netModules...) {
		src := filepath.Join(root, "lib", "modules", ver, m)
		dst := filepath.Join(stage, "modules", m)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if err := os.Rename(src, dst); err != nil {
			return "", fmt.Errorf("kernel package %s lacks %s: %w", pkg, m, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(stage, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// cached reports whether dir holds the kernel and every module used.
func cached(dir string) bool {
	for _, f := range append([]string{"vmlinuz"}, append(kvmModules, netModules...)...) {
		if f != "vmlinuz" {
			f = filepath.Join("modules", f)
		}
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

func runCmd(argv []string, env ...string) error {
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = append(os.Environ(), env...)
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	return c.Run()
}
