# Source edits that keep the guest kernel out of the PVM host emulator's
# gaps (../shared/docs/host-kvm.md). Harmless on hardware KVM.
# 1. arch/x86/kernel/alternative.c: int3_selftest() executes int3 on purpose.
s/^\([[:space:]]*\)int3_selftest();/\1\/* snapvmm: int3_selftest() skipped, PVM cannot emulate int3 *\//
# 2. arch/x86/kernel/fpu/core.c: the AMD FXSAVE-leak workaround runs
#    fnclex; emms; fild, which the emulator cannot run.
s/static_cpu_has_bug(X86_BUG_FXSAVE_LEAK)/0 \/* snapvmm: FXSAVE-leak x87 workaround off *\//
