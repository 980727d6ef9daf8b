package vmm

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/snapvmm/snapvmm/kvm"
)

// checkAffinity refuses host CPUs this process may not run on, before
// anything is built: sched_setaffinity would only fail later, on the
// vCPU's thread.
func checkAffinity(cpus []int) error {
	if len(cpus) == 0 {
		return nil
	}
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return fmt.Errorf("vCPU affinity: read this process's CPUs: %w", err)
	}
	for _, c := range cpus {
		if c < 0 || c >= len(allowed)*64 || !allowed.IsSet(c) {
			return fmt.Errorf("vCPU affinity: host CPU %d is not one this process may run on (%s)", c, cpuList(&allowed))
		}
	}
	return nil
}

// pinThread applies Config.VCPUAffinity to the calling vCPU thread.
func (vm *VM) pinThread(c *kvm.VCPU) error {
	if len(vm.cfg.VCPUAffinity) == 0 {
		return nil
	}
	var set unix.CPUSet
	for _, cpu := range vm.cfg.VCPUAffinity {
		set.Set(cpu)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("vCPU %d: pin to host CPUs %s: %w", c.ID(), cpuList(&set), err)
	}
	return nil
}

// cpuList writes a CPU set the way Linux's cpulist files do ("0-3,6").
func cpuList(s *unix.CPUSet) string {
	var parts []string
	n := len(s) * 64
	for c := 0; c < n; c++ {
		if !s.IsSet(c) {
			continue
		}
		end := c
		for end+1 < n && s.IsSet(end+1) {
			end++
		}
		if end == c {
			parts = append(parts, strconv.Itoa(c))
		} else {
			parts = append(parts, strconv.Itoa(c)+"-"+strconv.Itoa(end))
		}
		c = end
	}
	return strings.Join(parts, ",")
}
