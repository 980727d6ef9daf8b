// Command bench measures snapshot-save and snapshot-load of snapvmm against
// QEMU on the same machine: the fill test guest dirties a fraction of its
// RAM, then both VMMs save and load over QMP with the VM running. QEMU gets
// the same RAM content paged in from a file (memory-backend-file,
// share=off). Results are medians; see docs/benchmarks.md.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/qmp"
)

type scenario struct {
	RAM      uint64 `json:"ram_bytes"`
	Permille uint64 `json:"fill_permille"`
}

func (s scenario) String() string {
	return fmt.Sprintf("%s RAM, %d%% filled", block.SizeToStr(s.RAM), s.Permille/10)
}

// figures are one run's measurements.
type figures struct {
	SaveWall, SavePause, LoadWall, LoadPause time.Duration
	// LoadRunning is from the load command to the guest running again
	// (RESUME); LoadPopulated to all of guest RAM in place (the lazy
	// load's RAM_POPULATED event; the end of the job for an eager load).
	LoadRunning, LoadPopulated time.Duration
	// TouchAfterLoad is the guest's pass over all of its RAM right after
	// the load, as a multiple of the same pass before the save (1 = no
	// cost); 0 where the guest cannot tell (QEMU runs no fill guest).
	TouchAfterLoad       float64
	VMStateSize, PeakRSS uint64
	// ImageUse is the image file's allocated bytes after the save: what
	// the snapshot costs on disk (a format-2 vmstate is sparse).
	ImageUse uint64
}

type result struct {
	Scenario scenario `json:"scenario"`
	VMM      string   `json:"vmm"`
	Runs     int      `json:"runs"`
	Median   *figures `json:"median,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// vmms are measured in this order: snapvmm loading lazily (its default),
// snapvmm loading eagerly, snapvmm saving with the guest paused (both
// others save live, the default), QEMU.
var vmms = []string{"snapvmm", "snapvmm-eager", "snapvmm-paused", "qemu"}

// vcpuAffinity is -cpu-affinity.
var vcpuAffinity string

// snapvmmLog is -log-level: snapvmm's --log-level in the main runs; above
// error, its log is also copied to this program's stderr (where a lazy
// load's statistics line tells where the time went).
var snapvmmLog string

// chooseVMMs checks a -vmms list against the known columns and keeps
// their order.
func chooseVMMs(list string) ([]string, error) {
	want := map[string]bool{}
	for _, v := range strings.Split(list, ",") {
		if !slices.Contains(vmms, v) {
			return nil, fmt.Errorf("-vmms: unknown column %q (known: %s)", v, strings.Join(vmms, ", "))
		}
		want[v] = true
	}
	var out []string
	for _, v := range vmms {
		if want[v] {
			out = append(out, v)
		}
	}
	return out, nil
}

type limits struct {
	WriteBytesPerSec  float64 `json:"write_bytes_per_sec"`
	MemcpyBytesPerSec float64 `json:"memcpy_bytes_per_sec"`
}

func main() {
	jsonOut := flag.Bool("json", false, "print JSON instead of Markdown")
	runs := flag.Int("runs", 3, "runs per scenario and VMM (the median is reported)")
	scen := flag.String("scenarios", "256M:100,256M:900,1G:100,1G:900", "RAM:permille pairs")
	snapvmm := flag.String("snapvmm", "build/snapvmm", "snapvmm binary")
	qemu := flag.String("qemu", "qemu-system-x86_64", "QEMU binary")
	guest := flag.String("guest", "testdata/guests/fill", "fill guest ELF")
	incRAM := flag.String("incremental", "256M,1G", "RAM sizes of the incremental-save runs (comma-separated; empty: none)")
	only := flag.String("vmms", strings.Join(vmms, ","), "the columns to measure (comma-separated, of "+strings.Join(vmms, ", ")+")")
	flag.StringVar(&vcpuAffinity, "cpu-affinity", "", "snapvmm's --cpu-affinity for its vCPU threads (empty: none)")
	flag.StringVar(&snapvmmLog, "log-level", "error", "snapvmm's --log-level; above error its log is copied to stderr")
	flag.Parse()
	chosen, err := chooseVMMs(*only)
	if err != nil {
		fail(err)
	}
	dir, err := os.MkdirTemp("", "snapvmm-bench-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	var scenarios []scenario
	for _, s := range strings.Split(*scen, ",") {
		ram, pm, ok := strings.Cut(s, ":")
		size, err := parseSize(ram)
		p, perr := strconv.ParseUint(pm, 10, 64)
		if !ok || err != nil || perr != nil || p > 1000 {
			fail(fmt.Errorf("scenario %q: want RAM:permille, like 1G:900", s))
		}
		scenarios = append(scenarios, scenario{RAM: size, Permille: p})
	}
	lim := measureLimits(dir)
	var results []result
	for _, s := range scenarios {
		for _, vmm := range chosen {
			r := result{Scenario: s, VMM: vmm}
			var all []figures
			for i := 0; i < *runs; i++ {
				var f figures
				var err error
				// Every run starts on a quiet disk: the data a previous run
				// left dirty (its image, QEMU's memory file) would otherwise
				// be written back during this run's save.
				syscall.Sync()
				switch vmm {
				case "snapvmm":
					f, err = runSnapvmm(dir, *snapvmm, *guest, s, "lazy", "live")
				case "snapvmm-eager":
					f, err = runSnapvmm(dir, *snapvmm, *guest, s, "eager", "live")
				case "snapvmm-paused":
					f, err = runSnapvmm(dir, *snapvmm, *guest, s, "lazy", "paused")
				default:
					f, err = runQEMU(dir, *qemu, s)
				}
				if err != nil {
					r.Error = err.Error()
					break
				}
				// A line per run: a long column is progress, not silence
				// (tests/nested stops a machine that prints nothing for 10
				// minutes), and a hang shows where it happened.
				fmt.Fprintf(os.Stderr, "bench: %s on %s: run %d of %d: save %v, load %v\n",
					s, vmm, i+1, *runs, f.SaveWall.Round(time.Millisecond), f.LoadPopulated.Round(time.Millisecond))
				all = append(all, f)
			}
			r.Runs = len(all)
			if len(all) > 0 && r.Error == "" {
				m := median(all)
				r.Median = &m
			}
			results = append(results, r)
			fmt.Fprintf(os.Stderr, "bench: %s on %s: %d runs %s\n", s, vmm, r.Runs, r.Error)
		}
	}
	var inc []incResult
	for _, s := range strings.FieldsFunc(*incRAM, func(r rune) bool { return r == ',' }) {
		size, err := parseSize(s)
		if err != nil {
			fail(fmt.Errorf("-incremental %q: want sizes like 256M,1G", *incRAM))
		}
		r := incResult{Scenario: incScenario{RAM: size}}
		f, err := runIncremental(dir, *snapvmm, *guest, r.Scenario)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Figures = &f
		}
		inc = append(inc, r)
		fmt.Fprintf(os.Stderr, "bench: incremental saves of %s: %s\n", block.SizeToStr(size), r.Error)
	}
	if *jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{"limits": lim, "results": results, "incremental": inc})
		return
	}
	printMarkdown(lim, results)
	printIncremental(inc, results)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}

func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v * mult, err
}

// The fill content, the same as the guest computes (testdata/guests/src/fill.s).
const (
	firstPage = 1024 // 4 MiB
	seed      = 0x1234567
)

func pageChosen(p, permille uint64) bool {
	return ((p*0x9e3779b97f4a7c15)>>32)%1000 < permille
}

func fillPage(p uint64, out []byte) {
	x := (p*0x2545f4914f6cdd1d ^ seed) | 1
	for i := 0; i < 512; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(out[8*i:], x)
	}
}

// memoryFile writes QEMU's RAM image: the fill guest's content.
func memoryFile(path string, s scenario) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(s.RAM)); err != nil {
		return err
	}
	page := make([]byte, 4096)
	for p := uint64(firstPage); p < s.RAM/4096; p++ {
		if pageChosen(p, s.Permille) {
			fillPage(p, page)
			if _, err := f.WriteAt(page, int64(p*4096)); err != nil {
				return err
			}
		}
	}
	return nil
}

// patchedGuest writes a copy of the fill guest with its parameters set.
func patchedGuest(dir, guest string, s scenario) (string, error) {
	return setFillParams(filepath.Join(dir, "fill-guest"), guest, s.Permille, seed, 1) // listen: passes on request
}

func freshImage(dir string) (string, error) {
	p := filepath.Join(dir, "disk.qcow2")
	os.Remove(p)
	return p, block.CreateQcow2(p, 64<<20, block.CreateOptions{})
}

func runSnapvmm(dir, bin, guest string, s scenario, loadMode, saveMode string) (figures, error) {
	g, err := patchedGuest(dir, guest, s)
	if err != nil {
		return figures{}, err
	}
	img, err := freshImage(dir)
	if err != nil {
		return figures{}, err
	}
	sock := filepath.Join(dir, "snapvmm.sock")
	// A previous run's socket must not count as this one's.
	os.Remove(sock)
	// The console is on stdio: the bench asks the guest for passes over its
	// RAM by writing to it, and reads the answers.
	cmd := exec.Command(bin, "run", "--kernel", g, "--memory", strconv.FormatUint(s.RAM>>20, 10)+"M",
		"--serial", "stdio", "--drive", "file="+img+",node-name=disk0,if=none", "--qmp", "unix:"+sock,
		"--load-mode", loadMode, "--save-mode", saveMode, "--log-level", snapvmmLog, "--cpu-affinity", vcpuAffinity)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if snapvmmLog != "error" {
		cmd.Stderr = io.MultiWriter(&stderr, os.Stderr)
	}
	con := &console{}
	cmd.Stdout = con
	in, err := cmd.StdinPipe()
	if err != nil {
		return figures{}, err
	}
	if err := cmd.Start(); err != nil {
		return figures{}, err
	}
	defer func() { in.Close(); cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Minute)
	for !strings.Contains(con.String(), "fill ready") {
		if time.Now().After(deadline) {
			return figures{}, fmt.Errorf("the fill guest never got ready: %s", strings.TrimSpace(stderr.String()))
		}
		if exited(cmd) {
			return figures{}, fmt.Errorf("snapvmm exited: %s", strings.TrimSpace(stderr.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	touch := func() (uint64, error) {
		mark := len(con.String())
		if _, err := in.Write([]byte("t")); err != nil {
			return 0, err
		}
		deadline := time.Now().Add(30 * time.Minute)
		for time.Now().Before(deadline) {
			if m := sweepLine.FindStringSubmatch(con.String()[mark:]); m != nil {
				return strconv.ParseUint(m[1], 10, 64)
			}
			if exited(cmd) {
				return 0, errors.New("snapvmm exited during a pass over guest RAM")
			}
			time.Sleep(time.Millisecond)
		}
		return 0, errors.New("the guest never finished its pass over RAM")
	}
	f, err := measure(sock, img, cmd.Process.Pid, false, loadMode == "lazy", touch)
	return f, withStderr(err, "snapvmm", &stderr)
}

var sweepLine = regexp.MustCompile(`sweep (\d+)\r?\n`)

// console collects a VMM's standard output.
type console struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// withStderr adds what the VMM printed to a failure, so that a table cell
// saying "not measured" says why.
func withStderr(err error, who string, stderr *bytes.Buffer) error {
	if err == nil || stderr.Len() == 0 {
		return err
	}
	return fmt.Errorf("%w (%s said: %s)", err, who, strings.TrimSpace(stderr.String()))
}

func exited(cmd *exec.Cmd) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return true
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	return bytes.Contains(b, []byte("State:\tZ"))
}

func runQEMU(dir, bin string, s scenario) (figures, error) {
	if _, err := exec.LookPath(bin); err != nil {
		return figures{}, fmt.Errorf("%s not installed", bin)
	}
	mem := filepath.Join(dir, "ram.img")
	if err := memoryFile(mem, s); err != nil {
		return figures{}, err
	}
	syscall.Sync() // the memory file's writeback must not overlap QEMU's save
	img, err := freshImage(dir)
	if err != nil {
		return figures{}, err
	}
	sock := filepath.Join(dir, "qemu.sock")
	os.Remove(sock)
	size := strconv.FormatUint(s.RAM>>20, 10) + "M"
	cmd := exec.Command(bin, "-S", "-display", "none", "-nodefaults", "-machine", "pc,memory-backend=ram0", "-m", size,
		"-object", "memory-backend-file,id=ram0,size="+size+",mem-path="+mem+",share=off",
		"-blockdev", "driver=file,filename="+img+",node-name=f0", "-blockdev", "driver=qcow2,file=f0,node-name=disk0",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return figures{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	f, err := measure(sock, img, cmd.Process.Pid, true, false, nil)
	return f, withStderr(err, "qemu", &stderr)
}

// measure runs snapshot-save then snapshot-load on a running VM. touch,
// where the guest offers it, times the guest's pass over its RAM: once
// before the save, once right after the load.
func measure(sock, img string, pid int, cont, lazy bool, touch func() (uint64, error)) (figures, error) {
	cl, err := qmp.Dial(sock)
	if err != nil {
		return figures{}, err
	}
	defer cl.Close()
	if cont {
		if _, err := cl.Execute("cont", nil); err != nil {
			return figures{}, err
		}
	}
	var f figures
	var before uint64
	if touch != nil {
		// The first pass also faults in pages the guest never touched:
		// the second is the steady state.
		for i := 0; i < 2; i++ {
			if before, err = touch(); err != nil {
				return f, err
			}
		}
	}
	args := map[string]any{"job-id": "bench-save", "tag": "b", "vmstate": "disk0", "devices": []any{"disk0"}}
	save, err := timedJob(cl, "snapshot-save", args)
	if err != nil {
		return f, err
	}
	f.SaveWall, f.SavePause = save.wall, save.pause
	if used, err := diskUsed(img); err == nil {
		f.ImageUse = used
	}
	r, err := cl.Execute("query-named-block-nodes", nil)
	if err != nil {
		return f, err
	}
	for _, n := range r.([]any) {
		m := n.(map[string]any)
		img, _ := m["image"].(map[string]any)
		snaps, _ := img["snapshots"].([]any)
		for _, sn := range snaps {
			if v, ok := sn.(map[string]any)["vm-state-size"].(float64); ok && v > 0 {
				f.VMStateSize = uint64(v)
			}
		}
	}
	args["job-id"] = "bench-load"
	load, err := timedJob(cl, "snapshot-load", args)
	if err != nil {
		return f, err
	}
	f.LoadWall, f.LoadPause, f.LoadRunning, f.LoadPopulated = load.wall, load.pause, load.running, load.wall
	type when struct {
		t   time.Time
		err error
	}
	populated := make(chan when, 1)
	if lazy && load.populated == 0 {
		go func() {
			t, err := waitPopulated(cl)
			populated <- when{t, err}
		}()
	}
	if touch != nil {
		after, err := touch()
		if err != nil {
			return f, err
		}
		if before > 0 {
			f.TouchAfterLoad = float64(after) / float64(before)
		}
	}
	switch {
	case lazy && load.populated > 0:
		f.LoadPopulated = load.populated
	case lazy:
		w := <-populated
		if w.err != nil {
			return f, w.err
		}
		f.LoadPopulated = w.t.Sub(load.start)
	}
	f.PeakRSS = peakRSS(pid)
	cl.Execute("quit", nil)
	return f, nil
}

func eventTime(m map[string]any) time.Time {
	ts, _ := m["timestamp"].(map[string]any)
	s, _ := ts["seconds"].(float64)
	us, _ := ts["microseconds"].(float64)
	return time.Unix(int64(s), int64(us)*1000)
}

// waitPopulated waits for a lazy load's RAM_POPULATED event and returns
// its time.
func waitPopulated(cl *qmp.Client) (time.Time, error) {
	for {
		e, err := cl.NextEvent(30 * time.Minute)
		if err != nil {
			return time.Time{}, fmt.Errorf("waiting for guest RAM to be populated: %w", err)
		}
		switch e["event"] {
		case "__org.snapvmm_RAM_POPULATED":
			return eventTime(e), nil
		case "__org.snapvmm_RAM_LOAD_FAILED":
			return time.Time{}, fmt.Errorf("lazy load failed: %v", e["data"])
		}
	}
}

// jobTimes are a job's timings from its command: to the concluded event
// (wall), to RESUME (running), from STOP to RESUME (pause), and to a lazy
// load's RAM_POPULATED event when it came before the job concluded.
type jobTimes struct {
	start                           time.Time
	wall, pause, running, populated time.Duration
}

// timedJob runs a job to its end and dismisses it.
func timedJob(cl *qmp.Client, cmd string, args map[string]any) (jobTimes, error) {
	id := args["job-id"].(string)
	t := jobTimes{start: time.Now()}
	if _, err := cl.Execute(cmd, args); err != nil {
		return t, err
	}
	var stop, resume time.Time
	for {
		e, err := cl.NextEvent(30 * time.Minute)
		if err != nil {
			return t, err
		}
		switch e["event"] {
		case "STOP":
			stop = eventTime(e)
		case "RESUME":
			resume = eventTime(e)
		case "__org.snapvmm_RAM_POPULATED":
			t.populated = eventTime(e).Sub(t.start)
		case "JOB_STATUS_CHANGE":
			d, _ := e["data"].(map[string]any)
			if d["id"] == id && d["status"] == "concluded" {
				t.wall = time.Since(t.start)
				if !stop.IsZero() && !resume.IsZero() {
					t.pause = resume.Sub(stop)
					t.running = resume.Sub(t.start)
				}
				jobs, _ := cl.Execute("query-jobs", nil)
				for _, j := range jobs.([]any) {
					jm := j.(map[string]any)
					if jm["id"] == id && jm["error"] != nil {
						return t, fmt.Errorf("%s: %v", cmd, jm["error"])
					}
				}
				cl.Execute("job-dismiss", map[string]any{"id": id})
				return t, nil
			}
		}
	}
}

func peakRSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
