package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snapvmm/snapvmm/block"
	"github.com/snapvmm/snapvmm/qmp"
)

// incScenario is a fill guest of RAM bytes with 90% of its pages filled,
// saved again and again with snapshot-save, reading all of its RAM between
// saves as a workload does.
type incScenario struct {
	RAM uint64 `json:"ram_bytes"`
}

const (
	incFillPermille  = 900
	incDirtyPermille = 10 // 1% of the pages, in 64 KiB groups
	incChain         = 20
)

// incFigures are one incremental run's measurements: the full first save,
// the second save after the guest read all of its RAM, a save after it
// rewrote 1% of its pages and read all of them, and the image space of a
// chain of saves, each after such a pass.
type incFigures struct {
	FirstSave  time.Duration `json:"first_save_ns"`
	ReadSave   time.Duration `json:"second_save_after_reading_ram_ns"`
	DirtySave  time.Duration `json:"save_after_1pct_dirtied_ns"`
	FullDisk   uint64        `json:"disk_one_full_save_bytes"`
	ChainDisk  uint64        `json:"disk_chain_bytes"`
	ChainSaves int           `json:"chain_saves"`
}

type incResult struct {
	Scenario incScenario `json:"scenario"`
	Figures  *incFigures `json:"figures,omitempty"`
	Error    string      `json:"error,omitempty"`
}

// setFillParams writes a copy of the fill guest to path with the first
// len(params) words of fill_params set (permille, seed, listen,
// dirty_permille).
func setFillParams(path, guest string, params ...uint64) (string, error) {
	b, err := os.ReadFile(guest)
	if err != nil {
		return "", err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	syms, err := f.Symbols()
	if err != nil {
		return "", err
	}
	for _, sym := range syms {
		if sym.Name != "fill_params" {
			continue
		}
		sec := f.Sections[sym.Section]
		off := sec.Offset + sym.Value - sec.Addr
		for i, v := range params {
			binary.LittleEndian.PutUint64(b[off+8*uint64(i):], v)
		}
		return path, os.WriteFile(path, b, 0o644)
	}
	return "", errors.New("fill guest has no fill_params symbol")
}

// diskUsed is the space the file takes on disk.
func diskUsed(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return uint64(st.Blocks) * 512, nil
}

// runIncremental boots the listening fill guest under snapvmm and saves it
// incChain times: the second save after the guest read all of its RAM,
// each later one after it rewrote 1% of its pages and then read all of
// them. Reads change nothing, but they are what defeated dirty tracking
// (docs/incremental-snapshots.md): a guest that idles between saves hides
// it.
func runIncremental(dir, bin, guest string, s incScenario) (incFigures, error) {
	var f incFigures
	g, err := setFillParams(filepath.Join(dir, "fill-guest-listen"), guest, incFillPermille, seed, 1, incDirtyPermille)
	if err != nil {
		return f, err
	}
	img, err := freshImage(dir)
	if err != nil {
		return f, err
	}
	empty, err := diskUsed(img)
	if err != nil {
		return f, err
	}
	out, sock := filepath.Join(dir, "serial-inc.txt"), filepath.Join(dir, "snapvmm-inc.sock")
	os.Remove(sock)
	console, err := os.Create(out)
	if err != nil {
		return f, err
	}
	defer console.Close()
	cmd := exec.Command(bin, "run", "--kernel", g, "--memory", strconv.FormatUint(s.RAM>>20, 10)+"M",
		"--serial", "stdio", "--drive", "file="+img+",node-name=disk0,if=none", "--qmp", "unix:"+sock, "--log-level", "error",
		"--cpu-affinity", vcpuAffinity)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = console, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return f, err
	}
	if err := cmd.Start(); err != nil {
		return f, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitConsole(cmd, out, "fill ready", 1, &stderr); err != nil {
		return f, err
	}
	cl, err := qmp.Dial(sock)
	if err != nil {
		return f, err
	}
	defer cl.Close()
	save := func(tag string) (time.Duration, error) {
		args := map[string]any{"job-id": "inc-" + tag, "tag": tag, "vmstate": "disk0", "devices": []any{"disk0"}}
		t, err := timedJob(cl, "snapshot-save", args)
		return t.wall, withStderr(err, "snapvmm", &stderr)
	}
	passes := 0
	for i := 1; i <= incChain; i++ {
		if i > 1 {
			if err := incPass(cmd, stdin, out, i > 2, &passes, &stderr); err != nil {
				return f, err
			}
		}
		d, err := save(fmt.Sprintf("c%d", i))
		if err != nil {
			return f, err
		}
		switch i {
		case 1:
			f.FirstSave = d
			used, err := diskUsed(img)
			if err != nil {
				return f, err
			}
			f.FullDisk = used - empty
		case 2:
			f.ReadSave = d
		case 3:
			f.DirtySave = d
		}
	}
	used, err := diskUsed(img)
	if err != nil {
		return f, err
	}
	f.ChainDisk, f.ChainSaves = used-empty, incChain
	cl.Execute("quit", nil)
	return f, nil
}

// incPass has the guest rewrite 1% of its pages first where write is set,
// then read one word of every page; passes counts the passes made.
func incPass(cmd *exec.Cmd, stdin io.Writer, out string, write bool, passes *int, stderr *bytes.Buffer) error {
	*passes++
	if write {
		if _, err := io.WriteString(stdin, "d"); err != nil {
			return err
		}
		if err := waitConsole(cmd, out, "dirtied", *passes-1, stderr); err != nil {
			return err
		}
	}
	if _, err := io.WriteString(stdin, "t"); err != nil {
		return err
	}
	return waitConsole(cmd, out, "sweep ", *passes, stderr)
}

// waitConsole waits until the guest printed want n times.
func waitConsole(cmd *exec.Cmd, path, want string, n int, stderr *bytes.Buffer) error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), want) >= n {
			return nil
		}
		if exited(cmd) {
			return fmt.Errorf("snapvmm exited before the guest printed %q: %s", want, strings.TrimSpace(stderr.String()))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest never printed %q", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// printIncremental prints the incremental table beside QEMU's full save of
// the same RAM (the 90% scenario of the main table, where it ran).
func printIncremental(inc []incResult, results []result) {
	if len(inc) == 0 {
		return
	}
	fmt.Printf("\nIncremental saves: the fill guest (%d%% of its pages filled) saved %d times; before the second save it reads one word of every page, before each later one it rewrites %d%% of its pages (64 KiB at a time, spread over RAM) and then reads every page. QEMU always saves all of RAM: its column is its full save of the same RAM from the table above.\n\n",
		incFillPermille/10, incChain, incDirtyPermille/10)
	fmt.Println("| RAM | figure | snapvmm | QEMU 7.2 full save | snapvmm/QEMU |")
	fmt.Println("|---|---|---|---|---|")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }
	for _, r := range inc {
		name := block.SizeToStr(r.Scenario.RAM)
		if r.Figures == nil {
			fmt.Printf("| %s | not measured: %s | | | |\n", name, r.Error)
			continue
		}
		f := r.Figures
		var q *figures
		for _, x := range results {
			if x.VMM == "qemu" && x.Scenario.RAM == r.Scenario.RAM && x.Scenario.Permille == incFillPermille {
				q = x.Median
			}
		}
		cell := func(label string, d time.Duration) {
			qs, ratio := "n/a", "n/a"
			if q != nil && q.SaveWall > 0 {
				qs, ratio = ms(q.SaveWall), fmt.Sprintf("%.3f", float64(d)/float64(q.SaveWall))
			}
			fmt.Printf("| %s | %s | %s | %s | %s |\n", name, label, ms(d), qs, ratio)
		}
		cell("first save (full)", f.FirstSave)
		cell("second save (guest read all RAM)", f.ReadSave)
		cell("save after 1% of pages dirtied, all read", f.DirtySave)
		fmt.Printf("| %s | disk of %d saves / disk of one full save | %s / %s = %.3fx | | |\n", name, f.ChainSaves,
			block.SizeToStr(f.ChainDisk), block.SizeToStr(f.FullDisk), float64(f.ChainDisk)/float64(max(f.FullDisk, 1)))
	}
}
