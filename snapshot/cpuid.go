package snapshot

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/snapvmm/snapvmm/kvm"
)

// CPUIDDigest is the SHA-256 of CPUID entries as every format records it
// (cpuid_sha256): every field of every entry, little endian, in order.
func CPUIDDigest(ents []kvm.CPUIDEntry) string {
	h := sha256.New()
	for _, e := range ents {
		for _, v := range []uint32{e.Function, e.Index, e.Flags, e.EAX, e.EBX, e.ECX, e.EDX} {
			h.Write(binary.LittleEndian.AppendUint32(nil, v))
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// CPUIDFeatureReg is one CPUID register whose bits are features: a set bit
// in a saved stream that this host does not set means the guest may use an
// instruction or a state component that would fault here.
type CPUIDFeatureReg struct {
	Leaf    uint32 `json:"leaf"`
	Subleaf uint32 `json:"subleaf"`
	Reg     string `json:"reg"` // "eax", "ebx", "ecx" or "edx"
	Value   uint32 `json:"value"`
}

// featureReg names a feature register and the bits of it that are not
// features of the host but state of the guest (OSXSAVE, OSPKE follow CR4).
type featureReg struct {
	leaf, subleaf uint32
	reg           string
	dynamic       uint32
	names         map[uint32]string
}

// bitNames turns a space-separated list of names, bit 0 first, into a map;
// "-" is a bit without a name here.
func bitNames(list string) map[uint32]string {
	m := map[uint32]string{}
	for i, n := range strings.Fields(list) {
		if n != "-" {
			m[uint32(i)] = n
		}
	}
	return m
}

// featureRegs are the registers recorded and compared, with the names
// Linux gives their bits in /proc/cpuinfo.
var featureRegs = []featureReg{
	{1, 0, "ecx", 1 << 27, bitNames("pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 cid sdbg fma cx16 xtpr pdcm - pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave osxsave avx f16c rdrand hypervisor")},
	{1, 0, "edx", 0, bitNames("fpu vme de pse tsc msr pae mce cx8 apic - sep mtrr pge mca cmov pat pse36 pn clflush - ds acpi mmx fxsr sse sse2 ss ht tm ia64 pbe")},
	{7, 0, "ebx", 0, bitNames("fsgsbase tsc_adjust sgx bmi1 hle avx2 fdp_excptn_only smep bmi2 erms invpcid rtm cqm zero_fcs_fds mpx rdt_a avx512f avx512dq rdseed adx smap avx512ifma pcommit clflushopt clwb intel_pt avx512pf avx512er avx512cd sha_ni avx512bw avx512vl")},
	{7, 0, "ecx", 1 << 4, bitNames("prefetchwt1 avx512vbmi umip pku ospke waitpkg avx512_vbmi2 cet_ss gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq - la57 - - - - - rdpid key_locker bus_lock_detect cldemote - movdiri movdir64b enqcmd sgx_lc pks")},
	{7, 0, "edx", 0, bitNames("- - avx512_4vnniw avx512_4fmaps fsrm uintr - - avx512_vp2intersect srbds_ctrl md_clear rtm_always_abort - tsx_force_abort serialize hybrid_cpu tsxldtrk - pconfig arch_lbr ibt - amx_bf16 avx512_fp16 amx_tile amx_int8 spec_ctrl intel_stibp flush_l1d arch_capabilities core_capabilities spec_ctrl_ssbd")},
	{7, 1, "eax", 0, bitNames("- - - - avx_vnni avx512_bf16 - - - - fzrm fsrs fsrc - - - - - - - - amx_fp16 - - - - lam")},
	{0xd, 0, "eax", 0, bitNames("xstate_x87 xstate_sse xstate_avx xstate_bndregs xstate_bndcsr xstate_opmask xstate_zmm_hi256 xstate_hi16_zmm - xstate_pkru - - - - - - - xstate_xtilecfg xstate_xtiledata")},
	{0xd, 0, "edx", 0, nil},
	{0xd, 1, "eax", 0, bitNames("xsaveopt xsavec xgetbv1 xsaves xfd")},
	{0x80000001, 0, "ecx", 0, bitNames("lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs xop skinit wdt - lwp fma4 tce - nodeid_msr - tbm topoext perfctr_core perfctr_nb - bpext ptsc perfctr_llc mwaitx")},
	{0x80000001, 0, "edx", 0, bitNames("- - - - - - - - - - - syscall - - - - - - - - nx - mmxext - - fxsr_opt pdpe1gb rdtscp - lm 3dnowext 3dnow")},
	{0x80000008, 0, "ebx", 0, bitNames("clzero irperf xsaveerptr - rdpru - - - - wbnoinvd - - amd_ibpb - amd_ibrs amd_stibp - - - - - - - - amd_ssbd virt_ssbd")},
	{0x40000001, 0, "eax", 0, bitNames("kvmclock nop_io_delay mmu_op kvmclock2 async_pf steal_time pv_eoi pv_unhalt - pv_tlb_flush async_pf_vmexit pv_send_ipi poll_control pv_sched_yield async_pf_int msi_ext_dest_id")},
}

// cpuidValue is register reg of leaf.subleaf, 0 when the leaf is absent.
// A leaf whose index is not significant answers every subleaf.
func cpuidValue(ents []kvm.CPUIDEntry, leaf, subleaf uint32, reg string) uint32 {
	const significantIndex = 1 // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
	for _, e := range ents {
		if e.Function != leaf || e.Flags&significantIndex != 0 && e.Index != subleaf {
			continue
		}
		switch reg {
		case "eax":
			return e.EAX
		case "ebx":
			return e.EBX
		case "ecx":
			return e.ECX
		case "edx":
			return e.EDX
		}
	}
	return 0
}

// cpuidFeatures records the feature registers of ents.
func cpuidFeatures(ents []kvm.CPUIDEntry) []CPUIDFeatureReg {
	out := make([]CPUIDFeatureReg, 0, len(featureRegs))
	for _, f := range featureRegs {
		out = append(out, CPUIDFeatureReg{Leaf: f.leaf, Subleaf: f.subleaf, Reg: f.reg, Value: cpuidValue(ents, f.leaf, f.subleaf, f.reg)})
	}
	return out
}

// compareCPUID checks a saved CPUID against this host's: an error
// (ErrMismatch) names every feature the guest would lose; a warning says
// the CPUID differs without losing a feature, or cannot be checked.
func compareCPUID(saved Fingerprint, cur []kvm.CPUIDEntry) (warning string, err error) {
	if saved.CPUID == CPUIDDigest(cur) {
		return "", nil
	}
	if len(saved.CPUIDFeatures) == 0 {
		return "the VM state was saved on a host with a different CPUID by a snapvmm that did not record its features: " +
			"they cannot be checked, and a guest using one this host lacks will fault", nil
	}
	var lost []string
	for _, s := range saved.CPUIDFeatures {
		var f featureReg
		for _, k := range featureRegs {
			if k.leaf == s.Leaf && k.subleaf == s.Subleaf && k.reg == s.Reg {
				f = k
			}
		}
		missing := s.Value &^ cpuidValue(cur, s.Leaf, s.Subleaf, s.Reg) &^ f.dynamic
		for b := uint32(0); b < 32; b++ {
			if missing&(1<<b) == 0 {
				continue
			}
			if n, ok := f.names[b]; ok {
				lost = append(lost, n)
			} else {
				lost = append(lost, fmt.Sprintf("CPUID %#x.%d %s bit %d", s.Leaf, s.Subleaf, strings.ToUpper(s.Reg), b))
			}
		}
	}
	if len(lost) > 0 {
		return "", fmt.Errorf("%w: the saved guest CPU has features this host lacks: %s", ErrMismatch, strings.Join(lost, ", "))
	}
	return "the CPUID of this host differs from the saved VM's (sha256 " + saved.CPUID + "), but no feature the guest saw is missing", nil
}
