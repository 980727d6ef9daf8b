package vmm

import "github.com/snapvmm/snapvmm/kvm"

// cpuidFor tailors the host's supported CPUID for vCPU id of n: the APIC id
// in leaf 1 and the x2APIC id in the topology leaves (0xb, 0x1f), the
// hypervisor bit, and the KVM paravirtual signature leaf, so that SMP guests
// find distinct CPUs and Linux finds kvmclock.
func cpuidFor(base []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(base)+2)
	haveSig := false
	for _, e := range base {
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(n&0xff)<<16
			e.ECX |= 1 << 31 // running under a hypervisor
			if n > 1 {
				e.EDX |= 1 << 28 // HTT: the logical count field is valid
			}
		case 0xb, 0x1f:
			e.EDX = uint32(id)
		case 0x40000000:
			haveSig = true
			if e.EAX < 0x40000001 {
				e.EAX = 0x40000001
			}
			e.EBX, e.ECX, e.EDX = kvmSig[0], kvmSig[1], kvmSig[2]
		}
		out = append(out, e)
	}
	if !haveSig {
		out = append(out, kvm.CPUIDEntry{Function: 0x40000000, EAX: 0x40000001,
			EBX: kvmSig[0], ECX: kvmSig[1], EDX: kvmSig[2]})
	}
	return out
}

// kvmSig is "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
var kvmSig = [3]uint32{0x4b4d564b, 0x564b4d56, 0x0000004d}
