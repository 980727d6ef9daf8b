package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize reads a size the way QEMU's -m does: a number with an optional
// K, M, G or T suffix (powers of 1024, optionally followed by "B" or "iB");
// a bare number means MiB.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(strings.TrimSuffix(u, "IB"), "B")
	mult := uint64(1 << 20)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult, u = 1<<10, u[:n-1]
		case 'M':
			mult, u = 1<<20, u[:n-1]
		case 'G':
			mult, u = 1<<30, u[:n-1]
		case 'T':
			mult, u = 1<<40, u[:n-1]
		}
	}
	v, err := strconv.ParseUint(u, 10, 64)
	if err != nil || u == "" {
		return 0, fmt.Errorf("size %q: not a number with an optional K, M, G or T suffix", s)
	}
	if v == 0 {
		return 0, fmt.Errorf("size %q: must be positive", s)
	}
	if v > (^uint64(0))/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return v * mult, nil
}

// parseCPUList reads a CPU list the way Linux's cpulist files and taskset
// -c write it ("0-3,6"); empty means none.
func parseCPUList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	const most = 1 << 16
	seen := map[int]bool{}
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b >= most {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number or a range like 2-5", s, part)
		}
		for c := a; c <= b; c++ {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}
