package kvm

import (
	"testing"
	"unsafe"
)

// The expected numbers are the kernel's (linux/kvm.h on x86-64), written
// out so that a wrong size or direction in an encoding cannot go unnoticed.
func TestIoctlNumbers(t *testing.T) {
	for name, c := range map[string]struct{ got, want uintptr }{
		"KVM_RUN":                    {ioRun, 0xae80},
		"KVM_GET_REGS":               {ioGetRegs, 0x8090ae81},
		"KVM_SET_REGS":               {ioSetRegs, 0x4090ae82},
		"KVM_GET_SREGS":              {ioGetSregs, 0x8138ae83},
		"KVM_SET_SREGS":              {ioSetSregs, 0x4138ae84},
		"KVM_SET_USER_MEMORY_REGION": {ioSetUserMemory, 0x4020ae46},
		"KVM_IRQ_LINE":               {ioIRQLine, 0x4008ae61},
		"KVM_GET_LAPIC":              {ioGetLAPIC, 0x8400ae8e},
		"KVM_SET_LAPIC":              {ioSetLAPIC, 0x4400ae8f},
		"KVM_SET_CPUID2":             {ioSetCPUID2, 0x4008ae90},
		"KVM_GET_SUPPORTED_CPUID":    {ioGetSupportedCPUID, 0xc008ae05},
		"KVM_GET_MSR_INDEX_LIST":     {ioGetMSRIndexList, 0xc004ae02},
		"KVM_CREATE_PIT2":            {ioCreatePIT2, 0x4040ae77},
		"KVM_GET_MSRS":               {ioGetMSRs, 0xc008ae88},
		"KVM_SET_MSRS":               {ioSetMSRs, 0x4008ae89},
		"KVM_TRANSLATE":              {ioTranslate, 0xc018ae85},
		"KVM_GET_MP_STATE":           {ioGetMPState, 0x8004ae98},
		"KVM_SET_MP_STATE":           {ioSetMPState, 0x4004ae99},
		"KVM_SET_IDENTITY_MAP_ADDR":  {ioSetIdentityMap, 0x4008ae48},
		"KVM_GET_SREGS2":             {ioGetSregs2, 0x8140aecc},
		"KVM_SET_SREGS2":             {ioSetSregs2, 0x4140aecd},
		"KVM_GET_XSAVE":              {ioGetXSave, 0x9000aea4},
		"KVM_GET_XSAVE2":             {ioGetXSave2(8192), 0x9000aecf},
		"KVM_SET_XSAVE":              {ioSetXSave(8192), 0x5000aea5},
		"KVM_GET_FPU":                {ioGetFPU, 0x81a0ae8c},
		"KVM_SET_FPU":                {ioSetFPU, 0x41a0ae8d},
		"KVM_GET_XCRS":               {ioGetXCRS, 0x8188aea6},
		"KVM_SET_XCRS":               {ioSetXCRS, 0x4188aea7},
		"KVM_GET_VCPU_EVENTS":        {ioGetVCPUEvents, 0x8040ae9f},
		"KVM_SET_VCPU_EVENTS":        {ioSetVCPUEvents, 0x4040aea0},
		"KVM_GET_DEBUGREGS":          {ioGetDebugRegs, 0x8080aea1},
		"KVM_SET_DEBUGREGS":          {ioSetDebugRegs, 0x4080aea2},
		"KVM_GET_IRQCHIP":            {ioGetIRQChip, 0xc208ae62},
		"KVM_SET_IRQCHIP":            {ioSetIRQChip, 0x8208ae63},
		"KVM_GET_PIT2":               {ioGetPIT2, 0x8070ae9f},
		"KVM_SET_PIT2":               {ioSetPIT2, 0x4070aea0},
		"KVM_GET_CLOCK":              {ioGetClock, 0x8030ae7c},
		"KVM_SET_CLOCK":              {ioSetClock, 0x4030ae7b},
		"KVM_GET_TSC_KHZ":            {ioGetTSCKHz, 0xaea3},
		"KVM_SET_TSC_KHZ":            {ioSetTSCKHz, 0xaea2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", name, c.got, c.want)
		}
	}
}

func TestStructSizes(t *testing.T) {
	for name, c := range map[string]struct{ got, want uintptr }{
		"kvm_regs":      {unsafe.Sizeof(Regs{}), 144},
		"kvm_sregs":     {unsafe.Sizeof(Sregs{}), 312},
		"kvm_segment":   {unsafe.Sizeof(Segment{}), 24},
		"kvm_lapic":     {unsafe.Sizeof(LAPIC{}), 1024},
		"kvm_run head":  {unsafe.Sizeof(runHeader{}), 32 + 256},
		"cpuid entry 2": {cpuidEntrySize, 40},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(%s) = %d, want %d", name, c.got, c.want)
		}
	}
}
