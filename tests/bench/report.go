package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/snapvmm/snapvmm/block"
)

// What make bench prints: the machine's limits, the medians and the table
// (main.go runs the scenarios).

// measureLimits times sequential writes to the images' file system and a
// large memory copy.
func measureLimits(dir string) limits {
	const size = 256 << 20
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	p := filepath.Join(dir, "bw.tmp")
	f, err := os.Create(p)
	var l limits
	if err == nil {
		start := time.Now()
		for n := 0; n < size; n += len(buf) {
			f.Write(buf)
		}
		f.Sync()
		l.WriteBytesPerSec = size / time.Since(start).Seconds()
		f.Close()
		os.Remove(p)
	}
	src, dst := make([]byte, size), make([]byte, size)
	for i := 0; i < size; i += 4096 {
		src[i], dst[i] = 1, 1 // fault the pages in before timing
	}
	start := time.Now()
	copy(dst, src)
	l.MemcpyBytesPerSec = size / time.Since(start).Seconds()
	return l
}

func median(all []figures) figures {
	pick := func(get func(figures) float64) float64 {
		v := make([]float64, len(all))
		for i, f := range all {
			v[i] = get(f)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return figures{
		SaveWall:       time.Duration(pick(func(f figures) float64 { return float64(f.SaveWall) })),
		SavePause:      time.Duration(pick(func(f figures) float64 { return float64(f.SavePause) })),
		LoadWall:       time.Duration(pick(func(f figures) float64 { return float64(f.LoadWall) })),
		LoadPause:      time.Duration(pick(func(f figures) float64 { return float64(f.LoadPause) })),
		LoadRunning:    time.Duration(pick(func(f figures) float64 { return float64(f.LoadRunning) })),
		LoadPopulated:  time.Duration(pick(func(f figures) float64 { return float64(f.LoadPopulated) })),
		TouchAfterLoad: pick(func(f figures) float64 { return f.TouchAfterLoad }),
		VMStateSize:    uint64(pick(func(f figures) float64 { return float64(f.VMStateSize) })),
		PeakRSS:        uint64(pick(func(f figures) float64 { return float64(f.PeakRSS) })),
		ImageUse:       uint64(pick(func(f figures) float64 { return float64(f.ImageUse) })),
	}
}

func printMarkdown(l limits, results []result) {
	fmt.Printf("Machine limits: sequential write %s/s to the image file system, memory copy %s/s.\n\n",
		block.SizeToStr(uint64(l.WriteBytesPerSec)), block.SizeToStr(uint64(l.MemcpyBytesPerSec)))
	fmt.Println("snapvmm loads lazily by default (--load-mode lazy: the guest runs once all but RAM is restored, RAM")
	fmt.Println("follows on demand); snapvmm eager and QEMU copy all of RAM first. Load rows marked \"/ QEMU load\"")
	fmt.Println("divide by QEMU's whole load (its time to running and to populated RAM). snapvmm saves live by default")
	fmt.Println("(the guest runs while its RAM is written); snapvmm paused is --save-mode paused, as QEMU saves.")
	fmt.Println()
	fmt.Println("| scenario | figure | snapvmm | snapvmm eager | snapvmm paused | QEMU 7.2 | snapvmm/QEMU | eager/QEMU | snapvmm/paused |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	byKey := map[string]result{}
	var order []scenario
	for _, r := range results {
		byKey[r.Scenario.String()+r.VMM] = r
		if r.VMM == "snapvmm" {
			order = append(order, r.Scenario)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	msText := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	qemuLoad := func(f figures) float64 { return ms(f.LoadWall) }
	rows := []struct {
		name string
		get  func(figures) float64
		unit func(float64) string
		// qemu, when set, is what the row is compared with in QEMU's
		// figures (otherwise the same figure).
		qemu func(figures) float64
	}{
		{"save wall (ms)", func(f figures) float64 { return ms(f.SaveWall) }, msText, nil},
		{"save pause (ms)", func(f figures) float64 { return ms(f.SavePause) }, msText, nil},
		{"load wall (ms)", func(f figures) float64 { return ms(f.LoadWall) }, msText, nil},
		{"load pause (ms)", func(f figures) float64 { return ms(f.LoadPause) }, msText, nil},
		{"load: time to running (ms) / QEMU load", func(f figures) float64 { return ms(f.LoadRunning) }, msText, qemuLoad},
		{"load: time to populated RAM (ms) / QEMU load", func(f figures) float64 { return ms(f.LoadPopulated) }, msText, qemuLoad},
		{"guest's pass over RAM after load (x steady)", func(f figures) float64 { return f.TouchAfterLoad },
			func(v float64) string { return fmt.Sprintf("%.2f", v) }, nil},
		{"vmstate size (logical)", func(f figures) float64 { return float64(f.VMStateSize) }, func(v float64) string { return block.SizeToStr(uint64(v)) }, nil},
		{"image disk use after save", func(f figures) float64 { return float64(f.ImageUse) }, func(v float64) string { return block.SizeToStr(uint64(v)) }, nil},
		{"peak RSS", func(f figures) float64 { return float64(f.PeakRSS) }, func(v float64) string { return block.SizeToStr(uint64(v)) }, nil},
		{"save rate / write limit", func(f figures) float64 {
			if f.SaveWall == 0 || l.WriteBytesPerSec == 0 {
				return 0
			}
			return float64(f.ImageUse) / f.SaveWall.Seconds() / l.WriteBytesPerSec
		}, func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }, nil},
	}
	cell := func(r result, get func(figures) float64, unit func(float64) string) (string, float64) {
		if r.Median == nil {
			return "n/a", 0
		}
		v := get(*r.Median)
		if v == 0 {
			return "n/a", 0
		}
		return unit(v), v
	}
	ratio := func(a, b float64) string {
		if a > 0 && b > 0 {
			return fmt.Sprintf("%.3f", a/b)
		}
		return "n/a"
	}
	for _, s := range order {
		lazy, eager, q := byKey[s.String()+"snapvmm"], byKey[s.String()+"snapvmm-eager"], byKey[s.String()+"qemu"]
		paused := byKey[s.String()+"snapvmm-paused"]
		for _, row := range rows {
			a, av := cell(lazy, row.get, row.unit)
			e, ev := cell(eager, row.get, row.unit)
			p, pv := cell(paused, row.get, row.unit)
			b, bv := cell(q, row.get, row.unit)
			if row.qemu != nil {
				_, bv = cell(q, row.qemu, row.unit)
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s, row.name, a, e, p, b, ratio(av, bv), ratio(ev, bv), ratio(av, pv))
		}
	}
	for _, r := range results {
		if r.Error != "" {
			fmt.Printf("\n%s, %s: not measured: %s\n", r.Scenario, r.VMM, r.Error)
		}
	}
}
