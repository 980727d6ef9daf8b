// Package kvm holds thin owning types over the Linux KVM API: a System
// (/dev/kvm), a VM and its VCPUs. Each type owns its file descriptor and
// closes it; method names follow the ioctls they issue. The package builds on
// github.com/bobuhiro11/gokvm/kvm for the ioctl encodings and C struct layouts
// and adds what that package lacks or gets wrong for a VMM that must pause its
// vCPUs: a KVM_RUN that reports EINTR instead of hiding it, immediate_exit,
// guest memory mapped outside the Go heap, and fully sized CPUID/MSR buffers.
package kvm
